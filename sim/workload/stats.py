"""What a trace looks like: rate over time, burstiness (inter-arrival CV), length percentiles, P:D ratio; printed and plotted."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sim.request import TraceRequest

PERCENTILES = (50, 90, 99)
CONTEXT_MARKS = (2048, 4096, 8192, 32768)


def _describe(a: np.ndarray) -> dict[str, float]:
    p = np.percentile(a, PERCENTILES)
    return {"mean": float(a.mean()), **{f"p{q}": float(v) for q, v in zip(PERCENTILES, p)},
            "min": float(a.min()), "max": float(a.max())}


def _bin_width(span: float, n: int) -> float:
    """A round bin width giving about 60 bins (at least 1 s unless the trace is shorter)."""
    if span <= 0:
        return 1.0
    raw = span / 60
    if raw < 1:
        return float(10 ** math.floor(math.log10(raw))) if raw > 0 else 1.0
    for w in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600):
        if w >= raw:
            return float(w)
    return float(math.ceil(raw / 3600) * 3600)


def rate_over_time(arrivals: np.ndarray, bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """(bin start times, requests/s in each bin) from the first arrival on.

    A last bin that the trace covers only in part would read too low, so it is left
    out (unless it is the only bin).
    """
    t0 = arrivals.min()
    rel = arrivals - t0  # relative to the first arrival: epoch-based clocks keep their resolution
    nbins = max(1, int(math.ceil(rel.max() / bin_s + 1e-9)))
    counts, edges = np.histogram(rel, bins=nbins, range=(0.0, nbins * bin_s))
    if nbins > 1 and edges[-1] > rel.max() + 1e-9:
        counts, edges = counts[:-1], edges[:-1]
    return t0 + edges[:-1], counts / bin_s


def trace_stats(requests: Sequence[TraceRequest], bin_s: float | None = None) -> dict[str, Any]:
    """Summary of a trace (see module doc); ``bin_s`` is the rate-over-time bin (default: about 60 bins)."""
    if not requests:
        raise ValueError("trace has no requests")
    t = np.sort(np.fromiter((r.arrival_time for r in requests), dtype=float, count=len(requests)))
    # float64: token counts past 2^63 (accepted by the readers, skipped by a simulation) must not overflow
    prompt = np.fromiter((r.prompt_tokens for r in requests), dtype=float, count=len(requests))
    output = np.fromiter((r.output_tokens for r in requests), dtype=float, count=len(requests))
    n = len(t)
    span = float(t[-1] - t[0])
    gaps = np.diff(t)
    bin_s = bin_s or _bin_width(span, n)
    _, rates = rate_over_time(t, bin_s)
    total = prompt + output
    ia: dict[str, Any] = {"count": int(gaps.size)}
    if gaps.size:
        mean = float(gaps.mean())
        ia.update(_describe(gaps))
        ia["cv"] = float(gaps.std() / mean) if mean > 0 else None
        ia["zero_fraction"] = float((gaps == 0).mean())
    ratio = prompt / output
    return {
        "requests": n,
        "first_arrival_s": float(t[0]),
        "duration_s": span,
        "mean_rate": (n - 1) / span if span > 0 else None,
        "inter_arrival_s": ia,
        "rate_over_time": {"bin_s": bin_s, "full_bins": int(rates.size), "mean": float(rates.mean()), "min": float(rates.min()),
                           "max": float(rates.max()),
                           "cv": float(rates.std() / rates.mean()) if rates.mean() > 0 else None},
        "prompt_tokens": _describe(prompt),
        "output_tokens": _describe(output),
        "total_tokens": _describe(total),
        "pd_ratio": {**_describe(ratio), "tokens": float(prompt.sum() / output.sum())},
        "total_tokens_over": {str(m): int((total > m).sum()) for m in CONTEXT_MARKS},
        "reuse": ideal_reuse(requests),
    }


class _Spans:
    """Disjoint, non-touching integer intervals [lo, hi), sorted: the blocks of one key family seen so far (a family
    seen as one interval, as most are, is kept as a (lo, hi) tuple instead: a million of these objects would cost
    seconds of garbage collection)."""

    __slots__ = ("lo", "hi")

    def __init__(self, lo: int, hi: int) -> None:
        self.lo, self.hi = [lo], [hi]

    def covered(self, x: int) -> int:
        """How many consecutive positions from ``x`` on are in the set."""
        i = bisect_right(self.lo, x) - 1
        return self.hi[i] - x if i >= 0 and self.hi[i] > x else 0

    def add(self, a: int, b: int) -> None:
        """Add [a, b), merging the intervals it overlaps or touches."""
        i, j = bisect_left(self.hi, a), bisect_right(self.lo, b)
        if i < j:
            a, b = min(a, self.lo[i]), max(b, self.hi[j - 1])
        self.lo[i:j], self.hi[i:j] = [a], [b]


def _covered(seen: tuple[int, int] | _Spans | None, x: int) -> int:
    """How many consecutive positions from ``x`` on a family has seen."""
    if seen is None:
        return 0
    if type(seen) is tuple:
        return seen[1] - x if seen[0] <= x < seen[1] else 0
    return seen.covered(x)


def _with_span(seen: tuple[int, int] | _Spans | None, a: int, b: int) -> tuple[int, int] | _Spans:
    """A family's seen positions with [a, b) added."""
    if seen is None:
        return a, b
    if type(seen) is tuple:
        if a <= seen[1] and seen[0] <= b:
            return min(a, seen[0]), max(b, seen[1])
        seen = _Spans(*seen)
    seen.add(a, b)
    return seen


