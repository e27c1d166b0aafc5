"""Prefix-cache plots: the stacked KV-cache plot (in use, cached free, free; a panel per replica) and
``prefix_cache.png`` (the hit rate of the requests arriving in each time bin, and the hit rate per replica).

A run has prefix caching when its requests.csv has ``cached_tokens`` (batches.csv then has
``kv_cached_free_blocks`` and summary.json a ``prefix_cache`` section)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter

from sim.outputs.plot_base import Run, _time_bins, run_style

PREFIX_CACHE_PLOT = "prefix_cache.png"  # written besides PLOT_FILES for runs with prefix caching
KV_STACK = {"in use by running requests": "tab:blue", "cached free (prefix cache)": "tab:purple",
            "free": "0.9"}  # stacked KV-cache areas with prefix caching, bottom to top
KV_PANELS = 4  # with prefix caching the KV-cache plot has a panel for each of at most this many replicas


def has_prefix_cache(run: Run) -> bool:
    """True for a run with prefix caching (its requests.csv has ``cached_tokens`` or summary.json says so)."""
    return "cached_tokens" in run.requests.columns or bool(run.summary.get("prefix_cache", {}).get("enabled"))


def _kv_blocks(run: Run, b: pd.DataFrame) -> int:
    """Blocks per replica: from summary.json, else the most a batch saw in use and cached."""
    used = b["kv_blocks_used"] + b.get("kv_cached_free_blocks", 0)
    return run.summary.get("kv_cache", {}).get("blocks_per_replica") or max(int(used.max()) if len(b) else 1, 1)


def _kv_stack(rb: pd.DataFrame, blocks: int, nbins: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """(times, [in use, cached free, free] fractions of ``blocks``) of a replica's batches; bin means past ``nbins``."""
    t = rb["start"].to_numpy(float)
    used = rb["kv_blocks_used"].to_numpy(float) / blocks
    cached = rb["kv_cached_free_blocks"].to_numpy(float) / blocks
    if t.size > nbins:
        idx, centres = _time_bins(t, nbins)
        g = pd.DataFrame({"u": used, "c": cached}).groupby(idx).mean()
        t, used, cached = centres[g.index.to_numpy()], g["u"].to_numpy(), g["c"].to_numpy()
    elif t.size:  # steps: the last batch's occupancy lasts until it ends
        t, used, cached = np.append(t, rb["end"].max()), np.append(used, used[-1]), np.append(cached, cached[-1])
    return t, [used, cached, np.clip(1 - used - cached, 0, None)]


def _prefix_hit_title(run: Run) -> str:
    """The prefix cache's token hit rate and mean cached-free blocks, for the KV-cache title."""
    pc = run.summary.get("prefix_cache", {})
    hit = pc.get("hit_rate_tokens")
    hit_text = f"{hit:.1%} of prompt tokens" if hit is not None else "-"
    return f"prefix cache hit rate {hit_text}, {pc.get('cached_free_blocks_mean', 0):,.0f} cached free blocks on average"


def kv_prefix_cache_figure(run: Run, nbins: int = 200) -> plt.Figure:
    """With prefix caching: blocks in use, cached free and free (fractions, stacked) over time, a panel per replica."""
    b = run.batches[run.batches["stage"] == 0]
    blocks, reps = _kv_blocks(run, b), sorted(b["replica"].unique().tolist())
    shown = reps[:KV_PANELS]
    fig, axes = plt.subplots(max(len(shown), 1), 1, figsize=(9, 1.4 + 2.1 * max(len(shown), 1)), sharex=True,
                             squeeze=False)
    axes = axes[:, 0]
    for ax, rep in zip(axes, shown):
        rb = b[b["replica"] == rep]
        t, parts = _kv_stack(rb, blocks, nbins)
        ax.stackplot(t, *parts, colors=list(KV_STACK.values()), labels=list(KV_STACK),
                     step="post" if len(rb) <= nbins else None, alpha=0.9)
        ax.set(ylabel=f"replica {rep}\nfraction of blocks", ylim=(0, 1))
        ax.grid(alpha=0.3)
    if len(b):
        axes[-1].set_xlim(b["start"].min(), b["end"].max())
    kv, more = run.summary.get("kv_cache", {}), f" (first {len(shown)} of {len(reps)} replicas)" * (len(reps) > len(shown))
    axes[0].set_title(f"KV cache ({blocks} blocks/replica){more}: in use mean {kv.get('mean_utilization', 0):.1%}, "
                      f"max {kv.get('max_utilization', 0):.1%}, {kv.get('preemptions', 0)} preemptions\n"
                      f"{_prefix_hit_title(run)}", fontsize=10)
    if shown:
        axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes[-1].set_xlabel("time (s)")
    return fig


