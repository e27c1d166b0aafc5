"""PNG plots of run folders (simulator or engine): latency CDFs, latency over time, batches, KV cache, stage Gantt.

Everything is computed from the run folder (summary.json, requests.csv,
batches.csv). TBT needs every gap between consecutive tokens, which the run
folder does not keep: the TBT plot draws the all-gap CDF from summary.json's
quantile table (``latency_s.tbt_cdf``), the per-request mean gap (TPOT) and
per-request largest gap (``tbt_max``) as CDFs, and the exact P50/P90/P99.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from sim.outputs.run_folder import read_run  # noqa: E402
from sim.outputs.timeline import batch_kind  # noqa: E402

DPI = 100
KIND_COLORS = {"prefill": "tab:orange", "decode": "tab:blue", "mixed": "tab:green"}
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
    c = run.summary.get("config", {})
    return f"{run.label}: {c.get('scheduler')}, {c.get('model')} on {c.get('gpu')} (TP{c.get('tp')} PP{c.get('pp')})"


def cdf_figure(runs: Sequence[Run], column: str, xlabel: str, title: str) -> plt.Figure:
    """Overlaid CDFs of a requests.csv column (ttft, e2e, tpot, scheduling_delay, ...), one line per run."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    values = [run.requests[column].to_numpy(float) for run in runs]
    for i, (run, v) in enumerate(zip(runs, values)):
        _cdf(ax, v, label=run.label, color=f"C{i}")
    allv = np.concatenate(values) if values else np.empty(0)
    pos = allv[allv > 0]
    if pos.size and pos.max() > 100 * pos.min():  # spans orders of magnitude: log scale shows every run
        ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="fraction of requests", title=title, ylim=(0, 1.02))
    ax.grid(alpha=0.3, which="both")
    if len(runs) > 1 or runs[0].label:
        ax.legend()
    return fig


def tbt_figure(runs: Sequence[Run]) -> plt.Figure:
    """Per-request mean and max token gaps as CDFs, with the all-gap P50/P90/P99 of summary.json as markers."""
    from matplotlib.lines import Line2D
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for i, run in enumerate(runs):
        color = f"C{i}"
        _cdf(ax, run.requests["tpot"].to_numpy(float) * 1e3, color=color, label=run.label)
        _cdf(ax, run.requests["tbt_max"].to_numpy(float) * 1e3, color=color, ls="--")
        tbt = run.summary.get("latency_s", {}).get("tbt", {})
        cdf = run.summary.get("latency_s", {}).get("tbt_cdf", {})
        if cdf.get("value"):  # all gaps, from the quantile table in summary.json
            ax.plot(np.asarray(cdf["value"]) * 1e3, np.asarray(cdf["percentile"]) / 100, color=color, lw=2.2)
        pts = [(tbt.get(k), q) for k, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))]
        pts = [(v * 1e3, q) for v, q in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts), "o", color=color)
    ax.set_xscale("log")
    ax.set(xlabel="time between tokens (ms)", ylabel="fraction", title="time between tokens", ylim=(0, 1.02))
    ax.grid(alpha=0.3, which="both")
    runs_legend = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="run")
    ax.add_artist(runs_legend)
    styles = [Line2D([], [], color="gray", label="per-request mean gap (TPOT)"),
              Line2D([], [], color="gray", ls="--", label="per-request max gap"),
              Line2D([], [], color="gray", lw=2.2, label="all gaps"),
              Line2D([], [], color="gray", marker="o", ls="", label="all gaps P50/P90/P99")]
    ax.legend(handles=styles, loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8)
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
    """TTFT and per-request max token gap against arrival time: points, binned median and P99."""
    fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    r = run.requests
    t = r["arrival_time"].to_numpy(float)
    for ax, col, label in ((axes[0], "ttft", "TTFT (s)"), (axes[1], "tbt_max", "max token gap (s)")):
        y = r[col].to_numpy(float)
        ax.scatter(t, y, s=4, alpha=0.25, color="gray", label="requests", rasterized=True)
        c, med, p99 = _binned(t, y)
        ax.plot(c, med, color="C0", label="median")
        ax.plot(c, p99, color="C3", label="P99")
        ax.set(ylabel=label)
        if np.nanmax(y, initial=0) > 0 and np.nanmin(y[y > 0], initial=np.inf) * 100 < np.nanmax(y, initial=0):
            ax.set_yscale("log")
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


def stage_gantt_figure(run: Run, window: tuple[float, float] | None = None, max_replicas: int = 4) -> plt.Figure:
    """Batches on each (replica, stage) lane as bars coloured by kind; white gaps are bubbles or idle time."""
    b = run.batches
    t0, t1 = window or gantt_window(b)
    b = b[(b["end"] > t0) & (b["start"] < t1) & (b["replica"] < b["replica"].min() + max_replicas)]
    lanes = sorted({(int(r), int(s)) for r, s in zip(b["replica"], b["stage"])})
    fig, ax = plt.subplots(figsize=(9, 0.6 * max(len(lanes), 2) + 1.6))
    kinds = batch_kind(b["num_prefill_tokens"].to_numpy(), b["num_decode_tokens"].to_numpy())
    for y, (rep, st) in enumerate(lanes):
        m = ((b["replica"] == rep) & (b["stage"] == st)).to_numpy()
        for kind, color in KIND_COLORS.items():
            k = m & (kinds == kind)
            if k.any():
                spans = list(zip((b["start"][k] - t0).to_numpy() * 1e3, (b["end"][k] - b["start"][k]).to_numpy() * 1e3))
                ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=color, edgecolor="white", linewidth=0.3)
    ax.set_yticks(range(len(lanes)), [f"replica {r} stage {s}" for r, s in lanes])
    ax.invert_yaxis()
    ax.set_xlim(0, (t1 - t0) * 1e3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS.values()]
    ax.legend(handles, list(KIND_COLORS), loc="upper right", fontsize=8, ncol=3)
    pipe = run.summary.get("pipeline", {})
    ax.set(xlabel=f"time from {t0:.3f} s (ms)",
           title=f"stage timeline (gaps = bubbles/idle); mean bubble fraction {pipe.get('mean_bubble_fraction', 0):.1%}")
    return fig


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None, *, label: str | None = None) -> list[Path]:
    """Write the six PNGs of ``PLOT_FILES`` for one run folder into ``out_dir`` (default: the run folder)."""
    run = load_run(run_dir, label)
    out = Path(out_dir) if out_dir is not None else Path(run_dir)
    figs = (
        cdf_figure([run], "ttft", "time to first token (s)", f"TTFT: {_title(run)}"),
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
