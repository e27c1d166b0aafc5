"""Reshape an imported trace: rescale its rate, cut a window, sample, swap or clip lengths, jitter coarse timestamps.

Each transform takes and returns a list of ``TraceRequest`` (sorted by arrival),
never mutates its input and keeps request ids, so a converted trace still
points back to the source rows. ``apply_transforms`` runs the ones a
``TransformSpec`` asks for in a fixed order: jitter, window, first N, sample,
rate, lengths, clip (fix the raw timestamps first; select; then reshape what is
left, so that a target rate is the rate of the output).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from sim.request import TraceRequest
from sim.workload.generator import clip_total  # a transform; the generator applies it too
from sim.workload.reuse import fit_reuse
from sim.workload.trace import MAX_ARRIVAL_SPAN_S


def _arrivals(requests: Sequence[TraceRequest]) -> np.ndarray:
    return np.fromiter((r.arrival_time for r in requests), dtype=float, count=len(requests))


def _with(r: TraceRequest, **changes) -> TraceRequest:
    """A copy of ``r`` with fields changed (its extra dict is shared: transforms never modify it)."""
    return dataclasses.replace(r, **changes)


def mean_rate(requests: Sequence[TraceRequest]) -> float:
    """Mean arrival rate (req/s) as (N - 1) / (last - first arrival); nan for fewer than 2 requests or no span."""
    if len(requests) < 2:
        return math.nan
    span = requests[-1].arrival_time - requests[0].arrival_time
    return (len(requests) - 1) / span if span > 0 else math.nan


def rescale_rate(requests: Sequence[TraceRequest], rate: float) -> list[TraceRequest]:
    """Scale every arrival time (gaps and offset alike) so the mean rate becomes ``rate``; the gaps' CV is unchanged."""
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"target rate must be a finite number > 0 req/s, got {rate}")
    current = mean_rate(requests)
    if math.isnan(current):
        raise ValueError("cannot rescale the rate of a trace with fewer than 2 distinct arrival times")
    factor = current / rate
    span = (max(r.arrival_time for r in requests) - min(r.arrival_time for r in requests)) * factor
    if not span <= MAX_ARRIVAL_SPAN_S:  # a trace reader would refuse the result
        raise ValueError(f"target rate {rate:g} req/s would spread the arrivals over {span:.3g} s, more than a trace "
                         f"may span ({MAX_ARRIVAL_SPAN_S:g} s, 31.7 years); give a higher rate")
    return [_with(r, arrival_time=round(r.arrival_time * factor, 9)) for r in requests]


def time_window(requests: Sequence[TraceRequest], start: float = 0.0, end: float = math.inf,
                *, rebase: bool = True) -> list[TraceRequest]:
    """Requests arriving in [start, end); with ``rebase`` times are shifted so the window starts at 0."""
    if not (start >= 0 and end > start):
        raise ValueError(f"time window needs 0 <= START < END, got {start}:{end}")
    shift = start if rebase else 0.0
    return [_with(r, arrival_time=round(r.arrival_time - shift, 9)) for r in requests
            if start <= r.arrival_time < end]


def first_n(requests: Sequence[TraceRequest], n: int) -> list[TraceRequest]:
    """The first ``n`` requests by arrival."""
    if n < 1:
        raise ValueError(f"first N needs N >= 1, got {n}")
    return list(requests[:n])


def sample_requests(requests: Sequence[TraceRequest], n: int, seed: int = 0) -> list[TraceRequest]:
    """A seeded uniform random subset of ``n`` requests (without replacement), kept in arrival order."""
    if not 1 <= n:
        raise ValueError(f"sample size must be >= 1, got {n}")
    if n >= len(requests):
        return list(requests)
    keep = np.sort(np.random.default_rng(seed).choice(len(requests), size=n, replace=False))
    return [requests[i] for i in keep.tolist()]


def resample_lengths(requests: Sequence[TraceRequest], pairs: np.ndarray, seed: int = 0) -> list[TraceRequest]:
    """Keep the arrival times; give each request a (prompt, output) pair drawn with replacement from ``pairs``."""
    pairs = np.asarray(pairs, dtype=np.int64)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or len(pairs) == 0 or (pairs < 1).any():
        raise ValueError("length pairs must be a non-empty (n, 2) array of integers >= 1")
    picked = pairs[np.random.default_rng(seed).integers(0, len(pairs), size=len(requests))]
    return [_with(r, prompt_tokens=int(p), output_tokens=int(o), extra=fit_reuse(r.extra, p + o))
            for r, (p, o) in zip(requests, picked.tolist())]


