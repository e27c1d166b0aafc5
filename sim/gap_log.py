"""Every time-between-tokens gap of a run, in memory that does not grow with tokens.

Gaps are kept exactly up to ``exact_limit`` (all of a run of ordinary size), and always in a
log-bucketed histogram (DDSketch / HdrHistogram style): bucket ``k`` holds values in
(gamma^(k-1), gamma^k] with gamma = (1 + e) / (1 - e), and is read back as 2 gamma^k / (gamma + 1),
within a relative error ``e`` of every value in it. Percentiles read from the histogram (linear
interpolation between the two ranks around the percentile, as numpy does) are therefore within ``e``
of the exact ones. Histograms of replicas merge by adding counts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from itertools import chain

import numpy as np

#: relative error of a percentile read from the histogram
RELATIVE_ERROR = 0.005
#: exact gaps kept (8 bytes each) before percentiles come from the histogram alone
EXACT_LIMIT = 4_000_000
_GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
_LOG_GAMMA = math.log(_GAMMA)
#: bucket range: 1 ns to 1e6 s (smaller gaps count as zero, larger ones in the last bucket; max stays exact)
_MIN_LOG = math.floor(math.log(1e-9) / _LOG_GAMMA)
_NUM_BUCKETS = math.ceil(math.log(1e6) / _LOG_GAMMA) - _MIN_LOG + 1
#: values bucketed per numpy pass: temporaries of 512 KiB stay in cache, where one pass over a run's 4M gaps made
#: eight 32 MiB arrays and took 0.05-0.8 s on the 2-core VM against 0.02-0.04 s in chunks (measured, issue 34)
_CHUNK = 1 << 16


class GapLog:
    """Mergeable record of gaps: count, sum, max and zeros exactly; values exactly or to ``RELATIVE_ERROR``."""

    def __init__(self, exact_limit: int = EXACT_LIMIT) -> None:
        self.exact_limit = exact_limit
        self.counts = np.zeros(_NUM_BUCKETS, dtype=np.int64)  # filled once the exact values are given up
        self.zeros = 0
        self.count = 0
        self.total = 0.0
        self.max = -math.inf
        self._exact: list[np.ndarray] | None = []

    @property
    def exact(self) -> bool:
        """Whether every gap is still held exactly."""
        return self._exact is not None

    def add(self, gaps: np.ndarray) -> None:
        """Record an array of gaps (seconds). While exact, only appended (the simulator calls this per request)."""
        if gaps.size == 0:
            return
        self.count += int(gaps.size)
        self.total += float(gaps.sum())
        top = float(gaps.max())
        if top > self.max:
            self.max = top
        if self._exact is not None:
            self._exact.append(gaps)
            if self.count > self.exact_limit:  # give the exact values up: into the histogram at once
                for chunk in self._exact:
                    self._bucket(chunk)
                self._exact = None
        else:
            self._bucket(gaps)

    def add_token_times(self, runs: Sequence[Sequence[float]]) -> list[float]:
        """Record the gaps within each run of token times (a finished request's, two times or more each, in order)
        and return each run's largest gap. The runs are flattened in C (itertools.chain): a generator over 4M
        token times took 0.16 s against 0.07 s (measured, issue 34)."""
        if not runs:
            return []
        lens = np.fromiter(map(len, runs), dtype=np.int64, count=len(runs))
        times = np.fromiter(chain.from_iterable(runs), dtype=float, count=int(lens.sum()))
        gaps = np.diff(times)
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])  # each run's first time
        keep = np.ones(gaps.size, dtype=bool)
        keep[starts[1:] - 1] = False  # the differences that straddle two runs
        gaps = gaps[keep]
        tops = np.maximum.reduceat(gaps, starts - np.arange(len(runs)))  # each run's first gap in the kept ones
        self.add(gaps)
        return tops.tolist()

    def _bucket(self, gaps: np.ndarray) -> None:
        """Count ``gaps`` into the histogram, ``_CHUNK`` values at a time (the same counts as in one pass)."""
        for start in range(0, gaps.size, _CHUNK):
            part = gaps[start:start + _CHUNK]
            pos = part[part >= 1e-9]
            self.zeros += int(part.size - pos.size)
            if pos.size:
                k = np.ceil(np.log(pos) / _LOG_GAMMA).astype(np.int64) - _MIN_LOG
                np.clip(k, 0, _NUM_BUCKETS - 1, out=k)
                self.counts += np.bincount(k, minlength=_NUM_BUCKETS)

    def _histogram(self) -> tuple[int, np.ndarray]:
        """(zeros, bucket counts) of every gap, built from the exact values while they are held."""
        if self._exact is None:
            return self.zeros, self.counts
        h = GapLog(0)
        for chunk in self._exact:
            h._bucket(chunk)
        return h.zeros, h.counts

    def merge(self, other: GapLog) -> GapLog:
        """A new log holding both (exact if both are and the total stays within the larger limit)."""
        out = GapLog(max(self.exact_limit, other.exact_limit))
        out.count, out.total, out.max = self.count + other.count, self.total + other.total, max(self.max, other.max)
        if self._exact is not None and other._exact is not None and out.count <= out.exact_limit:
            out._exact = self._exact + other._exact
        else:
            (za, ca), (zb, cb) = self._histogram(), other._histogram()
            out.zeros, out.counts, out._exact = za + zb, ca + cb, None
        return out

    @classmethod
    def merged(cls, logs: Iterable[GapLog]) -> GapLog:
        out = cls()
        for log in logs:
            out = out.merge(log)
        return out

    def values(self) -> np.ndarray | None:
        """Every gap, in recording order, when held exactly; else None."""
        if self._exact is None:
            return None
        return np.concatenate(self._exact) if self._exact else np.empty(0)

    def percentiles(self, ps: Iterable[float]) -> np.ndarray:
        """Percentiles ``ps`` (0-100): exact (numpy's linear method) or within ``RELATIVE_ERROR``."""
        ps = np.asarray(list(ps), dtype=float)
        exact = self.values()
        if exact is not None:
            return np.percentile(exact, ps)
        cum = np.cumsum(np.concatenate([[self.zeros], self.counts]))
        reps = np.concatenate([[0.0], 2 * np.exp((np.arange(_NUM_BUCKETS) + _MIN_LOG) * _LOG_GAMMA) / (_GAMMA + 1)])
        reps[-1] = min(reps[-1], self.max)

        def at(rank: np.ndarray) -> np.ndarray:
            return reps[np.searchsorted(cum, rank, side="right")]
        rank = ps / 100.0 * (self.count - 1)
        lo, hi = np.floor(rank), np.ceil(rank)
        out = at(lo) + (rank - lo) * (at(hi) - at(lo))
        return np.minimum(out, self.max)

    def describe(self, percentiles: tuple[int, ...]) -> dict[str, float | int | str | None]:
        """count, mean, the percentiles (p50, ...) and max; with how the percentiles were read."""
        if self.count == 0:
            return {"count": 0, "mean": None, **{f"p{p}": None for p in percentiles}, "max": None}
        vals = self.percentiles(percentiles)
        out: dict[str, float | int | str | None] = {"count": self.count, "mean": self.total / self.count}
        out.update({f"p{p}": float(v) for p, v in zip(percentiles, vals)})
        out["max"] = self.max
        out["percentiles_from"] = "exact" if self.exact else f"histogram, relative error <= {RELATIVE_ERROR:g}"
        return out
