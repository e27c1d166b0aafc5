"""Measured against predicted, number by number: engine batches rebuilt and priced, error statistics, request metrics.

``ExecutedBatch`` keeps what the engine ran in one iteration (captured by the replay's
``on_batch`` hook after the batch completed) and rebuilds it exactly as it was scheduled, so
the cost model prices the very batch that was timed. Errors are ``predicted / measured - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from sim.batch import Batch, BatchItem
from sim.cost.interface import CostModel, DelegatingCost
from sim.request import Request

KINDS = ("prefill", "decode", "mixed")
PARTS = ("total", "device", "host")
#: batch size buckets (tokens per iteration): (upper edge, label)
SIZE_BUCKETS: tuple[tuple[float, str], ...] = (
    (1, "1"), (4, "2-4"), (16, "5-16"), (64, "17-64"), (256, "65-256"), (1024, "257-1024"),
    (4096, "1025-4096"), (math.inf, ">4096"))
REQUEST_METRICS = ("ttft", "tbt", "tpot", "e2e", "scheduling_delay")
REQUEST_STATS = ("p50", "p90", "p99")
THROUGHPUT_METRICS = ("requests_per_s", "output_tokens_per_s", "makespan_s")
#: the figures validation leads with: request-level tails, then throughput
TAILS: tuple[tuple[str, str], ...] = (("ttft", "p50"), ("ttft", "p90"), ("ttft", "p99"), ("tbt", "p50"), ("tbt", "p90"),
                                      ("tbt", "p99"), ("e2e", "p50"), ("e2e", "p99"))


def tail_errors(request_error: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{"ttft_p50": {measured, predicted, error}, ..., "throughput": ...}`` from ``request_errors()``."""
    out = {f"{m}_{s}": request_error[m][s] for m, s in TAILS}
    out["throughput"] = request_error["throughput"]["output_tokens_per_s"]
    return out


@dataclass(frozen=True)
class ExecutedBatch:
    """What the engine ran in one iteration: its items as (request id, arrival, prompt, output, new, cached)."""

    batch_id: int
    items: tuple[tuple[str, float, int, int, int, int], ...]
    num_decodes: int           # the first this many items are decodes (as the scheduler built it)
    kv_blocks_used: int
    forward_s: float           # wall time of the forward pass and sampling (host launch included)

    @classmethod
    def capture(cls, batch: Batch, forward_s: float) -> "ExecutedBatch":
        return cls(batch.batch_id,
                   tuple((r.request_id, r.arrival_time, r.prompt_tokens, r.output_tokens, n, c)
                         for r, n, c in batch.items),
                   batch.num_decode_tokens, batch.kv_blocks_used, float(forward_s))

    def composition(self) -> tuple[tuple[str, int, int], ...]:
        """Same form as ``Batch.composition()``: (request id, new, cached) per item."""
        return tuple((rid, n, c) for rid, _a, _p, _o, n, c in self.items)

    def rebuild(self, id_prefix: str = "") -> Batch:
        """The batch as it was when it was scheduled, on fresh request objects in that state.

        A decode item's request had generated ``cached + 1 - prompt`` tokens; a prefill chunk's
        at least those its chunk reaches past the prompt (a recompute re-prefills them).
        ``id_prefix`` renames the requests (to run the batch again beside the originals).
        """
        items = []
        for i, (rid, arrival, prompt, output, new, cached) in enumerate(self.items):
            r = Request(id_prefix + rid, arrival, prompt, output)
            r.num_computed = cached
            r.num_generated = cached + 1 - prompt if i < self.num_decodes else max(0, cached + new - prompt)
            items.append(BatchItem(r, new, cached))
        return Batch(items, self.batch_id, self.kv_blocks_used, num_decodes=self.num_decodes)


def size_bucket(num_tokens: np.ndarray) -> np.ndarray:
    """Label of ``SIZE_BUCKETS`` for each batch's token count."""
    edges = np.array([e for e, _ in SIZE_BUCKETS])
    labels = np.array([lab for _, lab in SIZE_BUCKETS])
    return labels[np.searchsorted(edges, np.asarray(num_tokens), side="left")]


