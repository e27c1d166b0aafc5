"""The stage Gantt chart: each (replica, stage) lane's micro-batches in a window from the middle of the run,
coloured by kind; with PP=1 one lane per replica, its host-overhead and idle gaps marked, and their lengths below."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from sim.outputs.plot_base import KIND_COLORS, Run, run_style, set_scale
from sim.outputs.timeline import batch_kind

GAP_COLOR = "tab:red"


def gantt_window(batches: pd.DataFrame, num_batches: int = 40) -> tuple[float, float]:
    """A window of about ``num_batches`` micro-batches of the busiest replica (the lowest of equals) from the middle
    of the run, so no lane is too dense to read (a disaggregated run's decode replicas iterate most)."""
    first = batches[batches["stage"] == 0]
    counts = first["replica"].value_counts()
    busiest = int(counts[counts == counts.max()].index.min()) if len(counts) else 0
    b = first[first["replica"] == busiest].sort_values("start")
    if b.empty:
        return 0.0, 1.0
    i = max(0, len(b) // 2 - num_batches // 2)
    j = min(len(b) - 1, i + num_batches - 1)
    last = batches[(batches["replica"] == b["replica"].iloc[0]) & (batches["batch_id"] == b["batch_id"].iloc[j])]
    return float(b["start"].iloc[i]), float(last["end"].max())


def single_stage(batches: pd.DataFrame) -> bool:
    """True when every replica runs one pipeline stage (PP=1)."""
    return bool(batches.empty or batches["stage"].max() == 0)


def batch_gaps(batches: pd.DataFrame) -> pd.DataFrame:
    """Idle gaps on each (replica, stage) lane: columns replica, stage, start, end (positive gaps only)."""
    b = batches.sort_values(["replica", "stage", "start"])
    prev_end = b.groupby(["replica", "stage"])["end"].shift()
    g = pd.DataFrame({"replica": b["replica"], "stage": b["stage"], "start": prev_end, "end": b["start"]})
    return g[g["end"] > g["start"]].reset_index(drop=True)


def _in_window(df: pd.DataFrame, t0: float, t1: float, max_replicas: int) -> pd.DataFrame:
    """Rows (batches or gaps) overlapping [t0, t1] on the first ``max_replicas`` replicas."""
    return df[(df["end"] > t0) & (df["start"] < t1) & (df["replica"] < df["replica"].min() + max_replicas)]


def _spans(df: pd.DataFrame, t0: float) -> list[tuple[float, float]]:
    """(start, width) in ms from t0 of each row."""
    return list(zip((df["start"] - t0).to_numpy(float) * 1e3, (df["end"] - df["start"]).to_numpy(float) * 1e3))


def _draw_batches(ax: plt.Axes, b: pd.DataFrame, lanes: list[tuple[int, int]], t0: float) -> None:
    """Each lane's batches as bars coloured by kind (KIND_COLORS)."""
    kinds = batch_kind(b["num_prefill_tokens"].to_numpy(), b["num_decode_tokens"].to_numpy())
    for y, (rep, st) in enumerate(lanes):
        m = ((b["replica"] == rep) & (b["stage"] == st)).to_numpy()
        for kind, color in KIND_COLORS.items():
            if (m & (kinds == kind)).any():
                ax.broken_barh(_spans(b[m & (kinds == kind)], t0), (y - 0.4, 0.8), facecolors=color,
                               edgecolor="white", linewidth=0.3)


def _draw_gaps(ax: plt.Axes, gap_ax: plt.Axes, gaps: pd.DataFrame, lanes: list[tuple[int, int]], t0: float) -> None:
    """Gaps in their lanes as red bars of true width and a red line each (visible however short), lengths below."""
    for y, (rep, st) in enumerate(lanes):
        g = gaps[(gaps["replica"] == rep) & (gaps["stage"] == st)]
        mid = ((g["start"] + g["end"]) / 2 - t0).to_numpy(float) * 1e3
        ax.broken_barh(_spans(g, t0), (y - 0.4, 0.8), facecolors=GAP_COLOR, alpha=0.5)
        ax.vlines(mid, y - 0.4, y + 0.4, color=GAP_COLOR, lw=1.5, zorder=3)
        gap_ax.plot(mid, (g["end"] - g["start"]).to_numpy(float) * 1e3, "o", ms=3, label=f"replica {rep}",
                    color=run_style(y)["color"])
    drawn = gaps[[(r, st) in set(lanes) for r, st in zip(gaps["replica"], gaps["stage"])]] if len(gaps) else gaps
    lengths = (drawn["end"] - drawn["start"]).to_numpy(float) * 1e3  # the scale of what the lanes show
    gap_ax.set_ylabel("gap before batch (ms)")
    set_scale(gap_ax, lengths, axis="y")
    if gap_ax.get_yscale() == "linear" and lengths.size:
        gap_ax.set_ylim(0, 1.15 * lengths.max())
    gap_ax.grid(alpha=0.3, which="both")
    if len(lanes) > 1:
        gap_ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _gantt_title(run: Run, single: bool) -> str:
    """Title naming what the gaps are: pipeline bubbles with PP>1, host overhead or idle time with PP=1."""
    pipe = run.summary.get("pipeline", {})
    frac = pipe.get("mean_bubble_fraction", 0)
    if not single:
        return f"stage timeline (gaps = bubbles/idle); mean bubble fraction {frac:.1%}"
    median = pipe.get("median_bubble_s")
    extra = f", median gap {median * 1e3:.3g} ms" if median is not None else ""
    return f"PP=1: gaps are host overhead/idle, not pipeline bubbles; idle {frac:.1%} of the time{extra}"


def _gantt_axes(lanes: int, single: bool) -> tuple[plt.Figure, plt.Axes, plt.Axes | None]:
    """The Gantt figure: lanes above, and with PP=1 a panel of gap lengths below sharing the time axis."""
    height = 0.6 * max(lanes, 2) + 1.6
    if not single:
        fig, ax = plt.subplots(figsize=(9, height))
        return fig, ax, None
    fig, (ax, gap_ax) = plt.subplots(2, 1, figsize=(9, height + 1.8), sharex=True,
                                     gridspec_kw={"height_ratios": [height - 1.2, 1.8]})
    return fig, ax, gap_ax


def _kind_legend(ax: plt.Axes, with_gaps: bool) -> None:
    """The batch kinds' colours (top right), or with the gaps' too, below the lanes."""
    colors = [*KIND_COLORS.values(), *([GAP_COLOR] if with_gaps else [])]
    names = [f"{k}-only" if k != "mixed" else k for k in KIND_COLORS] + (["gap: host overhead or idle"] * with_gaps)
    where = {"loc": "upper center", "bbox_to_anchor": (0.5, -0.04)} if with_gaps else {"loc": "upper right"}
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=c) for c in colors], names, fontsize=8, ncol=len(names), **where)


def stage_gantt_figure(run: Run, window: tuple[float, float] | None = None, max_replicas: int = 4) -> plt.Figure:
    """Batches on each (replica, stage) lane coloured by kind; with PP=1 one lane per replica, gaps in red and below."""
    t0, t1 = window or gantt_window(run.batches)
    b = _in_window(run.batches, t0, t1, max_replicas)
    lanes = sorted({(int(r), int(s)) for r, s in zip(b["replica"], b["stage"])})
    single = single_stage(run.batches)
    fig, ax, gap_ax = _gantt_axes(len(lanes), single)
    _draw_batches(ax, b, lanes, t0)
    if gap_ax is not None:
        _draw_gaps(ax, gap_ax, _in_window(batch_gaps(run.batches), t0, t1, max_replicas), lanes, t0)
    ax.set_yticks(range(len(lanes)), [f"replica {r}" if single else f"replica {r} stage {s}" for r, s in lanes])
    ax.invert_yaxis()
    ax.set_xlim(0, (t1 - t0) * 1e3)
    _kind_legend(ax, single)
    ax.set_title(_gantt_title(run, single), fontsize=10)
    (gap_ax or ax).set_xlabel(f"time from {t0:.3f} s (ms)")
    return fig