def ideal_reuse(requests: Sequence[TraceRequest], block_size: int = 16) -> dict[str, Any]:
    """The prefix reuse a trace offers: the hit rate an infinite prefix cache would reach, in arrival order.

    Each request hits the longest run of ``block_size``-token blocks an earlier request computed (leaving one
    token to compute, as the cache does), then adds its own, answer included; None where the trace declares
    no reuse. Blocks are compared a run at a time (``sim.kv.prefix_keys.shared_runs``; a request's own blocks never match
    another's), so time and memory grow with the hash ids and groups, not with the tokens.
    """
    from sim.kv.prefix_keys import prefix_spec, shared_runs

    specs = [prefix_spec(r.extra) if r.extra else None for r in requests]
    declared = sum(1 for s in specs if s is not None)
    if not declared:
        return {"requests_declaring_reuse": 0, "ideal_hit_rate_tokens": None, "block_size": block_size}
    seen: dict[Any, tuple[int, int] | _Spans] = {}
    hit = total = 0
    order = sorted(range(len(requests)), key=lambda i: requests[i].arrival_time)
    for i in order:
        r = requests[i]
        # its prompt's and its answer's blocks (a conversation's next turn resends the answer)
        runs = shared_runs(specs[i], r.prompt_tokens + r.output_tokens - 1, block_size) if specs[i] else []
        limit = (r.prompt_tokens - 1) // block_size
        k = 0
        for family, first, count in runs:
            if k >= limit:
                break
            got = min(count, _covered(seen.get(family), first))
            k += got
            if got < count:
                break
        hit += min(k, limit) * block_size
        total += r.prompt_tokens
        for family, first, count in runs:
            seen[family] = _with_span(seen.get(family), first, first + count)
    return {"requests_declaring_reuse": declared, "ideal_hit_rate_tokens": hit / total, "block_size": block_size}


