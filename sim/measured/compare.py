"""Metric by metric, measured against simulated, on the client's own definitions.

Each client metric names a formula over per-request figures (time to first token, end-to-end latency, output
tokens, the gaps between tokens); the same formula runs on the client's per-request records (measured) and on
servesim's simulated requests (predicted), so both sides share the client's definition and percentile method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.measured.run import MeasuredRun

STATS = ("mean", "p50", "p90", "p99")

#: formula -> what it computes, for the report (n: output tokens; gaps: between consecutive streamed tokens/chunks)
FORMULAS = {
    "ttft": "first token - request start",
    "e2e": "last token - request start",
    "tpot": "(e2e - TTFT) / (n - 1), requests with n > 1",
    "mean_gap": "(last token - first token) / (n - 1) per request, requests with n > 1",
    "tpot_incl": "(last token - request sent) / n per request (first token included)",
    "ntpot": "e2e / n per request",
    "gaps": "every gap between consecutive tokens (chunks) of every request, pooled",
    "queue": "first scheduled - queued (engine)",
}


@dataclass
class Side:
    """Per-request figures of one side (successful requests only): seconds and token counts."""

    ttft: np.ndarray
    e2e: np.ndarray
    n: np.ndarray
    gaps: list[np.ndarray | None]      # per request, None where not recorded
    queue: np.ndarray | None = None


def side_of_run(run: MeasuredRun) -> Side:
    """The measured side from the client's per-request records (NaN where a figure was not recorded)."""
    ok = run.succeeded
    nan = float("nan")
    return Side(ttft=np.array([nan if r.ttft is None else r.ttft for r in ok], float),
                e2e=np.array([nan if r.latency is None else r.latency for r in ok], float),
                n=np.array([r.output_tokens for r in ok], float),
                gaps=[None if r.gaps is None else np.asarray(r.gaps, float) for r in ok],
                queue=(np.array([nan if r.queue is None else r.queue for r in ok], float)
                       if any(r.queue is not None for r in ok) else None))


def values(side: Side, formula: str) -> np.ndarray:
    """The values a formula gives on one side (NaN dropped)."""
    n = side.n
    with np.errstate(divide="ignore", invalid="ignore"):
        if formula == "ttft":
            v = side.ttft
        elif formula == "e2e":
            v = side.e2e
        elif formula == "tpot":
            v = np.where(n > 1, (side.e2e - side.ttft) / (n - 1), np.nan)
        elif formula in ("mean_gap", "tpot_incl"):
            span = np.array([np.nan if g is None else g.sum() for g in side.gaps], float)
            span = np.where(np.isnan(span), side.e2e - side.ttft, span)  # no gaps recorded: first to last token
            v = (np.where(n > 1, span / (n - 1), np.nan) if formula == "mean_gap"
                 else np.where(n > 0, (side.ttft + span) / n, np.nan))
        elif formula == "ntpot":
            v = np.where(n > 0, side.e2e / n, np.nan)
        elif formula == "gaps":
            kept = [g for g in side.gaps if g is not None and g.size]
            v = np.concatenate(kept) if kept else np.array([])
        elif formula == "queue":
            v = side.queue if side.queue is not None else np.array([])
        else:
            raise ValueError(f"unknown formula {formula!r}")
    v = np.asarray(v, float)
    return v[np.isfinite(v)]


def describe(v: np.ndarray, method: str = "linear") -> dict[str, float] | None:
    """Mean and P50/P90/P99, or None for no values. ``linear``: numpy's interpolation (vLLM, inference-perf);
    ``inverse_cdf``: the smallest value whose cumulative share reaches p (GuideLLM's Percentiles.from_pdf)."""
    if not v.size:
        return None
    q = np.array([0.50, 0.90, 0.99])
    if method == "inverse_cdf":
        s = np.sort(v)
        p = s[np.minimum(np.searchsorted(np.arange(1, s.size + 1) / s.size, q, side="left"), s.size - 1)]
    else:
        p = np.percentile(v, q * 100)
    return {"mean": float(v.mean()), "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def error_pct(pred: float | None, meas: float | None) -> float | None:
    if pred is None or meas is None or not np.isfinite(pred) or not np.isfinite(meas) or meas == 0:
        return None
    return (pred - meas) / meas * 100.0


def compare(run: MeasuredRun, predicted: Side) -> list[dict[str, Any]]:
    """One row per (client metric, statistic): the client's figure (its summary where it reports that statistic,
    else computed from its per-request records), servesim's, and the error in percent."""
    measured = side_of_run(run)
    rows = []
    for key, formula, label in run.definitions.metrics:
        method = run.definitions.percentile_method
        mine = describe(values(measured, formula), method) or {}
        theirs = run.summary.get(key, {})
        sim = describe(values(predicted, formula), method) or {}
        for st in STATS:
            m = theirs.get(st, mine.get(st))
            src = "client summary" if st in theirs else "client per-request" if st in mine else None
            p = sim.get(st)
            rows.append({"metric": key, "label": label, "formula": formula, "stat": st, "measured": m,
                         "measured_from": src, "simulated": p, "error_pct": error_pct(p, m)})
    return rows
