"""Run folders: summary.json, requests.csv and batches.csv, written deterministically (same seed, same bytes)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

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


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(clean_json(data), indent=2, allow_nan=False) + "\n")


def write_run(out_dir: str | Path, summary: dict, requests: pd.DataFrame, batches: pd.DataFrame) -> Path:
    """Write the three standard files into ``out_dir`` (created if needed)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    requests.to_csv(out / "requests.csv", index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    batches.to_csv(out / "batches.csv", index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    return out


def read_run(run_dir: str | Path) -> tuple[dict, pd.DataFrame, pd.DataFrame]:
    """Load a run folder written by the simulator or the engine (same schema)."""
    d = Path(run_dir)
    missing = [n for n in ("summary.json", "requests.csv", "batches.csv") if not (d / n).exists()]
    if missing:
        raise FileNotFoundError(f"{d} is not a servesim run folder: missing {', '.join(missing)}")
    return (json.loads((d / "summary.json").read_text()), pd.read_csv(d / "requests.csv", dtype={"request_id": str}),
            pd.read_csv(d / "batches.csv"))


def format_summary(summary: dict) -> str:
    """Human-readable table of the headline metrics."""
    cfg = summary["config"]
    req = summary["requests"]
    lines = [
        f"servesim: {cfg['model']} on {cfg['replicas']}x {cfg['gpu']} (TP{cfg['tp']} PP{cfg['pp']}), "
        f"scheduler {cfg['scheduler']}, cost model {summary['cost_model'].get('name')}",
        f"requests: {req['completed']} completed of {req['simulated']} simulated, {req['in_trace']} in trace, "
        f"{req['skipped']} skipped" + (f" {req['skipped_by_reason']}" if req["skipped"] else ""),
        "",
        f"{'latency (s)':<18}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'max':>10}",
    ]
    for name, key in [("TTFT", "ttft"), ("TBT", "tbt"), ("TPOT", "tpot"), ("E2E", "e2e"),
                      ("sched. delay", "scheduling_delay")]:
        st = summary["latency_s"][key]
        cells = "".join(f"{st[k]:>10.4f}" if st[k] is not None else f"{'-':>10}"
                        for k in ("mean", "p50", "p90", "p99", "max"))
        lines.append(f"{name:<18}{cells}")
    th = summary["throughput"]
    kv = summary["kv_cache"]
    pipe = summary["pipeline"]
    ut = summary["utilization"]

    def fmt(v, spec=".2f"):
        return "-" if v is None else format(v, spec)
    lines += [
        "",
        f"throughput: {fmt(th['requests_per_s'], '.3f')} req/s, {fmt(th['output_tokens_per_s'], '.1f')} output tok/s "
        f"over {fmt(th['makespan_s'], '.1f')} s",
        f"KV cache: {kv['blocks_per_replica']} blocks/replica, mean use {kv['mean_utilization']:.1%}, "
        f"max {kv['max_utilization']:.1%}, {kv['preemptions']} preemptions",
        f"batches: {summary['batches']['iterations']} iterations, mean size {summary['batches']['mean_size']:.1f}, "
        f"mean tokens {summary['batches']['mean_tokens']:.1f}",
        f"pipeline: mean bubble fraction {pipe['mean_bubble_fraction']:.1%}, "
        f"median bubble {pipe['median_bubble_s'] * 1e3:.3f} ms",
        f"utilisation: MFU {fmt(ut['mfu'], '.1%')}, memory bandwidth {fmt(ut['memory_bandwidth_utilization'], '.1%')}",
    ]
    return "\n".join(lines)
