"""Turn the simulator's (or engine's) logs into the metrics DESIGN.md defines: per request, per batch, summary.

TTFT = first token time - arrival; TBT = every gap between consecutive output
tokens (P99 over all gaps); TPOT = (e2e - TTFT) / (output tokens - 1);
scheduling delay = first scheduled - arrival. Bubble time of a stage = the
time it sits idle while its replica has a micro-batch in flight (fill and
drain included).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np

from sim.gap_log import GapLog
from sim.request import Request
from sim.table import Table, column

if TYPE_CHECKING:
    import pandas as pd

PERCENTILES = (50, 90, 99)


def describe(values: Iterable[float] | np.ndarray) -> dict[str, float | int | None]:
    """count, mean, P50, P90, P99 and max of ``values`` (None when empty)."""
    a = np.asarray(values, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    p = np.percentile(a, PERCENTILES)
    return {"count": int(a.size), "mean": float(a.mean()), "p50": float(p[0]), "p90": float(p[1]),
            "p99": float(p[2]), "max": float(a.max())}


CDF_PERCENTILES = np.round(np.concatenate([np.arange(0, 99, 1.0), np.arange(99, 100, 0.1), [100.0]]), 1)


def gap_quantile_table(gaps: GapLog) -> dict[str, list[float]]:
    """``quantile_table`` of a GapLog (exact, or within its relative error)."""
    if gaps.count == 0:
        return {"percentile": [], "value": []}
    return {"percentile": CDF_PERCENTILES.tolist(), "value": gaps.percentiles(CDF_PERCENTILES).tolist()}


def _first_token(r: Request) -> float:
    if r.first_token_time is not None:
        return r.first_token_time
    return r.token_times[0] if r.token_times else math.nan


def _generated(r: Request) -> int:
    return len(r.token_times) if r.token_times is not None else r.num_generated


def _tbt_max(r: Request) -> float:
    if r.tbt_max is not None:
        return r.tbt_max
    tt = r.token_times
    return float(np.diff(tt).max()) if tt is not None and len(tt) > 1 else math.nan


def gap_log_of(requests: Iterable[Request]) -> GapLog:
    """A GapLog of the requests' kept token times (for callers that drove a scheduler themselves)."""
    log = GapLog()
    for r in requests:
        if r.token_times is not None and len(r.token_times) > 1:
            log.add(np.diff(np.asarray(r.token_times, dtype=float)))
    return log


def requests_frame(requests: list[Request]) -> pd.DataFrame:
    """``requests_table`` as a DataFrame."""
    return requests_table(requests).to_pandas()


def requests_table(requests: list[Request]) -> Table:
    """One row per simulated request, in trace order (from per-request figures: memory per request, not token)."""
    reqs = sorted(requests, key=lambda r: r.index)
    nan = np.nan
    first = np.array([_first_token(r) for r in reqs], dtype=float)
    done = np.array([nan if r.completion_time is None else r.completion_time for r in reqs], dtype=float)
    sched = np.array([nan if r.first_scheduled_time is None else r.first_scheduled_time for r in reqs], dtype=float)
    arrival = np.array([r.arrival_time for r in reqs], dtype=float)
    generated = np.array([_generated(r) for r in reqs], dtype=np.int64)
    ttft = first - arrival
    e2e = done - arrival
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(generated > 1, (e2e - ttft) / (generated - 1), nan)
    return Table({
        "request_id": [r.request_id for r in reqs], "replica": [r.replica for r in reqs], "arrival_time": arrival,
        "prompt_tokens": [r.prompt_tokens for r in reqs], "output_tokens": [r.output_tokens for r in reqs],
        "generated_tokens": generated, "first_scheduled_time": sched, "first_token_time": first,
        "completion_time": done, "scheduling_delay": sched - arrival, "ttft": ttft, "e2e": e2e, "tpot": tpot,
        "tbt_max": np.array([_tbt_max(r) for r in reqs], dtype=float),
        "num_preemptions": [r.num_preemptions for r in reqs]})


