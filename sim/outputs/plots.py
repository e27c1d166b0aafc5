"""PNG plots of run folders (simulator or engine): latency CDFs, latency over time, batches, KV cache, stage Gantt.

Everything is computed from the run folder (summary.json, requests.csv,
batches.csv). TBT needs every gap between consecutive tokens, which the run
folder does not keep: the TBT plot draws the all-gap CDF from summary.json's
quantile table (``latency_s.tbt_cdf``), the per-request mean gap (TPOT) and
per-request largest gap (``tbt_max``) as CDFs (for up to ``DETAIL_RUNS`` runs),
and the exact P50/P90/P99. CDFs (TTFT and TBT in ms) have a tail panel (0.9 to 1)
under the whole curve, P50/P90/P99 markers, one colour and line style per run
(``run_style``), and plain tick labels on log axes. With PP=1 the Gantt chart has
a lane per replica with its host-overhead and idle gaps marked, and their lengths below.

Runs with prefix caching (``cached_tokens`` in requests.csv, ``kv_cached_free_blocks`` in
batches.csv, a ``prefix_cache`` section in summary.json) get a stacked KV-cache plot (in use,
cached free, free; one panel per replica) and ``prefix_cache.png``: the hit rate of the requests
arriving in each time bin, and the hit rate per replica.

The shared helpers live in ``sim.outputs.plot_base``, the prefix-cache plots in ``sim.outputs.cache_plots``
and the stage Gantt chart in ``sim.outputs.gantt``; this module imports them back, so every name it used
to define can still be imported from here."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from sim.cli.errors import entry_point
from sim.outputs.cache_plots import (
    KV_PANELS,
    KV_STACK,
    PREFIX_CACHE_PLOT,
    has_prefix_cache,
    hit_rate_over_time,
    kv_prefix_cache_figure,
    prefix_cache_figure,
)
from sim.outputs.gantt import GAP_COLOR, batch_gaps, gantt_window, single_stage, stage_gantt_figure
from sim.outputs.plot_base import (
    DPI,
    KIND_COLORS,
    LINESTYLES,
    LOG_SPAN,
    Run,
    _binned,
    axis_label,
    load_run,
    plain_number,
    run_style,
    save_figure,
    set_scale,
)

__all__ = [
    "DETAIL_RUNS", "DPI", "GAP_COLOR", "KIND_COLORS", "KV_PANELS", "KV_STACK", "LINESTYLES", "LOG_SPAN",
    "PERCENTILE_MARKERS", "PLOT_FILES", "PREFIX_CACHE_PLOT", "TBT_CURVES", "UNIT_SCALE", "Run", "axis_label",
    "batch_composition_figure", "batch_gaps", "cdf_figure", "gantt_window", "has_prefix_cache", "hit_rate_over_time",
    "kv_cache_figure", "kv_prefix_cache_figure", "latency_over_time_figure", "load_run", "main", "plain_number", "plt",
    "prefix_cache_figure", "run_style", "save_figure", "set_scale", "single_stage", "stage_gantt_figure", "tbt_figure",
    "write_plots",
]

PERCENTILE_MARKERS = {50: "o", 90: "s", 99: "D"}
UNIT_SCALE = {"s": 1.0, "ms": 1e3}
DETAIL_RUNS = 3  # the TBT plot adds per-request TPOT and max-gap curves for at most this many runs
TBT_CURVES = {"all gaps": {"lw": 2.2}, "per-request mean gap (TPOT)": {"lw": 1.0},
              "per-request max gap": {"lw": 1.0, "ls": "--"}}  # kind: line style overrides
PLOT_FILES = ("ttft_cdf.png", "tbt_cdf.png", "latency_over_time.png", "batch_composition.png", "kv_cache.png",
              "stage_gantt.png")


def _cdf(ax: plt.Axes, values: np.ndarray, **kw) -> None:
    """Draw the empirical CDF of ``values`` (NaNs dropped) as a step line."""
    x = np.sort(np.asarray(values, dtype=float)[~np.isnan(np.asarray(values, dtype=float))])
    if x.size:
        ax.step(x, np.arange(1, x.size + 1) / x.size, where="post", **kw)


def _title(run: Run) -> str:
    """Run label, scheduler, model, GPU and parallelism, for a plot title."""
    c = run.summary.get("config", {})
    what = f"{c.get('scheduler')}, {c.get('model')} on {c.get('gpu')} (TP{c.get('tp')} PP{c.get('pp')})"
    return what if run.label == c.get("scheduler") else f"{run.label}: {what}"  # not "vllm: vllm, ..."


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
    if "kv_cached_free_blocks" in run.batches.columns:
        return kv_prefix_cache_figure(run, nbins)
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


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None, *, label: str | None = None) -> list[Path]:
    """Write the PNGs of ``PLOT_FILES`` (and PREFIX_CACHE_PLOT with prefix caching) into ``out_dir`` (default: run)."""
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
    paths = [save_figure(fig, out / name) for fig, name in zip(figs, PLOT_FILES)]
    if has_prefix_cache(run):
        paths.append(save_figure(prefix_cache_figure(run), out / PREFIX_CACHE_PLOT))
    return paths


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sim.outputs.plots RUN_DIR`: write the plots of any run folder (simulator or engine), under
    servesim's error contract (a missing or incomplete folder is one line and exit status 2)."""
    from sim.cli.errors import CliParser
    p = CliParser(prog="python -m sim.outputs.plots",
                  description=f"Write the PNG plots ({', '.join(PLOT_FILES)}; {PREFIX_CACHE_PLOT} "
                              "with prefix caching) of a run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with summary.json, requests.csv, batches.csv")
    p.add_argument("--out", default=None, metavar="DIR", help="where to write (default: RUN_DIR)")
    args = p.parse_args(argv)
    if args.out is not None:
        from sim.outputs.run_folder import prepare_out_dir
        prepare_out_dir(args.out)
    for path in write_plots(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