def idle_before(measured: pd.DataFrame) -> dict[int, float]:
    """Seconds the engine sat idle before each batch: the gap since the previous one finished, less the batch's
    host part (single-stage replay: one batch at a time)."""
    if not len(measured):
        return {}
    m = measured.sort_values("start")
    gap = m["start"].to_numpy() - np.concatenate([[m["start"].iloc[0]], m["end"].to_numpy()[:-1]])
    idle = np.maximum(0.0, gap - m["host_s"].to_numpy())
    return dict(zip(m["batch_id"].astype(int).tolist(), idle.tolist()))


def price_batches(executed: Sequence[ExecutedBatch], measured: pd.DataFrame, cost: CostModel) -> pd.DataFrame:
    """One row per engine batch: its shape, measured host/device/total seconds, predicted ones and the errors.

    ``measured`` is the engine's batches.csv frame (host_s, device_s per batch_id). The measured
    iteration is ``host_s + forward_s`` (wall clock; on a GPU ``device_s`` comes from CUDA events
    and ``forward_s`` from the host clock). A batch after an idle gap is priced with the cost
    model's cold-start extra (``wake_time``), as the simulator prices it. Relative error =
    predicted / measured - 1.
    """
    m = measured.set_index("batch_id")
    idle = idle_before(measured)
    sources = hasattr(cost, "breakdown_sources")
    rows = []
    for ex in executed:
        b = ex.rebuild()
        _late, wake_host, wake_device = cost.wake_time(idle.get(ex.batch_id, 0.0))
        device = sum(cost.stage_cost(b, s).time for s in range(cost.num_stages)) + wake_device
        host = cost.host_time(b) + wake_host
        src = ""
        if sources:
            names = set(cost.breakdown_sources(b, 0).values())
            src = "edge" if any("edge" in s for s in names) else "profile"
        mh, md = float(m.at[ex.batch_id, "host_s"]), float(m.at[ex.batch_id, "device_s"])
        rows.append((ex.batch_id, b.kind, b.size, b.num_tokens, b.num_prefill_tokens, b.num_decode_tokens,
                     b.decode_context, idle.get(ex.batch_id, 0.0), mh, md, mh + ex.forward_s, host, device,
                     host + device, src))
    df = pd.DataFrame(rows, columns=["batch_id", "kind", "batch_size", "num_tokens", "num_prefill_tokens",
                                     "num_decode_tokens", "decode_context", "idle_before_s", "measured_host_s", "measured_device_s",
                                     "measured_s", "predicted_host_s", "predicted_device_s", "predicted_s",
                                     "source"])
    df["size_bucket"] = size_bucket(df["num_tokens"].to_numpy()) if len(df) else []
    for part, (p, q) in {"total": ("predicted_s", "measured_s"), "device": ("predicted_device_s", "measured_device_s"),
                         "host": ("predicted_host_s", "measured_host_s")}.items():
        with np.errstate(divide="ignore", invalid="ignore"):
            df[f"error_{part}"] = np.where(df[q] > 0, df[p] / df[q] - 1.0, np.nan) if len(df) else []
    return df


def error_stats(errors: np.ndarray | pd.Series) -> dict[str, float | int | None]:
    """count, mean, median/P90/P99 of the signed relative errors and of their absolute values."""
    a = np.asarray(errors, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"count": 0, **{k: None for k in ("mean", "median", "p90", "p99", "abs_median", "abs_p90", "abs_p99")}}
    p = np.percentile(a, [50, 90, 99])
    q = np.percentile(np.abs(a), [50, 90, 99])
    return {"count": int(a.size), "mean": float(a.mean()), "median": float(p[0]), "p90": float(p[1]),
            "p99": float(p[2]), "abs_median": float(q[0]), "abs_p90": float(q[1]), "abs_p99": float(q[2])}


