"""Run folders: summary.json, requests.csv and batches.csv, written deterministically (same seed, same bytes).

A folder is complete only with its ``manifest.json``, written last: every file is first written under a
temporary name and renamed into place, and the manifest (file names, bytes and row counts) replaces the
old one only after all three are in place. A run removes the previous manifest as soon as it starts
(:func:`claim_run_folder`), so an interrupted or failed run (SIGINT, a full disk), a re-run into the same
folder included, leaves no manifest, and readers refuse such a folder by name instead of reading truncated
or stale tables. A write error names the file it was writing (:func:`naming`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.outputs.tables import TABLE_FORMATS, read_table, write_table

if TYPE_CHECKING:
    import pandas as pd

FLOAT_FORMAT = "%.9g"


def clean_json(x: Any) -> Any:
    """JSON-safe copy: NaN and infinities become None, numpy scalars plain Python."""
    if isinstance(x, dict):
        return {str(k): clean_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [clean_json(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


RUN_FILES = ("summary.json", "requests.csv", "batches.csv")
MANIFEST = "manifest.json"


def write_json(path: Path, data: dict) -> None:
    """``data`` as JSON at ``path``, through a temporary file renamed into place (never half-written)."""
    _atomic_text(path, json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n")


def _atomic(path: Path, write: Any) -> None:
    """``write(tmp)`` to a temporary name beside ``path``, then rename it into place (removed if it fails)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with naming(path, tmp):
            write(tmp)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def naming(path: str | os.PathLike[str], stand_in: str | os.PathLike[str] | None = None) -> Iterator[None]:
    """Writes to ``path`` inside: an OSError naming no file (a full disk: ENOSPC), or naming ``stand_in`` (its
    temporary file), is raised again naming ``path``, so that the one-line error says which file failed."""
    try:
        yield
    except OSError as e:
        if e.filename is not None and (stand_in is None or os.fspath(e.filename) != os.fspath(stand_in)):
            raise
        raise OSError(e.errno, e.strerror or str(e) or type(e).__name__, os.fspath(path)) from e


def _atomic_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: tmp.write_text(text))


def prepare_out_dir(out_dir: str | Path, flag: str = "--out") -> Path:
    """Create ``out_dir`` (and parents) and prove it writable, before any work; one-line ValueError otherwise."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{flag} {out}: exists and is not a folder")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{flag} {out}: {parent} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"{flag} {out}: cannot write there ({e.strerror or e})") from None
    return out


def claim_run_folder(out_dir: str | Path, flag: str = "--out") -> Path:
    """Prepare ``out_dir`` for a new run (see prepare_out_dir) and drop a previous run's manifest at once.

    From then on the folder is incomplete until this run's manifest lands: a run interrupted or failing
    before that (a re-run into the same folder included) never leaves the previous results looking complete.
    """
    out = prepare_out_dir(out_dir, flag)
    with naming(out / MANIFEST):
        (out / MANIFEST).unlink(missing_ok=True)
    return out


def run_files(fmt: str = "csv") -> tuple[str, str, str]:
    """The three files of a run folder whose tables are in ``fmt`` (csv or parquet)."""
    return ("summary.json", f"requests.{fmt}", f"batches.{fmt}")


def write_run(out_dir: str | Path, summary: dict, requests: Any, batches: Any, fmt: str = "csv") -> Path:
    """Write the three standard files into ``out_dir`` (created if needed), then the manifest that completes it.

    ``requests``, ``batches``: DataFrames or ``sim.table.Table``s. ``fmt``: the tables as CSV (the bytes
    ``DataFrame.to_csv`` writes, by a faster writer) or Parquet.
    """
    if fmt not in TABLE_FORMATS:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {', '.join(TABLE_FORMATS)}")
    out = claim_run_folder(out_dir)  # the folder is incomplete until the new manifest lands
    write_json(out / "summary.json", summary)
    names = run_files(fmt)
    for name, frame in zip(names[1:], (requests, batches)):
        _atomic(out / name, lambda tmp, f=frame: write_table(f, tmp, fmt, FLOAT_FORMAT))
    files = {n: {"bytes": (out / n).stat().st_size} for n in names}
    files[names[1]]["rows"], files[names[2]]["rows"] = len(requests), len(batches)
    manifest = {"format": "servesim-run", "files": files} | ({"tables": fmt} if fmt != "csv" else {})
    write_json(out / MANIFEST, manifest)
    return out


def _manifest_tables(d: Path) -> str:
    """The table format a run folder's manifest records (csv when it records none or cannot be read)."""
    try:
        fmt = json.loads((d / MANIFEST).read_text()).get("tables", "csv")
    except (OSError, ValueError, AttributeError):
        return "csv"
    return fmt if fmt in TABLE_FORMATS else "csv"


