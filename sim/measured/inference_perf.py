"""Reader of an inference-perf report folder (kubernetes-sigs/inference-perf, inference_perf/reportgen/base.py).

Files: ``stage_N_lifecycle_metrics.json`` (one per load stage), ``summary_lifecycle_metrics.json`` (all stages),
``per_request_lifecycle_metrics.json`` (when per_request reporting is on: a list of records with start_time,
end_time, info (input tokens, output tokens, output_token_times) and error) and ``config.yaml`` (load type and
stages, data generator, API). A summary holds successes.latency.{time_to_first_token, inter_token_latency,
time_per_output_token, normalized_time_per_output_token, request_latency} in seconds ({mean, median, pNN}),
successes.count, failures.count and load_summary (requested_rate, achieved_rate, send_duration). Its definitions:
TTFT = first token time - start; ITL = every gap between token times, pooled (a chunk of k tokens gives k - 1
zero gaps, so ITL is per token); TPOT = (last token - first token) / (n - 1); NTPOT = latency / n; failed requests
are left out of latency; percentiles by numpy.percentile.
"""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path
from typing import Any

from sim.inputs import brief_name
from sim.measured.run import (
    Definitions,
    Fields,
    MeasuredError,
    MeasuredRequest,
    MeasuredRun,
    check_numbers,
    read_json,
    read_json_value,
    stat_block,
)

DEFINITIONS = Definitions(
    clock="client",
    metrics=(("time_to_first_token", "ttft", "TTFT"), ("inter_token_latency", "gaps", "ITL (per token)"),
             ("time_per_output_token", "mean_gap", "TPOT"), ("normalized_time_per_output_token", "ntpot", "NTPOT"),
             ("request_latency", "e2e", "request latency")),
    note="Tokens of one streamed chunk share its arrival time (zero gaps inside a chunk)")

STAGE_FILE = re.compile(r"stage_(\d+)_lifecycle_metrics\.json$")
KEYS = {"mean": "mean", "p50": "median", "p90": "p90", "p99": "p99"}


def looks_like(path: Path) -> bool:
    return path.is_dir() and (any(path.glob("stage_*_lifecycle_metrics.json"))
                              or (path / "summary_lifecycle_metrics.json").is_file())


def _config(folder: Path) -> dict[str, Any]:
    """config.yaml parsed (bounded), or {} when absent."""
    path = folder / "config.yaml"
    if not path.is_file():
        return {}
    from sim.serving.deployment import DeploymentError, read_file
    try:
        data = read_file(path)
    except DeploymentError as e:
        raise MeasuredError(str(e).replace("deployment file", "config file")) from None
    if not isinstance(data, dict):
        raise MeasuredError(f"{brief_name(path)}: expected a mapping (inference-perf's config)")
    return data


def _stage_config(folder: Path, i: int, stage: Any) -> dict[str, Any]:
    """config.yaml's ``load.stages[i]`` with its numbers checked (a rate or duration that is not a finite number >= 0
    is refused naming the field: the workload is reconstructed from them)."""
    if not isinstance(stage, dict):
        return {}
    f = Fields(str(folder / "config.yaml"), stage, f"load.stages[{i}]")
    return {**stage, **{k: f.number(k) for k in ("rate", "duration", "concurrency_level") if f.has(k)}}


def _mean(f: Fields | None, *keys: str) -> float | None:
    """The mean of the first of ``keys`` present in ``f`` (a {mean: ...} object)."""
    for k in keys:
        sub = f.sub(k, required=False) if f is not None else None
        if sub is not None and sub.has("mean"):
            return sub.number("mean")
    return None


def _stage(folder: Path, path: Path, stage_cfg: dict[str, Any]) -> MeasuredRun:
    f = read_json(str(path), "inference-perf lifecycle metrics")
    ok = f.sub("successes")
    lat = ok.sub("latency", required=False)
    summary = {}
    for key, *_ in DEFINITIONS.metrics:
        block = stat_block(lat.sub(key, required=False) if lat else None, KEYS, 1.0)
        if block:
            summary[key] = block
    load = f.sub("load_summary", required=False)
    fails = f.sub("failures", required=False)
    rate = (load.number("requested_rate", required=False) if load else None) or stage_cfg.get("rate")
    return MeasuredRun(
        source=str(folder), format="inference-perf", client="inference-perf", client_version=None,
        definitions=DEFINITIONS, requests=[], summary=summary,
        load={"request_rate": rate, "duration_s": stage_cfg.get("duration"),
              "concurrency": (load.get("concurrency") if load else None) or stage_cfg.get("concurrency_level"),
              "completed": ok.integer("count", required=False),
              "failed": fails.integer("count", required=False) if fails else None,
              "count": load.integer("count", required=False) if load else None,
              "mean_input_tokens": _mean(ok, "prompt_len", "prompt_tokens"),
              "mean_output_tokens": _mean(ok, "output_len", "output_tokens")},
        label=path.stem.replace("_lifecycle_metrics", ""), duration_s=f.number("benchmark_time_seconds", required=False),
        exact=False)