def hit_rate_over_time(requests: pd.DataFrame, nbins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, sum(cached_tokens) / sum(prompt_tokens)) of the requests arriving in each arrival-time bin."""
    t = requests["arrival_time"].to_numpy(float)
    if t.size == 0:
        return np.empty(0), np.empty(0)
    idx, centres = _time_bins(t, nbins)
    g = requests[["cached_tokens", "prompt_tokens"]].groupby(idx).sum()
    g = g[g["prompt_tokens"] > 0]
    return centres[g.index.to_numpy()], (g["cached_tokens"] / g["prompt_tokens"]).to_numpy(float)


def _overall_hit_rate(run: Run) -> float | None:
    """The run's token hit rate: summary.json's, else from requests.csv."""
    hit = run.summary.get("prefix_cache", {}).get("hit_rate_tokens")
    r = run.requests
    if hit is None and "cached_tokens" in r.columns and r["prompt_tokens"].sum() > 0:
        hit = float(r["cached_tokens"].sum() / r["prompt_tokens"].sum())
    return hit


def _hit_rate_panel(ax: plt.Axes, run: Run, hit: float | None) -> None:
    """Per-request hit fractions (points), the binned hit rate and the run's overall rate against arrival time."""
    r = run.requests
    if "cached_tokens" in r.columns and len(r):
        frac = r["cached_tokens"].to_numpy(float) / r["prompt_tokens"].clip(lower=1).to_numpy(float)
        ax.scatter(r["arrival_time"], frac, s=4, alpha=0.25, color="gray", label="requests", rasterized=True)
        c, rate = hit_rate_over_time(r)
        ax.plot(c, rate, color="C0", marker="o", ms=3, label="arrivals in the bin")
    if hit is not None:
        ax.axhline(hit, color="C3", ls="--", label=f"whole run ({hit:.1%})")
    ax.set(xlabel="arrival time (s)", ylabel="prompt tokens found cached", ylim=(-0.02, 1.02))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0%}"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def _replica_panel(ax: plt.Axes, replicas: list[dict], hit: float | None) -> None:
    """The token hit rate of each replica as bars (value and evictions in the labels), the run's rate as a line."""
    rates = [r.get("hit_rate_tokens") for r in replicas]
    bars = ax.bar(range(len(rates)), [v or 0 for v in rates], color=[run_style(i)["color"] for i in range(len(rates))])
    ax.bar_label(bars, [f"{v:.1%}" if v is not None else "-" for v in rates], fontsize=8, padding=4)
    ax.set_xticks(range(len(rates)), [f"replica {i}\n{r.get('evictions', 0):,} evictions" for i, r in
                                      enumerate(replicas)], fontsize=8)
    if hit is not None:
        ax.axhline(hit, color="C3", ls="--")
    ax.set(ylabel="hit rate (prompt tokens)", ylim=(0, 1.05))
    ax.set_title("per replica", fontsize=10)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:.0%}"))
    ax.grid(alpha=0.3, axis="y")


def prefix_cache_figure(run: Run) -> plt.Figure:
    """Prefix-cache hit rate (tokens) over arrival time and, with several replicas, per replica."""
    pc = run.summary.get("prefix_cache", {})
    replicas, hit = pc.get("replicas") or [], _overall_hit_rate(run)
    several = len(replicas) > 1
    fig, axes = plt.subplots(1, 1 + several, figsize=(10 if several else 8, 4.2), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 1] if several else [1]})
    _hit_rate_panel(axes[0, 0], run, hit)
    if several:
        _replica_panel(axes[0, 1], replicas, hit)
    blocks, ev = pc.get("hit_rate_blocks"), pc.get("evictions")
    extra = (f", {blocks:.1%} of blocks" if blocks is not None else "") + (f", {ev:,} evictions" if ev is not None else "")
    axes[0, 0].set_title(f"prefix cache hit rate: {hit:.1%} of prompt tokens{extra}" if hit is not None
                         else "prefix cache hit rate", fontsize=10)
    return fig