def batch_errors(df: pd.DataFrame) -> dict[str, Any]:
    """Error statistics of a priced-batch frame: per part (total, device, host), by kind and by size bucket."""
    out: dict[str, Any] = {part: error_stats(df[f"error_{part}"]) if len(df) else error_stats([]) for part in PARTS}
    out["measured_s"] = {"sum": float(df["measured_s"].sum()) if len(df) else 0.0,
                         "median": float(df["measured_s"].median()) if len(df) else None}
    out["predicted_s"] = {"sum": float(df["predicted_s"].sum()) if len(df) else 0.0,
                          "median": float(df["predicted_s"].median()) if len(df) else None}
    out["sum_error"] = (out["predicted_s"]["sum"] / out["measured_s"]["sum"] - 1.0
                        if out["measured_s"]["sum"] > 0 else None)
    out["by_kind"] = {k: {part: error_stats(g[f"error_{part}"]) for part in PARTS}
                      for k, g in ((k, df[df["kind"] == k]) for k in KINDS) if len(g)}
    order = [lab for _, lab in SIZE_BUCKETS]
    out["by_size"] = {lab: {part: error_stats(g[f"error_{part}"]) for part in PARTS}
                      for lab, g in ((lab, df[df["size_bucket"] == lab]) for lab in order) if len(g)}
    if "source" in df and len(df):
        out["edge_fraction"] = float((df["source"] == "edge").mean())
    return out


def _rel(predicted: float | None, measured: float | None) -> float | None:
    if predicted is None or measured is None or not measured:
        return None
    return predicted / measured - 1.0


def request_errors(measured: dict, predicted: dict) -> dict[str, Any]:
    """Latency percentiles and throughput, measured (engine summary) against predicted (simulator summary)."""
    out: dict[str, Any] = {}
    for m in REQUEST_METRICS:
        out[m] = {}
        for s in REQUEST_STATS:
            a = measured["latency_s"][m][s]
            b = predicted["latency_s"][m][s]
            out[m][s] = {"measured": a, "predicted": b, "error": _rel(b, a)}
    out["throughput"] = {}
    for k in THROUGHPUT_METRICS:
        a, b = measured["throughput"][k], predicted["throughput"][k]
        out["throughput"][k] = {"measured": a, "predicted": b, "error": _rel(b, a)}
    return out


def composition_match(engine: Sequence[tuple], simulator: Sequence[tuple]) -> dict[str, Any]:
    """How many engine batches have the same composition as the simulator's batch at the same position."""
    n = sum(1 for a, b in zip(engine, simulator) if a == b)
    first = next((i for i, (a, b) in enumerate(zip(engine, simulator)) if a != b),
                 None if len(engine) == len(simulator) else min(len(engine), len(simulator)))
    return {"engine_batches": len(engine), "simulator_batches": len(simulator), "matching": n,
            "fraction": n / len(engine) if engine else None, "identical": first is None,
            "first_difference": first}


class RecordingCost(DelegatingCost):
    """Wraps a cost model and records the composition of every batch the simulator schedules (by batch id)."""

    def __init__(self, inner: CostModel) -> None:
        super().__init__(inner)
        self.compositions: dict[int, tuple] = {}

    def host_time(self, batch: Batch) -> float:
        self.compositions[batch.batch_id] = batch.composition()  # called once, right after scheduling
        return super().host_time(batch)

    def ordered(self) -> list[tuple]:
        return [self.compositions[k] for k in sorted(self.compositions)]




def _ratio_error(df: pd.DataFrame, num: tuple[str, str], den: tuple[str, str]) -> float | None:
    """(median predicted num / median predicted den) / (same, measured) - 1; num, den = (kind, part column)."""
    def med(kind: str, col: str) -> float:
        return float(df.loc[df["kind"] == kind, col].median()) if (df["kind"] == kind).any() else math.nan
    (nk, nc), (dk, dc) = num, den
    pred = med(nk, f"predicted_{nc}") / med(dk, f"predicted_{dc}")
    meas = med(nk, f"measured_{nc}") / med(dk, f"measured_{dc}")
    err = pred / meas - 1.0
    return float(err) if math.isfinite(err) else None


def shape_errors(df: pd.DataFrame) -> dict[str, float | None]:
    """Errors of ratios that a uniform change of the machine's speed leaves alone: a prefill-only iteration
    against a decode-only one, and, per kind, the host part against the forward pass (medians over batches).
    Unlike absolute errors they can gate on a machine whose speed drifts between calibration and validation."""
    if not len(df):
        return {"prefill/decode": None, "host/device prefill": None, "host/device decode": None}
    return {"prefill/decode": _ratio_error(df, ("prefill", "s"), ("decode", "s")),
            "host/device prefill": _ratio_error(df, ("prefill", "host_s"), ("prefill", "device_s")),
            "host/device decode": _ratio_error(df, ("decode", "host_s"), ("decode", "device_s"))}