def _first(rec: Fields, paths: list[tuple[str, ...]], what: str, integer: bool) -> Any:
    """The value at the first of ``paths`` (nested keys) that the record holds."""
    for keys in paths:
        node = rec
        for k in keys[:-1]:
            node = node.sub(k, required=False)
            if node is None:
                break
        if node is not None and node.has(keys[-1]):
            return node.integer(keys[-1]) if integer else node.number(keys[-1], low=-1e18)
    return None


def _per_request(folder: Path) -> list[tuple[float, MeasuredRequest]] | None:
    """(start time, request) of per_request_lifecycle_metrics.json, or None when absent."""
    path = folder / "per_request_lifecycle_metrics.json"
    if not path.is_file():
        return None
    data = read_json_value(str(path), "inference-perf per-request metrics")
    if not isinstance(data, list):
        raise MeasuredError(f"{brief_name(path)}: expected a list of request records")
    out = []
    for i, raw in enumerate(data):
        rec = Fields(str(path), raw, f"[{i}]")
        if not isinstance(raw, dict):
            raise rec.fail(None, "expected a request record (an object)")
        start, end = rec.number("start_time", low=-1e18), rec.number("end_time", low=-1e18)
        n_in = _first(rec, [("computed_metrics", "input_tokens"), ("info", "request_metrics", "text", "input_tokens"),
                            ("info", "input_tokens")], "input tokens", True)
        n_out = _first(rec, [("computed_metrics", "output_tokens"), ("info", "response_metrics", "output_tokens"),
                             ("info", "output_tokens")], "output tokens", True)
        if n_in is None:
            raise rec.fail("info", "no input token count (computed_metrics.input_tokens or info's)")
        info = rec.sub("info", required=False)
        resp = info.sub("response_metrics", required=False) if info else None
        times_at = resp if resp is not None and resp.has("output_token_times") else info
        times = (check_numbers(times_at.get("output_token_times"), times_at, "output_token_times")
                 if times_at is not None and times_at.has("output_token_times") else ())
        failed = rec.get("error") is not None
        ttft = (times[0] - start) if len(times) > 1 else None
        gaps = tuple(b - a for a, b in pairwise(times)) if len(times) > 1 else None
        out.append((start, MeasuredRequest(
            input_tokens=n_in, output_tokens=n_out or len(times), ttft=None if failed else ttft,
            latency=None if failed else end - start, gaps=None if failed else gaps, success=not failed,
            error=str(rec.get("error"))[:200] if failed else None)))
    out.sort(key=lambda x: x[0])
    return out


def read_inference_perf(path: str | Path) -> list[MeasuredRun]:
    """One MeasuredRun per load stage (the summary file alone when there are no stage files)."""
    folder = Path(path)
    cfg = _config(folder)
    load_cfg = cfg.get("load") if isinstance(cfg.get("load"), dict) else {}
    stages = load_cfg.get("stages") if isinstance(load_cfg.get("stages"), list) else []
    stages_cfg = [_stage_config(folder, i, s) for i, s in enumerate(stages)]
    files = sorted(((int(m[1]), p) for p in folder.iterdir() if (m := STAGE_FILE.search(p.name))), key=lambda x: x[0])
    if not files:
        files = [(0, folder / "summary_lifecycle_metrics.json")]
    runs = [_stage(folder, p, stages_cfg[k] if k < len(stages_cfg) else {}) for k, p in files]
    data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    api = cfg.get("api") if isinstance(cfg.get("api"), dict) else {}
    per_request = _per_request(folder)
    counts = [r.load.get("count") or (r.load.get("completed") or 0) + (r.load.get("failed") or 0) for r in runs]
    split = per_request is not None and sum(counts) == len(per_request)
    at = 0
    for run, n in zip(runs, counts):
        run.load.update({"arrival": load_cfg.get("type", "constant"), "dataset": data.get("type"),
                         "api": api.get("type"), "streaming": api.get("streaming")})
        if split:  # stages run one after another: the records, by start time, split by each stage's count
            chunk = per_request[at:at + n]
            at += n
            t0 = chunk[0][0] if chunk else 0.0
            for start, req in chunk:
                req.send_time = start - t0
            run.requests, run.exact = [r for _, r in chunk], True
        else:
            run.notes.append("no per-request records for this stage" + (
                " (per_request_lifecycle_metrics.json's count differs from the stages')" if per_request else "")
                + ": the workload is reconstructed from config.yaml's load stage and the mean lengths")
    return runs
