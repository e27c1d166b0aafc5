"""PNG plots of run folders (simulator or engine): latency CDFs, latency over time, batches, KV cache, stage Gantt.

Everything is computed from the run folder (summary.json, requests.csv,
batches.csv). TBT needs every gap between consecutive tokens, which the run
folder does not keep: the TBT plot draws the all-gap CDF from summary.json's
quantile table (``latency_s.tbt_cdf``), the per-request mean gap (TPOT) and
per-request largest gap (``tbt_max``) as CDFs (for up to ``DETAIL_RUNS`` runs),
and the exact P50/P90/P99. CDFs (TTFT and TBT in ms) have a tail panel (0.9 to 1)
under the whole curve, P50/P90/P99 markers, one colour and line style per run
(``run_style``), and plain tick labels on log axes. With PP=1 the Gantt chart has
a lane per replica with its host-overhead and idle gaps marked, and their lengths below."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

from sim.outputs.run_folder import read_run
from sim.outputs.timeline import batch_kind

matplotlib.use("Agg")  # no display: pyplot picks its backend at the first figure, so this may follow the import

DPI = 100
KIND_COLORS = {"prefill": "tab:orange", "decode": "tab:blue", "mixed": "tab:green"}
GAP_COLOR = "tab:red"
LINESTYLES = ("-", "--", "-.", ":")  # after the ten tab10 colours, runs repeat them with the next style
PERCENTILE_MARKERS = {50: "o", 90: "s", 99: "D"}
LOG_SPAN = 20  # a latency axis is logarithmic when its largest positive value exceeds the smallest this many times
UNIT_SCALE = {"s": 1.0, "ms": 1e3}
_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)$")  # a trailing "(s)" in an axis quantity
DETAIL_RUNS = 3  # the TBT plot adds per-request TPOT and max-gap curves for at most this many runs
TBT_CURVES = {"all gaps": {"lw": 2.2}, "per-request mean gap (TPOT)": {"lw": 1.0},
              "per-request max gap": {"lw": 1.0, "ls": "--"}}  # kind: line style overrides
PLOT_FILES = ("ttft_cdf.png", "tbt_cdf.png", "latency_over_time.png", "batch_composition.png", "kv_cache.png",
              "stage_gantt.png")


@dataclass
class Run:
    """A loaded run folder with a label for legends."""

    label: str
    summary: dict
    requests: pd.DataFrame
    batches: pd.DataFrame


def load_run(run_dir: str | Path, label: str | None = None) -> Run:
    """Read a run folder; the label defaults to the folder's name."""
    summary, requests, batches = read_run(run_dir)
    return Run(label or Path(run_dir).resolve().name, summary, requests, batches)


def _cdf(ax: plt.Axes, values: np.ndarray, **kw) -> None:
    """Draw the empirical CDF of ``values`` (NaNs dropped) as a step line."""
    x = np.sort(np.asarray(values, dtype=float)[~np.isnan(np.asarray(values, dtype=float))])
    if x.size:
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", **kw)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write as PNG (parent folders created) and close ``fig``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _title(run: Run) -> str:
    """Run label, scheduler, model, GPU and parallelism, for a plot title."""
    c = run.summary.get("config", {})
    return f"{run.label}: {c.get('scheduler')}, {c.get('model')} on {c.get('gpu')} (TP{c.get('tp')} PP{c.get('pp')})"