def bucket_width(requests: Sequence[TraceRequest]) -> float:
    """The median gap between consecutive distinct arrival times: the bucket width of a coarse trace."""
    distinct = np.unique(_arrivals(requests))
    if distinct.size < 2:
        raise ValueError("cannot infer a bucket width from fewer than 2 distinct arrival times; give one")
    return float(np.median(np.diff(distinct)))


def jitter_buckets(requests: Sequence[TraceRequest], width: float | None = None,
                   seed: int = 0) -> list[TraceRequest]:
    """Spread requests that share a timestamp uniformly (seeded) over their bucket.

    A bucket at time t covers [t, min(next distinct time, t + width)); ``width``
    defaults to ``bucket_width``. Offsets are sorted and given out in trace order,
    so the order of requests never changes. Times are rounded to the microsecond.
    """
    if not requests:
        return []
    if width is None:
        width = bucket_width(requests)
    if not (math.isfinite(width) and width > 0):
        raise ValueError(f"jitter width must be a finite number of seconds > 0, got {width}")
    t = _arrivals(requests)
    distinct, start, counts = np.unique(t, return_index=True, return_counts=True)
    if (np.diff(t) < 0).any():
        raise ValueError("jitter_buckets needs requests sorted by arrival time")
    span = np.minimum(np.append(np.diff(distinct), np.inf), width)
    rng = np.random.default_rng(seed)
    new = np.empty_like(t)
    for d, s, c, w in zip(distinct.tolist(), start.tolist(), counts.tolist(), span.tolist()):
        new[s:s + c] = d + np.sort(rng.random(c)) * w
    new = np.maximum.accumulate(np.round(new, 6))  # rounding must not reorder neighbours
    if not new[-1] - new[0] <= MAX_ARRIVAL_SPAN_S:  # the last bucket spreads over the whole width
        raise ValueError(f"jitter width {width:g} s would spread the arrivals over {new[-1] - new[0]:.3g} s, more than "
                         f"a trace may span ({MAX_ARRIVAL_SPAN_S:g} s, 31.7 years)")
    return [_with(r, arrival_time=float(x)) for r, x in zip(requests, new.tolist())]


@dataclass(frozen=True)
class TransformSpec:
    """Which transforms to apply (None: skip); see ``apply_transforms`` for the order."""

    jitter: float | str | None = None       # bucket width in s, or "auto"
    window: tuple[float, float] | None = None
    first: int | None = None
    sample: int | None = None
    rate: float | None = None
    lengths_from: str | None = None
    max_total_tokens: int | None = None
    seed: int = 0


def apply_transforms(requests: Sequence[TraceRequest], spec: TransformSpec) -> tuple[list[TraceRequest], list[str]]:
    """Apply ``spec`` (jitter, window, first, sample, rate, lengths, clip) and describe each step that ran."""
    out = list(requests)
    notes: list[str] = []
    if spec.jitter is not None:
        width = None if spec.jitter == "auto" else float(spec.jitter)
        w = bucket_width(out) if width is None else width
        out = jitter_buckets(out, w, seed=spec.seed)
        notes.append(f"jittered arrivals uniformly within buckets of up to {w:g} s")
    if spec.window is not None:
        n = len(out)
        out = time_window(out, *spec.window)
        notes.append(f"kept {len(out)} of {n} requests arriving in [{spec.window[0]:g}, {spec.window[1]:g}) s, "
                     "shifted to start at 0")
    if spec.first is not None:
        out = first_n(out, spec.first)
        notes.append(f"kept the first {len(out)} requests")
    if spec.sample is not None:
        n = len(out)
        out = sample_requests(out, spec.sample, seed=spec.seed)
        notes.append(f"sampled {len(out)} of {n} requests (seed {spec.seed})")
    if not out:
        raise ValueError("no requests left after the window/first/sample transforms")
    if spec.rate is not None:
        before = mean_rate(out)
        out = rescale_rate(out, spec.rate)
        notes.append(f"rescaled the mean rate from {before:.4g} to {spec.rate:g} req/s (gaps x {before / spec.rate:.4g})")
    if spec.lengths_from is not None:
        from sim.workload.importers import read_any
        pairs = np.array([(r.prompt_tokens, r.output_tokens) for r in read_any(spec.lengths_from).requests])
        out = resample_lengths(out, pairs, seed=spec.seed)
        notes.append(f"replaced lengths with pairs drawn from {spec.lengths_from} (seed {spec.seed})")
    if spec.max_total_tokens is not None:
        clipped = clip_total(out, spec.max_total_tokens)
        k = sum(a is not b for a, b in zip(out, clipped))
        out = clipped
        notes.append(f"clipped {k} requests to {spec.max_total_tokens} total tokens keeping prompt:output ratio")
    return out, notes
