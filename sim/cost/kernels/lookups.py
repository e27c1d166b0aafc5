"""Prices of one op shape from a measured kernel table: exact at measured points, piecewise linear between them.

Between two measured points a price lies between their two values (linear interpolation), so
it is monotone wherever the measurements are; measured values are never smoothed. Outside a
table's range the nearest edge's value is scaled by the roofline (the roofline made to agree
with the measurement at the edge), and the price says so (source suffix ``+edge``).

- ``GemmCurve``: time against rows m for one weight shape (n, k); a shape between the measured
  n and k values is interpolated bilinearly in n and k (GEMM time is close to affine in each).
- ``PrefillAttention``: a chunk of c new tokens over p cached ones is priced as the full prefill
  with the same number of causal query-key pairs (length s with s(s+1)/2 = cp + c(c+1)/2): the
  table measures prefills without cached context; exact for p = 0 at measured lengths, and
  monotone in c and in p.
- ``DecodeAttention``: a decode batch is priced at its mean keys per request (the table's
  ``step`` is that context less the new token). Heads beyond the table's largest KV-head count
  are folded into the batch (b requests x g KV groups as b*g requests of one group: the same
  KV reads and FLOPs).
- ``AllReduceCurve``: time against message bytes for one GPU count and backend.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import numpy as np
import pandas as pd

from sim.cost.kernels.database import TableRef, pick_kernel
from sim.cost.tables import Grid2D, Table1D

MS = 1e-3  # the tables' latency unit
EDGE = "+edge"


def _bracket(grid: list[int], x: int) -> tuple[int, int, float]:
    """Neighbours (lo, hi) of ``x`` in sorted ``grid`` and the weight of hi (x clamped to the grid)."""
    if x <= grid[0]:
        return grid[0], grid[0], 0.0
    if x >= grid[-1]:
        return grid[-1], grid[-1], 0.0
    i = bisect.bisect_left(grid, x)
    if grid[i] == x:
        return x, x, 0.0
    lo, hi = grid[i - 1], grid[i]
    return lo, hi, (x - lo) / (hi - lo)


class Curve:
    """Exact measured points y(x) with linear interpolation, and roofline-scaled extrapolation past the edges."""

    def __init__(self, x: np.ndarray, y: np.ndarray, roofline: Callable[[float], float], source: str) -> None:
        self.table = Table1D(x, y, enforce_monotone=False)
        self.roofline = roofline
        self.source = source
        lo, hi = self.table.lo, self.table.hi
        self._scale_lo = self.table(lo) / roofline(lo)
        self._scale_hi = self.table(hi) / roofline(hi)

    def __call__(self, x: float) -> tuple[float, str]:
        """(seconds, source) at ``x``."""
        tab = self.table
        if tab.lo <= x <= tab.hi:
            return tab(x), self.source
        return self.roofline(x) * (self._scale_lo if x < tab.lo else self._scale_hi), self.source + EDGE


def gemm_curve(rows: pd.DataFrame, ref: TableRef, n: int, k: int,
               roofline: Callable[[float, float, float], float]) -> Curve:
    """Time of an [m, k] x [k, n] bf16 GEMM against m; ``roofline(m, n, k)`` extrapolates."""
    rows, kernel = pick_kernel(rows)
    ns, ks = sorted(rows["n"].unique().tolist()), sorted(rows["k"].unique().tolist())
    n0, n1, wn = _bracket(ns, n)
    k0, k1, wk = _bracket(ks, k)
    outside = not (ns[0] <= n <= ns[-1] and ks[0] <= k <= ks[-1])
    by = rows.set_index(["n", "k"])
    ms: np.ndarray | None = None
    total = None
    for nn, kk, w in ((n0, k0, (1 - wn) * (1 - wk)), (n1, k0, wn * (1 - wk)), (n0, k1, (1 - wn) * wk),
                      (n1, k1, wn * wk)):
        if w == 0.0:
            continue
        part = by.loc[(nn, kk)].sort_values("m")
        t = part["latency"].to_numpy(dtype=float) * MS
        m = part["m"].to_numpy(dtype=float)
        # beyond the measured n or k range the clamped shape's times are scaled by the roofline ratio
        scale = np.array([roofline(x, n, k) / roofline(x, nn, kk) for x in m]) if outside else 1.0
        if ms is None:
            ms, total = m, np.zeros_like(t)
        elif not np.array_equal(ms, m):
            raise ValueError(f"{ref.path}: GEMM rows of n={nn}, k={kk} measure other m values than their neighbours")
        total = total + w * t * scale
    on_grid = n in ns and k in ks
    where = "" if on_grid else f", interpolated in n,k from n {n0}..{n1}, k {k0}..{k1}"
    return Curve(ms, total, lambda x: roofline(x, n, k), f"kernels:{ref.describe()} [{kernel}{where}]")


def equivalent_prefill(chunk: int, cached: int) -> float:
    """The prefill length with as many causal query-key pairs as ``chunk`` new tokens over ``cached`` ones."""
    pairs = chunk * cached + chunk * (chunk + 1) / 2
    return (math.sqrt(1.0 + 8.0 * pairs) - 1.0) / 2.0


def head_rows(table: pd.DataFrame, q_heads: int, kv_heads: int, head_dim: int, kv_dtype: str = "bfloat16"
              ) -> tuple[pd.DataFrame, int]:
    """Rows of an attention table for this head shape (plain attention, no sliding window), and the fold factor:
    1, or g when KV heads beyond the table's are folded into the batch (``kv_heads / g`` heads per request)."""
    t = table[(table["kv_cache_dtype"] == kv_dtype) & (table["head_dim"] == head_dim)]
    if "window_size" in t.columns:
        t = t[t["window_size"] == 0]
    for fold in range(1, kv_heads + 1):
        if kv_heads % fold or q_heads % fold:
            continue
        sel = t[(t["num_heads"] == q_heads // fold) & (t["num_key_value_heads"] == kv_heads // fold)]
        if len(sel):
            return sel, fold
    return t.iloc[0:0], 1


class PrefillAttention:
    """One layer's prefill attention of one chunk over cached context, from the context-attention table."""

    def __init__(self, rows: pd.DataFrame, ref: TableRef, roofline: Callable[[float], float]) -> None:
        one = rows[rows["batch_size"] == 1]
        one, kernel = pick_kernel(one)
        one = one.sort_values("isl")
        self.curve = Curve(one["isl"].to_numpy(dtype=float), one["latency"].to_numpy(dtype=float) * MS, roofline,
                           f"kernels:{ref.describe()} [{kernel}, equal-pairs prefill]")
        self.floor = float(self.curve.table.y.min())

    def __call__(self, chunk: int, cached: int) -> tuple[float, str]:
        return self.curve(equivalent_prefill(chunk, cached))


class DecodeAttention:
    """One layer's decode attention of a batch, from the generation-attention table (see the module docstring)."""

    def __init__(self, rows: pd.DataFrame, fold: int, ref: TableRef, shape: Callable[[float, float], float]) -> None:
        rows, kernel = pick_kernel(rows)
        rows = rows[rows["isl"] == 1] if "isl" in rows.columns else rows
        self.fold = fold
        # the table's step is the keys already cached; our context counts the new token's key too
        self.grid = Grid2D(rows["batch_size"].to_numpy(dtype=float), rows["step"].to_numpy(dtype=float) + 1.0,
                           rows["latency"].to_numpy(dtype=float) * MS, shape, enforce_monotone=False)
        folded = f", {fold} KV groups folded into the batch" if fold > 1 else ""
        self.source = f"kernels:{ref.describe()} [{kernel}, mean context{folded}]"

        self._rows: dict[int, tuple] = {}  # num_decodes -> its rows in the grid (a few dozen batch sizes recur)

    def _rows_of(self, num_decodes: int) -> tuple:
        """(kind, i, j, u) of a batch size: on row i (kind 0), beyond the grid's edge row i (1), between rows i and
        j (2); ``Grid2D``'s own bracketing, found once per batch size instead of twice per call."""
        u = float(num_decodes * self.fold)
        ru = self.grid.rows_u
        i = bisect.bisect_left(ru, u)
        if i < len(ru) and ru[i] == u:
            hit = (0, i, i, u)
        elif i == 0 or i == len(ru):
            hit = (1, 0 if i == 0 else len(ru) - 1, 0, u)
        else:
            hit = (2, i - 1, i, u)
        self._rows[num_decodes] = hit
        return hit

    def __call__(self, num_decodes: int, total_context: int) -> tuple[float, str]:
        """(seconds, source): ``Grid2D.__call__``'s arithmetic step for step (the same floats), its row search
        memoised per batch size."""
        kind, i, j, u = self._rows.get(num_decodes) or self._rows_of(num_decodes)
        v = total_context / num_decodes
        grid = self.grid
        rows, shape = grid.rows, grid.shape
        if kind == 0:
            return grid._row(i, v), self.source if rows[i].contains(v) else self.source + EDGE
        if kind == 1:
            return grid._row(i, v) * shape(u, v) / shape(grid.rows_u[i], v), self.source + EDGE
        u0, u1 = grid.rows_u[i], grid.rows_u[j]
        s0, s1 = shape(u0, v), shape(u1, v)
        if abs(s1 - s0) > 1e-9 * max(abs(s0), abs(s1)):
            w = (shape(u, v) - s0) / (s1 - s0)
            w = 0.0 if w < 0.0 else min(w, 1.0)
        else:
            w = (u - u0) / (u1 - u0)
        a, b = grid._row(i, v), grid._row(j, v)
        inside = rows[i].contains(v) and rows[j].contains(v)
        return a + w * (b - a), self.source if inside else self.source + EDGE


def all_reduce_curve(table: pd.DataFrame, ref: TableRef, gpus: int, graphs: bool,
                     roofline: Callable[[float], float]) -> Curve | None:
    """All-reduce time against message bytes over ``gpus`` GPUs (CUDA-graph or eager backend), or None."""
    backend = "vllm_graph" if graphs else "vllm_eager"
    rows = table[(table["num_gpus"] == gpus) & (table["backend"] == backend)]
    if rows.empty:
        return None
    rows, kernel = pick_kernel(rows)
    rows = rows.sort_values("message_size")
    return Curve(rows["message_size"].to_numpy(dtype=float), rows["latency"].to_numpy(dtype=float) * MS, roofline,
                 f"kernels:{ref.describe()} [{kernel}]")