def _merge_intervals(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of intervals [starts, ends) as sorted disjoint (starts, ends)."""
    order = np.argsort(starts, kind="stable")
    s, e = starts[order], ends[order]
    run_end = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > run_end[:-1]
    idx = np.flatnonzero(new)
    last = np.append(idx[1:] - 1, s.size - 1)
    return s[idx], run_end[last]


def stage_bubbles(batches: Any, microbatches: Any) -> Table:
    """Busy and bubble time per (replica, stage): idle gaps while the replica has work in flight (from tables or
    DataFrames)."""
    rows = []
    # the columns as arrays, a replica's rows picked by index: grouping the frames copied them (a million-request
    # run's tables are gigabytes; measured, issue 34)
    m_rep, sched, done = (column(microbatches, c) for c in ("replica", "scheduled", "completed"))
    b_rep, b_stage, b_start, b_end = (column(batches, c) for c in ("replica", "stage", "start", "end"))
    for replica in np.unique(m_rep):
        mine = m_rep == replica
        a_start, a_end = _merge_intervals(sched[mine].astype(float, copy=False),
                                          done[mine].astype(float, copy=False))
        active = float((a_end - a_start).sum())
        rb = np.flatnonzero(b_rep == replica)
        stages = b_stage[rb]
        for stage in np.unique(stages):
            sb = rb[stages == stage]
            st = b_start[sb].astype(float, copy=False)
            en = b_end[sb].astype(float, copy=False)
            order = np.argsort(st, kind="stable")
            st, en = st[order], en[order]
            iv = np.searchsorted(a_start, st, side="right") - 1
            same = iv[1:] == iv[:-1]
            gaps = [(st[1:] - en[:-1])[same]]
            first = np.ones(st.size, dtype=bool)
            first[1:] = ~same
            lastm = np.ones(st.size, dtype=bool)
            lastm[:-1] = ~same
            gaps.append(st[first] - a_start[iv[first]])
            gaps.append(a_end[iv[lastm]] - en[lastm])
            g = np.concatenate(gaps)
            g = g[g > 1e-12]
            busy = float((en - st).sum())
            rows.append((int(replica), int(stage), busy, max(active - busy, 0.0),
                         (active - busy) / active if active > 0 else 0.0,
                         float(np.median(g)) if g.size else 0.0, int(g.size)))
    names = ("replica", "stage", "busy_s", "bubble_s", "bubble_fraction", "median_bubble_s", "num_bubbles")
    return Table(dict(zip(names, (np.array(c) for c in zip(*rows)))) if rows else {n: [] for n in names})


def _records(table: Any) -> list[dict[str, Any]]:
    """A table's rows as dicts of Python numbers (``DataFrame.to_dict(orient="records")``)."""
    names = list(table.columns)
    return [dict(zip(names, row)) for row in zip(*(column(table, n).tolist() for n in names))]


def summarize(requests: list[Request], skipped: list, *, trace_len: int, batches: Any,
              stages: Any, num_blocks: int, block_size: int, num_preemptions: int, num_gpus: int,
              peak_flops: float, mem_bandwidth: float, source: str, config: dict, cost: dict,
              versions: dict, gpus_per_stage: int = 1, memory: dict | None = None,
              gaps: GapLog | None = None) -> dict[str, Any]:
    """The summary.json dictionary (every metric, the config, versions); shared by simulator and engine.

    ``batches`` (a ``Table`` or a DataFrame, as ``stages``) has the columns of ``sim.serving.recorder.STAGE_FIELDS``,
    whose flops and bytes are one GPU's work (each stage runs on ``gpus_per_stage`` = TP GPUs); ``skipped`` holds
    ``SkippedRequest``s.
    ``gaps``: the completed requests' token gaps (the schedulers' merged ``gap_log``; else from kept times).
    """
    done = [r for r in requests if r.completion_time is not None]
    if gaps is None:
        gaps = gap_log_of(done)
    ttft = [_first_token(r) - r.arrival_time for r in done]
    e2e = [r.completion_time - r.arrival_time for r in done]
    tpot = [(r.completion_time - _first_token(r)) / (_generated(r) - 1) for r in done if _generated(r) > 1]
    delay = [r.first_scheduled_time - r.arrival_time for r in done]
    out_tokens = sum(_generated(r) for r in done)
    in_tokens = sum(r.prompt_tokens for r in done)
    start = min((r.arrival_time for r in requests), default=0.0)
    end = max((r.completion_time for r in done), default=start)
    makespan = end - start
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.code] = reasons.get(s.code, 0) + 1
    first_stage = batches[batches["stage"] == 0] if len(batches) else batches
    kinds = {"prefill": 0, "decode": 0, "mixed": 0}
    if len(first_stage):
        pre = column(first_stage, "num_prefill_tokens") > 0
        dec = column(first_stage, "num_decode_tokens") > 0
        kinds = {"prefill": int((pre & ~dec).sum()), "decode": int((dec & ~pre).sum()), "mixed": int((pre & dec).sum())}
    flops = float(column(batches, "flops").sum()) * gpus_per_stage if len(batches) else 0.0
    nbytes = float(column(batches, "bytes").sum()) * gpus_per_stage if len(batches) else 0.0
    kv_used = column(first_stage, "kv_blocks_used") if len(first_stage) else None
    bubbles = column(stages, "bubble_fraction") if len(stages) else None
    denom = makespan * num_gpus
    return {
        "source": source,
        "config": config,
        "cost_model": cost,
        "requests": {
            "in_trace": trace_len, "simulated": len(requests), "completed": len(done), "skipped": len(skipped),
            "skipped_by_reason": reasons,
            "skipped_examples": [s.where(source) for s in skipped[:20]],
        },
        "latency_s": {
            "ttft": describe(ttft), "tbt": gaps.describe(PERCENTILES), "tbt_cdf": gap_quantile_table(gaps),
            "tpot": describe(tpot), "e2e": describe(e2e),
            "scheduling_delay": describe(delay),
        },
        "throughput": {
            "makespan_s": makespan,
            "requests_per_s": len(done) / makespan if makespan > 0 else None,
            "output_tokens_per_s": out_tokens / makespan if makespan > 0 else None,
            "total_tokens_per_s": (out_tokens + in_tokens) / makespan if makespan > 0 else None,
            "input_tokens": in_tokens, "output_tokens": out_tokens,
        },
        "memory": memory or {},
        "kv_cache": {
            "blocks_per_replica": num_blocks, "block_size": block_size,
            "mean_utilization": float(kv_used.mean() / num_blocks) if kv_used is not None else 0.0,
            "max_utilization": float(kv_used.max() / num_blocks) if kv_used is not None else 0.0,
            "preemptions": num_preemptions,
            "preempted_requests": sum(1 for r in requests if r.num_preemptions),
        },
        "batches": {
            "iterations": len(first_stage), **{f"{k}_only" if k != "mixed" else k: v for k, v in kinds.items()},
            "mean_size": float(column(first_stage, "batch_size").mean()) if len(first_stage) else 0.0,
            "mean_tokens": float((column(first_stage, "num_prefill_tokens")
                                  + column(first_stage, "num_decode_tokens")).mean()) if len(first_stage) else 0.0,
        },
        "pipeline": {
            "stages": _records(stages) if len(stages) else [],
            "mean_bubble_fraction": float(bubbles.mean()) if bubbles is not None else 0.0,
            "median_bubble_s": float(np.median(column(stages, "median_bubble_s"))) if bubbles is not None else 0.0,
        },
        "utilization": {
            "num_gpus": num_gpus,
            "mfu": flops / (denom * peak_flops) if denom > 0 else None,
            "memory_bandwidth_utilization": nbytes / (denom * mem_bandwidth) if denom > 0 else None,
        },
        "versions": versions,
    }
