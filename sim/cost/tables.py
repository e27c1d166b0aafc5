"""Interpolation tables fitted to measurements: monotone piecewise-linear in 1-D, ragged 2-D grids for attention.

``Table1D`` holds an op's median time against tokens (or sequences): the medians are made
non-decreasing by isotonic regression (timing noise must not make 65 tokens cheaper than 64),
then linearly interpolated, so a measured step at a tile multiple or a linear ramp is
reproduced exactly at the grid points. ``Grid2D`` holds attention times on a ragged grid (rows
of chunk or batch size, each with its own contexts): linear along the context, and across
rows with weights shaped by the roofline (quadratic in the chunk where attention is
compute-bound). Outside a table the nearest edge's value is scaled by the roofline: the
roofline made to agree with the measurements at the grid's edge.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable

import numpy as np
from scipy.optimize import isotonic_regression


def monotone(y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in least squares (pool-adjacent-violators)."""
    y = np.asarray(y, dtype=float)
    if y.size < 2 or bool(np.all(np.diff(y) >= 0)):
        return y.copy()
    return np.asarray(isotonic_regression(y, weights=weights, increasing=True).x, dtype=float)


class Table1D:
    """Monotone piecewise-linear y(x) through measured points; ``x`` sorted and distinct after averaging."""

    def __init__(self, x: np.ndarray | list[float], y: np.ndarray | list[float], *,
                 enforce_monotone: bool = True) -> None:
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        if x.size == 0 or x.shape != y.shape:
            raise ValueError(f"a table needs matching, non-empty x and y (got {x.size} and {y.size} values)")
        xs, inv, counts = np.unique(x, return_inverse=True, return_counts=True)
        ys = np.bincount(inv, weights=y) / counts
        self.x = xs
        self.y_measured = ys
        self.y = monotone(ys, counts.astype(float)) if enforce_monotone else ys
        self.lo = float(xs[0])
        self.hi = float(xs[-1])
        self._xl = xs.tolist()
        self._yl = self.y.tolist()

    def __len__(self) -> int:
        return len(self._xl)

    def contains(self, x: float) -> bool:
        return self.lo <= x <= self.hi

    def clamp(self, x: float) -> float:
        """The nearest grid edge for ``x`` outside the table (``x`` itself inside)."""
        return self.lo if x < self.lo else min(x, self.hi)

    def __call__(self, x: float) -> float:
        """Interpolated value at ``x`` (held constant beyond the edges)."""
        xl, yl = self._xl, self._yl
        i = bisect.bisect_left(xl, x)
        if i < len(xl) and xl[i] == x:
            return yl[i]
        if i == 0:
            return yl[0]
        if i == len(xl):
            return yl[-1]
        x0, x1 = xl[i - 1], xl[i]
        w = (x - x0) / (x1 - x0)
        return yl[i - 1] + w * (yl[i] - yl[i - 1])

    def evaluate(self, x: np.ndarray) -> np.ndarray:
        """Vectorised ``__call__``."""
        return np.interp(np.asarray(x, dtype=float), self.x, self.y)


class Grid2D:
    """Time t(u, v) on a ragged rectilinear grid: rows of fixed ``u``, each a monotone table along ``v``.

    Between rows the blend weight follows ``shape`` (the op's roofline), so growth the roofline
    knows about (a chunk's quadratic attention cost) is not flattened to a straight line; where
    the shape does not change between two rows the weight is linear in ``u``. Outside a row's
    ``v`` range, or beyond the first or last row, the value is the nearest edge's, scaled by
    ``shape``: the roofline scaled to agree with the grid at its edge. ``enforce_monotone=False`` keeps
    the measured values exactly (published tables one does not smooth).
    """

    def __init__(self, u: np.ndarray | list[float], v: np.ndarray | list[float], t: np.ndarray | list[float],
                 shape: Callable[[float, float], float], *, enforce_monotone: bool = True) -> None:
        u = np.asarray(u, dtype=float)
        v = np.asarray(v, dtype=float)
        t = np.asarray(t, dtype=float)
        if u.size == 0 or not (u.shape == v.shape == t.shape):
            raise ValueError("a 2-D table needs matching, non-empty u, v and t")
        self.shape = shape
        self.rows_u: list[float] = []
        self.rows: list[Table1D] = []
        for uu in np.unique(u):
            sel = u == uu
            self.rows_u.append(float(uu))
            self.rows.append(Table1D(v[sel], t[sel], enforce_monotone=enforce_monotone))

    def contains(self, u: float, v: float) -> bool:
        """Whether (u, v) lies inside the measured region (between rows, inside both rows' v ranges)."""
        ru = self.rows_u
        if u < ru[0] or u > ru[-1]:
            return False
        i = bisect.bisect_left(ru, u)
        if ru[i] == u:
            return self.rows[i].contains(v)
        return self.rows[i - 1].contains(v) and self.rows[i].contains(v)

    def _row(self, i: int, v: float) -> float:
        tab = self.rows[i]
        if tab.lo <= v <= tab.hi:
            return tab(v)
        e = tab.clamp(v)
        u = self.rows_u[i]
        return tab(e) * self.shape(u, v) / self.shape(u, e)

    @property
    def min_time(self) -> float:
        """The smallest fitted time in the grid (a call's fixed cost)."""
        return min(float(r.y.min()) for r in self.rows)

    def __call__(self, u: float, v: float) -> float:
        ru = self.rows_u
        i = bisect.bisect_left(ru, u)
        if i < len(ru) and ru[i] == u:
            return self._row(i, v)
        if i == 0 or i == len(ru):
            j = 0 if i == 0 else len(ru) - 1
            return self._row(j, v) * self.shape(u, v) / self.shape(ru[j], v)
        u0, u1 = ru[i - 1], ru[i]
        s0, s1 = self.shape(u0, v), self.shape(u1, v)
        if abs(s1 - s0) > 1e-9 * max(abs(s0), abs(s1)):
            w = (self.shape(u, v) - s0) / (s1 - s0)
            w = 0.0 if w < 0.0 else min(w, 1.0)
        else:
            w = (u - u0) / (u1 - u0)
        a, b = self._row(i - 1, v), self._row(i, v)
        return a + w * (b - a)


def fit_nonnegative(features: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Coefficients c >= 0 minimising sum(((features @ c - target) / scale) ** 2) (scipy's NNLS).

    With ``scale`` the measured whole it is a relative least-squares fit: a 20 us overhead on a
    100 us layer weighs as much as 2 ms on a 10 ms one. Columns that are all zero get 0.
    """
    from scipy.optimize import nnls

    a = np.asarray(features, dtype=float)
    y = np.asarray(target, dtype=float)
    w = 1.0 / np.asarray(scale, dtype=float)
    norms = np.abs(a).max(axis=0)
    norms[norms == 0] = 1.0
    coef, _ = nnls((a / norms) * w[:, None], y * w)
    return coef / norms
