"""Reader of AIPerf's exports (ai-dynamo/aiperf, docs/tutorials/working-with-profile-exports.md): an artifacts folder
with ``profile_export.jsonl`` (one record per request: metadata.request_start_ns and benchmark_phase; metrics
{name: {value, unit}} such as input_sequence_length, output_sequence_length, time_to_first_token,
request_latency, inter_chunk_latency (a list); error, null when it succeeded) and ``profile_export_aiperf.json``
(per metric {unit, avg, p50, p90, p99, ...}, and input_config: endpoint, loadgen, input). AIPerf's definitions:
TTFT = first response - request start; ITL = (request latency - TTFT) / (output tokens - 1), per request;
request latency = last response - request start; failed requests carry no metrics and are left out.
"""

from __future__ import annotations

from pathlib import Path

from sim.inputs import brief_name
from sim.measured.run import (
    Definitions,
    Fields,
    MeasuredError,
    MeasuredRequest,
    MeasuredRun,
    check_numbers,
    read_json,
    read_jsonl,
)

DEFINITIONS = Definitions(
    clock="client",
    metrics=(("time_to_first_token", "ttft", "TTFT"), ("inter_token_latency", "tpot", "ITL (per request)"),
             ("request_latency", "e2e", "request latency")),
    percentile="numpy linear interpolation (assumed: AIPerf's method was not checked in its code)",
    note="AIPerf's ITL is vLLM's TPOT; its inter_chunk_latency (per chunk) is kept per request")

RECORDS, SUMMARY = "profile_export.jsonl", "profile_export_aiperf.json"
UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "sec": 1.0}


def looks_like(path: Path) -> bool:
    return (path.is_dir() and ((path / RECORDS).is_file() or (path / SUMMARY).is_file())) or \
        path.name in (RECORDS, SUMMARY)


def _value(metrics: Fields, key: str, *, integer: bool = False) -> float | tuple[float, ...] | None:
    """A {value, unit} metric in seconds (tokens for integer ones), or None when absent."""
    m = metrics.sub(key, required=False)
    if m is None:
        return None
    if integer:
        return m.integer("value")
    unit = m.text("unit", "ms")
    if unit not in UNITS:
        raise m.fail("unit", f"unknown time unit {unit!r} (expected one of {', '.join(UNITS)})")
    v = m.get("value")
    if isinstance(v, list):
        return check_numbers(v, m, "value", UNITS[unit])
    return m.number("value", scale=UNITS[unit])


def _records(path: Path) -> list[MeasuredRequest]:
    out: list[tuple[int, MeasuredRequest]] = []
    for rec in read_jsonl(str(path), "AIPerf profile_export.jsonl"):
        meta = rec.sub("metadata")
        if meta.text("benchmark_phase", "profiling") != "profiling":
            continue  # warm-up requests are not part of the profile
        start = meta.integer("request_start_ns")
        err = rec.get("error")
        metrics = rec.sub("metrics", required=False) or Fields(rec.path, {}, "metrics", rec.line)
        n_in = _value(metrics, "input_sequence_length", integer=True) or _value(metrics, "error_isl", integer=True)
        if n_in is None:
            raise metrics.fail("input_sequence_length", "missing (the request's prompt length)")
        n_out = (_value(metrics, "output_sequence_length", integer=True)
                 or _value(metrics, "output_token_count", integer=True) or 0)
        ok = err is None
        gaps = _value(metrics, "inter_chunk_latency") if ok else None
        out.append((start, MeasuredRequest(
            input_tokens=int(n_in), output_tokens=int(n_out), ttft=_value(metrics, "time_to_first_token") if ok else None,
            latency=_value(metrics, "request_latency") if ok else None, gaps=gaps if isinstance(gaps, tuple) else None,
            success=ok, error=str(err)[:200] if err is not None else None)))
    if not out:
        raise MeasuredError(f"{brief_name(path)}: no profiling records")
    t0 = min(s for s, _ in out)
    for s, r in out:
        r.send_time = (s - t0) * 1e-9
    return [r for _, r in sorted(out, key=lambda x: x[0])]


def read_aiperf(path: str | Path) -> list[MeasuredRun]:
    """The run in an AIPerf artifacts folder (or one of its two export files)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    records = folder / RECORDS if (folder / RECORDS).is_file() else None
    summary_path = folder / SUMMARY if (folder / SUMMARY).is_file() else None
    if records is None and summary_path is None:
        raise MeasuredError(f"{brief_name(folder)}: neither {RECORDS} nor {SUMMARY}")
    summary, load, version = {}, {}, None
    if summary_path is not None:
        f = read_json(str(summary_path), "AIPerf summary")
        for key, *_ in DEFINITIONS.metrics:
            m = f.sub(key, required=False)
            if m is None:
                continue
            unit = m.text("unit", "ms")
            scale = UNITS.get(unit)
            if scale is None:
                raise m.fail("unit", f"unknown time unit {unit!r}")
            summary[key] = {ours: v for ours, theirs in (("mean", "avg"), ("p50", "p50"), ("p90", "p90"), ("p99", "p99"))
                            if (v := m.number(theirs, required=False, scale=scale)) is not None}
        cfg = f.sub("input_config", required=False)
        gen = cfg.sub("loadgen", required=False) if cfg else None
        inp = cfg.sub("input", required=False) if cfg else None
        if gen is not None:
            load = {"request_rate": gen.number("request_rate", required=False), "concurrency": gen.get("concurrency"),
                    "arrival": gen.text("request_rate_mode"), "num_prompts": gen.get("request_count")}
        if inp is not None:
            load["seed"] = inp.get("random_seed")
        version = f.text("aiperf_version")
        for ours, theirs in (("mean_input_tokens", "input_sequence_length"),
                             ("mean_output_tokens", "output_sequence_length")):
            m = f.sub(theirs, required=False)
            if m is not None and m.has("avg"):
                load[ours] = m.number("avg")
    reqs = _records(records) if records is not None else []
    ok = [r for r in reqs if r.success]
    if ok:
        load.update(mean_input_tokens=sum(r.input_tokens for r in ok) / len(ok),
                    mean_output_tokens=sum(r.output_tokens for r in ok) / len(ok))
    run = MeasuredRun(source=str(folder), format="aiperf", client="AIPerf", client_version=version,
                      definitions=DEFINITIONS, requests=reqs, summary=summary, load=load, exact=bool(reqs))
    if not reqs:
        run.notes.append(f"no {RECORDS}: the workload is reconstructed from input_config")
    return [run]
