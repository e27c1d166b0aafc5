"""What the run plots share: the Agg backend, loading a run folder, writing a figure, run styles and axes.

``matplotlib.use("Agg")`` runs on import, so any module drawing through this one needs no display.
``Run``/``load_run`` read a run folder (simulator or engine), ``save_figure`` writes a PNG, ``run_style``
gives the i-th run its colour and line style, ``set_scale``/``plain_number``/``axis_label`` make readable
axes, and ``_time_bins``/``_binned`` bin values over time."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, ScalarFormatter

from sim.outputs.run_folder import naming, read_run

matplotlib.use("Agg")  # no display: pyplot picks its backend at the first figure, so this may follow the import

DPI = 100
KIND_COLORS = {"prefill": "tab:orange", "decode": "tab:blue", "mixed": "tab:green"}
LINESTYLES = ("-", "--", "-.", ":")  # after the ten tab10 colours, runs repeat them with the next style
LOG_SPAN = 20  # a latency axis is logarithmic when its largest positive value exceeds the smallest this many times
_UNIT_SUFFIX = re.compile(r"\s*\([^()]*\)$")  # a trailing "(s)" in an axis quantity


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


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Lay out, write as PNG (parent folders created) and close ``fig``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    try:
        with naming(path):
            fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


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


def _time_bins(x: np.ndarray, nbins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(bin index of each x, bin centres) of equal-width bins over x's range; by default about 20 points a bin."""
    nbins = nbins or int(np.clip(x.size // 20, 5, 60))
    edges = np.linspace(x.min(), x.max() + 1e-9, nbins + 1)
    return np.clip(np.digitize(x, edges) - 1, 0, nbins - 1), (edges[:-1] + edges[1:]) / 2


def _binned(x: np.ndarray, y: np.ndarray, nbins: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, median, P99) of y over equal-width bins of x (empty bins dropped); about 20 points a bin."""
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    if x.size == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    idx, centres = _time_bins(x, nbins)
    s = pd.Series(y).groupby(idx)
    keys = np.array(sorted(s.groups))
    return centres[keys], s.median().to_numpy(), s.quantile(0.99).to_numpy()