def run_style(i: int) -> dict:
    """Colour and line style of the i-th run: the ten tab10 colours, then again with the next line style."""
    colors = matplotlib.colormaps["tab10"].colors
    return {"color": colors[i % len(colors)], "ls": LINESTYLES[(i // len(colors)) % len(LINESTYLES)]}


def plain_number(v: float, _pos: object = None) -> str:
    """A tick or legend number without scientific notation: 0.5, 20, 12.3, 2,964."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def set_scale(ax: plt.Axes, values: np.ndarray, axis: str = "x") -> None:
    """Log axis when the positive values span more than LOG_SPAN, else linear; plain tick labels either way."""
    v = np.asarray(values, dtype=float)
    pos = v[(v > 0) & ~np.isnan(v)]
    target = ax.xaxis if axis == "x" else ax.yaxis
    if not (pos.size and pos.max() > LOG_SPAN * pos.min()):
        target.set_major_formatter(ScalarFormatter(useOffset=False))
        return
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    decades = np.log10(pos.max() / pos.min())
    target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    target.set_major_formatter(FuncFormatter(plain_number))
    target.set_minor_formatter(NullFormatter())


def axis_label(quantity: str, unit: str) -> str:
    """``quantity (unit)``; a unit already in ``quantity`` ("time to first token (s)", older callers) is replaced."""
    return f"{_UNIT_SUFFIX.sub('', quantity)} ({unit})"


def _cdf_axes(title: str, xlabel: str) -> tuple[plt.Figure, tuple[plt.Axes, plt.Axes]]:
    """A figure with the whole CDF above and its tail (fraction 0.9 to 1) below, sharing the x axis."""
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.2), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    axes[0].set(ylabel="fraction", title=title, ylim=(0, 1.02))
    axes[1].set(xlabel=xlabel, ylabel="fraction (tail)", ylim=(0.895, 1.002))
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
    return fig, axes


def _mark_percentiles(axes: Sequence[plt.Axes], points: Sequence[tuple[float, float]], color: object) -> None:
    """Markers at (value, percentile) points on every axis, shaped by percentile (PERCENTILE_MARKERS)."""
    for ax in axes:
        for x, q in points:
            ax.plot([x], [q / 100], ls="", marker=PERCENTILE_MARKERS[q], color=color, ms=6, mec="black", mew=0.6)


def _run_label(label: str, points: Sequence[tuple[float, float]], unit: str) -> str:
    """The legend label of a run: its name with its P50 and P99."""
    pct = {q: x for x, q in points}
    shown = [f"P{q} {plain_number(pct[q])}" for q in (50, 99) if q in pct]
    return f"{label} ({' / '.join(shown)} {unit})" if shown else label


def _legends(axes: Sequence[plt.Axes], curve_handles: Sequence[Line2D] = ()) -> None:
    """Runs outside the right of the top axis; curve kinds and percentile markers beside the tail axis."""
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="run")
    markers = [Line2D([], [], color="gray", marker=m, ls="", mec="black", label=f"P{q}")
               for q, m in PERCENTILE_MARKERS.items()]
    axes[1].legend(handles=[*curve_handles, *markers], loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)


def _percentile_points(values: np.ndarray) -> list[tuple[float, float]]:
    """(value, q) for each marked percentile q of ``values`` (none when all are NaN)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return [(float(np.percentile(v, q)), q) for q in PERCENTILE_MARKERS] if v.size else []


def cdf_figure(runs: Sequence[Run], column: str, quantity: str, title: str, unit: str = "s") -> plt.Figure:
    """Overlaid CDFs of a requests.csv column (seconds) in ``unit`` ("s" or "ms"), one per run, P50/P90/P99 marked."""
    fig, axes = _cdf_axes(title, axis_label(quantity, unit))
    values = [run.requests[column].to_numpy(float) * UNIT_SCALE[unit] for run in runs]
    for i, (run, v) in enumerate(zip(runs, values)):
        style, points = run_style(i), _percentile_points(v)
        for ax, label in zip(axes, (_run_label(run.label, points, unit), None)):
            _cdf(ax, v, label=label, **style)
        _mark_percentiles(axes, points, style["color"])
    set_scale(axes[0], np.concatenate(values) if values else np.empty(0))
    _legends(axes)
    return fig


def _tbt_points(run: Run) -> list[tuple[float, float]]:
    """(ms, q) of the all-gap P50/P90/P99 in summary.json."""
    tbt = run.summary.get("latency_s", {}).get("tbt", {})
    return [(tbt[f"p{q}"] * 1e3, q) for q in PERCENTILE_MARKERS if tbt.get(f"p{q}") is not None]


def _tbt_curves(run: Run, detail: bool) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """(kind of TBT_CURVES, x ms, y or None for an empirical CDF) per curve; ``detail`` adds the per-request ones."""
    cdf = run.summary.get("latency_s", {}).get("tbt_cdf", {})
    curves = []
    if cdf.get("value"):  # all gaps, from the quantile table in summary.json
        curves.append(("all gaps", np.asarray(cdf["value"]) * 1e3, np.asarray(cdf["percentile"]) / 100))
    if detail or not curves:
        curves.append(("per-request mean gap (TPOT)", run.requests["tpot"].to_numpy(float) * 1e3, None))
    if detail:
        curves.append(("per-request max gap", run.requests["tbt_max"].to_numpy(float) * 1e3, None))
    return curves


def tbt_figure(runs: Sequence[Run]) -> plt.Figure:
    """All-gap TBT CDFs (summary.json's quantile table) with P50/P90/P99; up to DETAIL_RUNS runs add TPOT and max gap."""
    detail = len(runs) <= DETAIL_RUNS
    title = "time between tokens" + ("" if detail else f" (per-request curves shown for up to {DETAIL_RUNS} runs)")
    fig, axes = _cdf_axes(title, "time between tokens (ms)")
    xs, kinds = [], set()
    for i, run in enumerate(runs):
        style, points = run_style(i), _tbt_points(run)
        for n, (kind, x, y) in enumerate(_tbt_curves(run, detail)):
            for ax in axes:
                label = _run_label(run.label, points, "ms") if n == 0 and ax is axes[0] else None
                kw = {**style, **TBT_CURVES[kind], "label": label}
                if y is None:
                    _cdf(ax, x, **kw)
                else:
                    ax.plot(x, y, **kw)
            xs.append(x)
            kinds.add(kind)
        _mark_percentiles(axes, points, style["color"])
    set_scale(axes[0], np.concatenate(xs) if xs else np.empty(0))
    _legends(axes, [Line2D([], [], color="gray", label=k, **kw) for k, kw in TBT_CURVES.items() if k in kinds])
    return fig


def _binned(x: np.ndarray, y: np.ndarray, nbins: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, median, P99) of y over equal-width bins of x (empty bins dropped); about 20 points a bin."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    nbins = nbins or int(np.clip(x.size // 20, 5, 60))
    edges = np.linspace(x.min(), x.max() + 1e-9, nbins + 1)
    idx = np.clip(np.digitize(x, edges) - 1, 0, nbins - 1)
    s = pd.Series(y).groupby(idx)
    centres = (edges[:-1] + edges[1:]) / 2
    keys = np.array(sorted(s.groups))
    return centres[keys], s.median().to_numpy(), s.quantile(0.99).to_numpy()


def latency_over_time_figure(run: Run) -> plt.Figure:
    """TTFT and per-request max token gap (ms) against arrival time: points, binned median and P99."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    r = run.requests
    t = r["arrival_time"].to_numpy(float)
    for ax, col, label in ((axes[0], "ttft", "TTFT (ms)"), (axes[1], "tbt_max", "max token gap (ms)")):
        y = r[col].to_numpy(float) * 1e3
        ax.scatter(t, y, s=4, alpha=0.25, color="gray", label="requests", rasterized=True)
        c, med, p99 = _binned(t, y)
        ax.plot(c, med, color="C0", label="median")
        ax.plot(c, p99, color="C3", label="P99")
        ax.set(ylabel=label)
        set_scale(ax, y, axis="y")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[1].set_xlabel("arrival time (s)")
    axes[0].set_title(f"latency over time: {_title(run)}", fontsize=10)
    return fig


def batch_composition_figure(run: Run, nbins: int = 80) -> plt.Figure:
    """Mean prefill and decode tokens per iteration (stacked) and mean batch size, in time bins (stage 0, all replicas)."""
    b = run.batches[run.batches["stage"] == 0]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    if len(b):
        t = b["start"].to_numpy(float)
        edges = np.linspace(t.min(), t.max() + 1e-9, nbins + 1)
        idx = np.clip(np.digitize(t, edges) - 1, 0, nbins - 1)
        g = b.assign(_bin=idx).groupby("_bin")[["num_prefill_tokens", "num_decode_tokens", "batch_size"]].mean()
        g = g.reindex(range(nbins))
        centres = (edges[:-1] + edges[1:]) / 2
        pre, dec = g["num_prefill_tokens"].fillna(0).to_numpy(), g["num_decode_tokens"].fillna(0).to_numpy()
        ax.stackplot(centres, dec, pre, labels=["decode tokens", "prefill tokens"],
                     colors=[KIND_COLORS["decode"], KIND_COLORS["prefill"]], alpha=0.8, step="mid")
        ax2 = ax.twinx()
        ax2.plot(centres, g["batch_size"].to_numpy(), color="k", lw=1, label="batch size (requests)")
        ax2.set_ylabel("mean batch size (requests)")
        ax2.legend(loc="upper right", fontsize=8)
    bs = run.summary.get("batches", {})
    ax.set(xlabel="time (s)", ylabel="mean tokens per iteration",
           title=f"batch composition: {bs.get('prefill_only', 0)} prefill-only, {bs.get('decode_only', 0)} decode-only, "
                 f"{bs.get('mixed', 0)} mixed iterations")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def kv_cache_figure(run: Run, nbins: int = 200) -> plt.Figure:
    """KV-cache utilisation (used blocks / capacity) over time per replica: bin mean, with the bin max shaded."""
    b = run.batches[run.batches["stage"] == 0]
    blocks = run.summary.get("kv_cache", {}).get("blocks_per_replica") or max(int(b["kv_blocks_used"].max()), 1)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    reps = sorted(b["replica"].unique().tolist())
    for i, rep in enumerate(reps[:8]):
        rb = b[b["replica"] == rep]
        t = rb["start"].to_numpy(float)
        u = rb["kv_blocks_used"].to_numpy(float) / blocks
        if t.size > nbins:
            edges = np.linspace(t.min(), t.max() + 1e-9, nbins + 1)
            idx = np.clip(np.digitize(t, edges) - 1, 0, nbins - 1)
            s = pd.Series(u).groupby(idx)
            c = ((edges[:-1] + edges[1:]) / 2)[np.array(sorted(s.groups))]
            ax.plot(c, s.mean().to_numpy(), color=f"C{i}", label=f"replica {rep}")
            ax.fill_between(c, s.mean().to_numpy(), s.max().to_numpy(), color=f"C{i}", alpha=0.2)
        else:
            ax.step(t, u, where="post", color=f"C{i}", label=f"replica {rep}")
    kv = run.summary.get("kv_cache", {})
    ax.set(xlabel="time (s)", ylabel="KV blocks used / capacity", ylim=(0, 1.05),
           title=f"KV cache ({blocks} blocks/replica): mean {kv.get('mean_utilization', 0):.1%}, "
                 f"max {kv.get('max_utilization', 0):.1%}, {kv.get('preemptions', 0)} preemptions")
    ax.grid(alpha=0.3)
    if reps:
        ax.legend(fontsize=8)
    return fig


def gantt_window(batches: pd.DataFrame, num_batches: int = 40) -> tuple[float, float]:
    """A window of about ``num_batches`` micro-batches of replica 0 from the middle of the run."""
    b = batches[(batches["replica"] == batches["replica"].min()) & (batches["stage"] == 0)].sort_values("start")
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
    lengths = (gaps["end"] - gaps["start"]).to_numpy(float) * 1e3
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


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None, *, label: str | None = None) -> list[Path]:
    """Write the six PNGs of ``PLOT_FILES`` for one run folder into ``out_dir`` (default: the run folder)."""
    run = load_run(run_dir, label)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    figs = (
        cdf_figure([run], "ttft", "time to first token", f"TTFT: {_title(run)}", unit="ms"),
        tbt_figure([run]),
        latency_over_time_figure(run),
        batch_composition_figure(run),
        kv_cache_figure(run),
        stage_gantt_figure(run),
    )
    return [save_figure(fig, out / name) for fig, name in zip(figs, PLOT_FILES)]


def main(argv: list[str] | None = None) -> int:
    """`python -m sim.outputs.plots RUN_DIR`: write the plots of any run folder (simulator or engine)."""
    import argparse
    p = argparse.ArgumentParser(prog="python -m sim.outputs.plots",
                                description=f"Write the PNG plots ({', '.join(PLOT_FILES)}) of a run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with summary.json, requests.csv, batches.csv")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write (default: RUN_DIR)")
    args = p.parse_args(argv)
    for path in write_plots(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