def format_stats(stats: dict[str, Any], name: str = "trace") -> str:
    """The stats as a short human-readable report."""
    ia = stats["inter_arrival_s"]
    rt = stats["rate_over_time"]

    def g(v: float | None, spec: str = ".4g") -> str:
        return "-" if v is None else format(v, spec)
    lines = [
        f"{name}: {stats['requests']} requests over {stats['duration_s']:.3f} s "
        f"(from t = {stats['first_arrival_s']:g} s), mean rate {g(stats['mean_rate'])} req/s",
        f"inter-arrival: mean {g(ia.get('mean'))} s, p50 {g(ia.get('p50'))} s, p99 {g(ia.get('p99'))} s, "
        f"CV {g(ia.get('cv'), '.3f')} (1 = Poisson, > 1 bursty), simultaneous {g(ia.get('zero_fraction'), '.1%')}",
        f"rate over time ({rt['bin_s']:g} s bins): mean {rt['mean']:.4g}, min {rt['min']:.4g}, max {rt['max']:.4g} req/s, "
        f"CV {g(rt['cv'], '.3f')}",
        "",
        f"{'tokens':<12}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}{'min':>10}{'max':>10}",
    ]
    for key, label in (("prompt_tokens", "prompt"), ("output_tokens", "output"), ("total_tokens", "total"),
                       ("pd_ratio", "P:D ratio")):
        s = stats[key]
        spec = ".3g" if key == "pd_ratio" else ".0f"
        lines.append(f"{label:<12}" + "".join(f"{format(s[k], spec):>10}" for k in
                                              ("mean", "p50", "p90", "p99", "min", "max")))
    lines.append(f"P:D ratio of token totals: {stats['pd_ratio']['tokens']:.3g}")
    over = ", ".join(f"> {k}: {v}" for k, v in stats["total_tokens_over"].items())
    lines.append(f"requests with prompt + output {over}")
    reuse = stats.get("reuse") or {}
    if reuse.get("ideal_hit_rate_tokens") is not None:
        lines.append(f"prefix reuse: {reuse['requests_declaring_reuse']} requests declare it; an infinite prefix cache "
                     f"({reuse['block_size']}-token blocks) would hit {reuse['ideal_hit_rate_tokens']:.1%} of prompt "
                     "tokens")
    return "\n".join(lines)


def plot_stats(requests: Sequence[TraceRequest], path: str | Path, bin_s: float | None = None,
               title: str | None = None) -> Path:
    """Write a 2x2 PNG: request rate over time, inter-arrival histogram, length CDFs, P:D ratio histogram."""
    from sim.outputs.plots import plt, save_figure  # Agg backend, shared figure writer

    stats = trace_stats(requests, bin_s)
    t = np.sort([r.arrival_time for r in requests])
    prompt = np.array([r.prompt_tokens for r in requests])
    output = np.array([r.output_tokens for r in requests])
    fig, axes = plt.subplots(2, 2, figsize=(11, 7))
    starts, rates = rate_over_time(t, stats["rate_over_time"]["bin_s"])
    ax = axes[0, 0]
    ax.step(starts, rates, where="post")
    ax.axhline(stats["rate_over_time"]["mean"], color="gray", ls="--", lw=1, label="mean")
    ax.set(xlabel="arrival time (s)", ylabel="requests/s",
           title=f"rate over time ({stats['rate_over_time']['bin_s']:g} s bins)")
    ax.legend()
    ax = axes[0, 1]
    gaps = np.diff(t)
    pos = gaps[gaps > 0]
    if pos.size:
        ax.hist(pos, bins=np.geomspace(pos.min(), pos.max() * 1.0001, 50))
        ax.set_xscale("log")
    cv = stats["inter_arrival_s"].get("cv")
    ax.set(xlabel="inter-arrival time (s)", ylabel="count",
           title=f"inter-arrival times (CV {cv:.2f})" if cv is not None else "inter-arrival times")
    ax = axes[1, 0]
    for a, label in ((prompt, "prompt"), (output, "output")):
        x = np.sort(a)
        ax.plot(x, np.arange(1, x.size + 1) / x.size, label=label)
    ax.set_xscale("log")
    ax.set(xlabel="tokens", ylabel="fraction of requests", title="length CDFs")
    ax.legend()
    ax = axes[1, 1]
    ratio = prompt / output
    ax.hist(ratio, bins=np.geomspace(ratio.min(), ratio.max() * 1.0001, 50))
    ax.set_xscale("log")
    ax.set(xlabel="prompt / output tokens", ylabel="count",
           title=f"P:D ratio (median {stats['pd_ratio']['p50']:.3g})")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