def check_run(run_dir: str | Path) -> Path:
    """``run_dir`` if it is a complete run folder (manifest present, every file at its recorded size)."""
    d = Path(run_dir)
    names = run_files(_manifest_tables(d))
    missing = [n for n in names if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(f"{d} is not a servesim run folder: missing {', '.join(missing)}")
    try:
        files = json.loads((d / MANIFEST).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ValueError(f"{d}: incomplete run folder (no valid {MANIFEST}: the run that wrote it was interrupted, "
                         f"failed, or predates manifests); rerun it") from None
    for name in names:
        size = (d / name).stat().st_size
        if name not in files or files[name].get("bytes") != size:
            raise ValueError(f"{d}/{name}: {size} bytes where {MANIFEST} recorded "
                             f"{files.get(name, {}).get('bytes')}: the folder was changed or half-written; rerun it")
    return d


def read_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Load a complete run folder written by the simulator or the engine (same schema)."""
    d = check_run(run_dir)
    _, requests, batches = run_files(_manifest_tables(d))
    return (json.loads((d / "summary.json").read_text()), read_table(d / requests, dtype={"request_id": str}),
            read_table(d / batches))


def _ms(seconds: float | None) -> str:
    """Milliseconds with 3-4 significant digits (console tables; the JSON stays in seconds)."""
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 1 else f"{ms:.3f}"


def _ms_unit(seconds: float | None) -> str:
    """'12.3 ms', or '-' where there is no value."""
    return "-" if seconds is None else f"{_ms(seconds)} ms"


CONTEXT_HINT = ("hint: --max-total-tokens N clips requests to N tokens keeping each prompt:output ratio (N = the "
                "model's context serves them all); --max-model-len sets a long-context variant's context")


def _variant(cfg: dict, summary: dict) -> str:
    """', EP2, fp8 weights, fp8 KV' where the deployment is not the plain bf16 one."""
    cost = summary.get("cost_model", {})
    parts = [f"EP{cfg['ep']}"] if cfg.get("ep", 1) > 1 else []
    if cost.get("weight_dtype") == "fp8":
        parts.append("fp8 weights" + ("" if cost.get("fp8_compute", True) else " (weight-only)"))
    if cfg.get("kv_cache_dtype", "auto") != "auto":
        parts.append(f"{cfg['kv_cache_dtype']} KV cache")
    return "".join(", " + p for p in parts)


def _pool(cfg: dict, cost: dict) -> str:
    """One pool of a disaggregated deployment: '2x a100-80gb (2 replicas x TP1 PP1, vllm)'."""
    replicas, tp, pp = cfg["replicas"], cfg["tp"], cfg["pp"]
    return (f"{replicas * tp * pp}x {cfg['gpu']} ({replicas} replica{'s' if replicas > 1 else ''} x TP{tp} PP{pp}"
            f"{_variant(cfg, {'cost_model': cost})}, {cfg['scheduler']})")


def _disaggregated_header(summary: dict) -> str:
    """The first line of a disaggregated run: both pools, the KV link, the cost model."""
    cfg, cost = summary["config"], summary["cost_model"]
    link = summary["disaggregation"]["link"]
    names = "/".join(dict.fromkeys(str(cost[p].get("name")) for p in ("prefill", "decode")))
    return (f"servesim: {cfg['prefill']['model']}, disaggregated: prefill {_pool(cfg['prefill'], cost['prefill'])} -> "
            f"decode {_pool(cfg['decode'], cost['decode'])}, KV over {link['kind']} "
            f"{link['bytes_per_s_per_gpu'] / 1e9:g} GB/s per GPU{' (overlapped)' if link.get('overlap') else ''}, "
            f"cost model {names}")


def _aggregated_header(summary: dict) -> str:
    """The first line of a run on one pool: model, GPUs, parallelism, scheduler, cost model."""
    cfg = summary["config"]
    replicas, tp, pp = cfg["replicas"], cfg["tp"], cfg["pp"]
    gpus = replicas * tp * pp
    return (f"servesim: {cfg['model']} on {gpus} {cfg['gpu']} "
            f"{'device' if str(cfg['gpu']).startswith('measured:') or cfg['gpu'] == 'cpu' else 'GPU'}"
            f"{'s' if gpus > 1 else ''} ({replicas} replica"
            f"{'s' if replicas > 1 else ''} x TP{tp} x PP{pp}{_variant(cfg, summary)}), scheduler {cfg['scheduler']}"
            f"{' (async scheduling)' if cfg.get('engine_loop') == 'async' else ''}, "
            f"cost model {summary['cost_model'].get('name')}")


def _memory_line(mem: dict) -> list[str]:
    """How one GPU's memory is split (the memory plan in summary.json), when the plan priced the KV capacity."""
    if "budget_bytes" not in mem or "kv_blocks_override" in mem:
        return []
    gib = 2**30
    return [f"memory per GPU: {mem['gpu_memory_bytes'] / gib:.1f} GiB x {mem['gpu_memory_utilization']:g} = "
            f"{mem['budget_bytes'] / gib:.2f} GiB: weights {mem['weight_bytes'] / gib:.2f}, activation reserve "
            f"{mem['activation_reserve_bytes'] / gib:.2f}, KV cache {mem['kv_cache_bytes'] / gib:.2f} "
            f"({mem['num_blocks']:,} blocks of {mem['bytes_per_block'] / 2**20:g} MiB)"]


def _transfer_line(summary: dict) -> str:
    """KV transfer times, link and decode-admission waits, the busiest link's utilisation."""
    d = summary["disaggregation"]
    util = max(d["link_utilization"], default=None)
    return (f"KV transfer: P50 {_ms_unit(d['transfer_s']['p50'])}, P99 {_ms_unit(d['transfer_s']['p99'])} "
            f"({d['transfers']} transfers); link wait P99 {_ms_unit(d['link_wait_s']['p99'])}; decode admission wait "
            f"P99 {_ms_unit(d['decode_admission_wait_s']['p99'])}; link utilisation max "
            f"{'-' if util is None else format(util, '.1%')}")


def format_summary(summary: dict) -> str:
    """Human-readable table of the headline metrics."""
    cfg = summary["config"]
    req = summary["requests"]
    disaggregated = cfg.get("mode") == "disaggregated"
    pp = max(cfg["prefill"]["pp"], cfg["decode"]["pp"]) if disaggregated else cfg["pp"]
    reasons = ", ".join(f"{k} {v}" for k, v in req["skipped_by_reason"].items())
    ran = "sent to the engine" if summary.get("cost_model", {}).get("name") == "measured" else "simulated"
    lines = [
        _disaggregated_header(summary) if disaggregated else _aggregated_header(summary),
        f"requests: {req['completed']} completed of {req['simulated']} {ran}, {req['in_trace']} in trace, "
        f"{req['skipped']} skipped" + (f" ({reasons})" if req["skipped"] else ""),
        *([CONTEXT_HINT] if {"prompt_exceeds_context", "total_exceeds_context"} & set(req["skipped_by_reason"])
          else []),
        "",
        f"{'latency (ms)':<18}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for name, key in [("TTFT", "ttft"), ("TBT", "tbt"), ("TPOT", "tpot"), ("E2E", "e2e"),
                      ("sched. delay", "scheduling_delay")]:
        st = summary["latency_s"][key]
        cells = "".join(f"{_ms(st[k]):>10}" for k in ("mean", "p50", "p90", "p99", "max"))
        lines.append(f"{name:<18}{cells}")
    engine = summary.get("latency_engine_s")
    if engine:  # a frontend model priced the client's view: the engine's own TTFT beside it
        st = engine["ttft"]
        lines.append(f"{'TTFT (engine)':<18}" + "".join(f"{_ms(st[k]):>10}" for k in ("mean", "p50", "p90", "p99", "max")))
        lines.append(f"(as the client sees them, through the {summary['frontend']['name']} frontend model; "
                     "the engine's own in summary.json latency_engine_s and requests.csv engine_*)")
    th = summary["throughput"]
    kv = summary["kv_cache"]
    pipe = summary["pipeline"]
    ut = summary["utilization"]

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)
    lines += [
        "",
        (f"throughput: {fmt(th['requests_per_s'], '.3f')} req/s, {fmt(th['output_tokens_per_s'], '.1f')} output tok/s "
        f"over {fmt(th['makespan_s'], '.1f')} s"),
        *([_transfer_line(summary)] if disaggregated else []),
        (f"KV cache: {kv['blocks_per_replica']:,} blocks/{'decode ' if disaggregated else ''}replica, "
        f"mean use {kv['mean_utilization']:.1%}, "
        f"max {kv['max_utilization']:.1%}, {kv['preemptions']} preemptions"),
        *_memory_line(summary.get("memory") or {}),
        (f"batches: {summary['batches']['iterations']} iterations, mean size {summary['batches']['mean_size']:.1f}, "
        f"mean tokens {summary['batches']['mean_tokens']:.1f}"),
        (f"pipeline: mean bubble fraction {pipe['mean_bubble_fraction']:.1%}, "
         f"median bubble {pipe['median_bubble_s'] * 1e3:.3f} ms" if pp > 1 else
         f"idle between iterations while busy (host overhead; no pipeline with PP1): "
         f"{pipe['mean_bubble_fraction']:.1%}, median gap {pipe['median_bubble_s'] * 1e3:.3f} ms"),
        f"utilisation: MFU {fmt(ut['mfu'], '.1%')}, memory bandwidth {fmt(ut['memory_bandwidth_utilization'], '.1%')}",
    ]
    pc = summary.get("prefix_cache")
    if pc:
        lines.append(f"prefix cache: {fmt(pc['hit_rate_tokens'], '.1%')} of prompt tokens hit ({fmt(pc['hit_rate_blocks'], '.1%')}"
                     f" of blocks), {pc['evictions']:,} evictions, {pc['cached_free_blocks_mean']:,.0f} cached free "
                     f"blocks on average")
    return "\n".join(lines)
