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
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from sim.cost.kernels.database import TableRef, pick_kernel
from sim.cost.tables import Grid2D, Table1D

MS = 1e-3  # the tables' latency unit
PLAN_LIMIT = 4096  # decode batch sizes whose pricing is kept (bounded memory; a run sees a few hundred at most)
CURVE_MEMO = 65_536  # prices a curve keeps (token counts, message sizes); a few MiB per curve at most
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
        self._memo: dict[float, tuple[float, str]] = {}  # x -> price: token counts recur (bounded, CURVE_MEMO)

    def __call__(self, x: float) -> tuple[float, str]:
        """(seconds, source) at ``x``, memoised."""
        hit = self._memo.get(x)
        if hit is None:
            hit = self.price(x)
            if len(self._memo) >= CURVE_MEMO:
                self._memo.clear()
            self._memo[x] = hit
        return hit

    def price(self, x: float) -> tuple[float, str]:
        """(seconds, source) at ``x``, computed."""
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

    def __init__(self, rows: pd.DataFrame, fold: int, ref: TableRef, roofline: Any) -> None:
        """``roofline``: the ``RooflineCostModel`` whose decode attention shapes the grid (``decode_shape``)."""
        rows, kernel = pick_kernel(rows)
        rows = rows[rows["isl"] == 1] if "isl" in rows.columns else rows
        self.fold = fold
        shape = decode_shape(roofline, fold)
        # the table's step is the keys already cached; our context counts the new token's key too
        self.grid = Grid2D(rows["batch_size"].to_numpy(dtype=float), rows["step"].to_numpy(dtype=float) + 1.0,
                           rows["latency"].to_numpy(dtype=float) * MS, shape, enforce_monotone=False)
        folded = f", {fold} KV groups folded into the batch" if fold > 1 else ""
        self.source = f"kernels:{ref.describe()} [{kernel}, mean context{folded}]"
        self._rows: dict[int, tuple] = {}  # num_decodes -> its rows in the grid (a few dozen batch sizes recur)
        self._plans: dict[int, Callable] = {}  # num_decodes -> its prices at mean contexts (``_plan``)
        self._arrays: dict[int, tuple] = {}  # row -> its arrays for ``run_array`` (``_row_arrays``)

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

    def seconds(self, num_decodes: int, total_context: int) -> float:
        """Seconds of ``num_decodes`` decodes reading ``total_context`` keys in all (at the mean context)."""
        return (self._plans.get(num_decodes) or self._plan(num_decodes))((total_context / num_decodes,))[0]

    def run(self, num_decodes: int, contexts: range) -> list[float]:
        """``seconds(num_decodes, c)`` for each total context ``c`` of ``contexts`` (a decode stretch's steps)."""
        return (self._plans.get(num_decodes) or self._plan(num_decodes))([c / num_decodes for c in contexts])

    def run_array(self, num_decodes: int, contexts: np.ndarray) -> np.ndarray:
        """``run`` over an integer array in NumPy: the same operations element by element (IEEE arithmetic rounds
        each alike; tests compare), for long stretches where one call per step would cost more."""
        return self.run_many([num_decodes], contexts, [len(contexts)])

    def run_many(self, ns: list[int], contexts: np.ndarray, counts: list[int]) -> np.ndarray:
        """``run_array`` of several runs in one pass: ``counts[r]`` total contexts of ``contexts`` with ``ns[r]``
        decodes each, run after run (a stretch's runs of steps, one per set of requests; the same operations element
        by element, each run's rows and blend picked per element)."""
        rows = [self._rows.get(n) or self._rows_of(n) for n in ns]
        ru = np.asarray(self.grid.rows_u, dtype=float)
        kind = np.repeat(np.array([r[0] for r in rows], dtype=np.int64), counts)
        i = np.repeat(np.array([r[1] for r in rows], dtype=np.int64), counts)
        j = np.repeat(np.array([r[2] if r[0] == 2 else r[1] for r in rows], dtype=np.int64), counts)
        u = np.repeat(np.array([r[3] for r in rows], dtype=float), counts)
        v = contexts / np.repeat(np.array(ns, dtype=np.int64), counts)
        s_i, s_u = self._shape_each(ru[i], v), self._shape_each(u, v)
        out = self._rows_each(i, v, s_i)  # kind 0: row i's price
        one = (kind == 1).nonzero()[0]  # beyond the grid's edge row: scaled by the shape
        if len(one):
            out[one] = out[one] * s_u[one] / s_i[one]
        two = (kind == 2).nonzero()[0]  # between rows i and j: blended by the shape
        if len(two):
            jj, vv, s0, su = j[two], v[two], s_i[two], s_u[two]
            u0, u1 = ru[i[two]], ru[jj]
            s1 = self._shape_each(u1, vv)
            d = s1 - s0
            w = np.divide(su - s0, d, out=np.zeros_like(d), where=d != 0.0)
            w = np.where(w < 0.0, 0.0, np.minimum(w, 1.0))
            w = np.where(np.abs(d) > 1e-9 * np.maximum(np.abs(s0), np.abs(s1)), w, (u[two] - u0) / (u1 - u0))
            a = out[two]
            out[two] = a + w * (self._rows_each(jj, vv, s1) - a)
        return out

    def _shape_each(self, b: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``decode_shape(b[k], v[k])`` over arrays of batch sizes (> 0) and mean contexts, its arithmetic element by
        element."""
        fold, pf, bn, bk, fr, br, kl = self.grid.shape.constants
        nd = b / fold
        tc = nd * v
        return np.maximum((bn * nd + bk * (tc - nd)) / br, pf * tc / fr) + kl

    def _rows_each(self, rows: np.ndarray, v: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``_row_array`` with a grid row per element (``s``: each element's shape at its row's batch size)."""
        first = int(rows[0])
        if not (rows != first).any():
            return self._row_array(first, v, s)
        out = np.empty_like(v)
        for r in np.unique(rows).tolist():
            at = (rows == r).nonzero()[0]
            out[at] = self._row_array(r, v[at], s[at])
        return out

    def _row_array(self, i: int, v: np.ndarray, s_i: np.ndarray) -> np.ndarray:
        """``Grid2D._row(i, v)`` over an array: ``Table1D``'s interpolation inside the row, the edge's measured time
        scaled by the shape outside it (``s_i``: the shape at this row's batch size over v)."""
        x, y, dx, dy, lo, hi, s_lo, s_hi = self._arrays.get(i) or self._row_arrays(i)
        k = np.minimum(np.searchsorted(x, v), len(x) - 1)
        km = np.maximum(k - 1, 0)  # (k = 0 only at the first measured point, or below the row)
        out = np.where(x[k] == v, y[k], y[km] + (v - x[km]) / dx[km] * dy[km])
        below, above = v < lo, v > hi
        if below.any() or above.any():
            out = np.where(below, y[0] * s_i / s_lo, np.where(above, y[-1] * s_i / s_hi, out))
        return out

    def _row_arrays(self, i: int) -> tuple:
        """Row i's measured points, their steps (x[k+1] - x[k], y[k+1] - y[k]: the floats ``Table1D`` computes),
        range and edge shapes, once."""
        tab, shape, ui = self.grid.rows[i], self.grid.shape, self.grid.rows_u[i]
        dx, dy = (np.diff(tab.x), np.diff(tab.y)) if len(tab.x) > 1 else (np.ones(1), np.zeros(1))
        self._arrays[i] = hit = (tab.x, tab.y, dx, dy, tab.lo, tab.hi, shape(ui, tab.lo), shape(ui, tab.hi))
        return hit

    def _plan(self, num_decodes: int) -> Callable[[Iterable[float]], list[float]]:
        """The grid's values at mean contexts for one batch size: ``Grid2D.__call__``'s arithmetic step for step (the
        same floats; tests compare), its row search, rows and blend constants bound once per batch size."""
        kind, i, j, u = self._rows.get(num_decodes) or self._rows_of(num_decodes)
        grid = self.grid
        shape, ru, row_i = grid.shape, grid.rows_u, self._row(i)
        if kind == 0:
            def plan(vs: Iterable[float]) -> list[float]:
                return [row_i(v) for v in vs]
        elif kind == 1:
            ui = ru[i]

            def plan(vs: Iterable[float]) -> list[float]:
                return [row_i(v) * shape(u, v) / shape(ui, v) for v in vs]
        else:  # between rows: the three roofline shapes and both rows inline (``decode_shape``'s and ``_row``'s
            # arithmetic, a row's edge scaled by the shape at its batch size, s0 or s1), b / fold bound once;
            # conditional expressions for max, min and abs (the same values here, without a call each)
            u0, u1 = ru[i], ru[j]
            fold, pf, bn, bk, fr, br, kl = shape.constants
            n0, n1, nu = u0 / fold, u1 / fold, u / fold
            c0, c1, cu = bn * n0, bn * n1, bn * nu
            xi, yi, dxi, dyi, loi, hii, yloi, slo_i, yhii, shi_i = self._row_steps(i)
            xj, yj, dxj, dyj, loj, hij, yloj, slo_j, yhij, shi_j = self._row_steps(j)
            left = bisect.bisect_left

            def plan(vs: Iterable[float]) -> list[float]:
                out = []
                for v in vs:
                    t = n0 * v
                    s0 = (c0 + bk * (t - n0)) / br
                    t = pf * t / fr
                    s0 = (t if t > s0 else s0) + kl
                    t = n1 * v
                    s1 = (c1 + bk * (t - n1)) / br
                    t = pf * t / fr
                    s1 = (t if t > s1 else s1) + kl
                    d = s1 - s0
                    if (d if d >= 0.0 else -d) > 1e-9 * (s0 if s0 > s1 else s1):  # (shapes are positive)
                        t = nu * v
                        w = (cu + bk * (t - nu)) / br
                        t = pf * t / fr
                        w = ((t if t > w else w) + kl - s0) / d
                        w = 0.0 if w < 0.0 else (w if w < 1.0 else 1.0)
                    else:
                        w = (u - u0) / (u1 - u0)
                    if loi <= v <= hii:
                        k = left(xi, v)
                        a = yi[k] if xi[k] == v else yi[k - 1] + (v - xi[k - 1]) / dxi[k] * dyi[k]
                    else:
                        a = yloi * s0 / slo_i if v < loi else yhii * s0 / shi_i
                    if loj <= v <= hij:
                        k = left(xj, v)
                        b = yj[k] if xj[k] == v else yj[k - 1] + (v - xj[k - 1]) / dxj[k] * dyj[k]
                    else:
                        b = yloj * s1 / slo_j if v < loj else yhij * s1 / shi_j
                    out.append(a + w * (b - a))
                return out
        if len(self._plans) >= PLAN_LIMIT:
            self._plans.clear()
        self._plans[num_decodes] = plan
        return plan

    def _row_steps(self, i: int) -> tuple:
        """Row i's constants for ``_row``'s arithmetic inline: its points (lists), each point's step from the one
        before (x[k] - x[k-1], y[k] - y[k-1]: the floats ``_row`` computes), its range, and its edges' times and
        shapes."""
        tab, shape, ui = self.grid.rows[i], self.grid.shape, self.grid.rows_u[i]
        xl, yl = tab._xl, tab._yl
        dx = [1.0] + [xl[k] - xl[k - 1] for k in range(1, len(xl))]
        dy = [0.0] + [yl[k] - yl[k - 1] for k in range(1, len(yl))]
        return xl, yl, dx, dy, tab.lo, tab.hi, yl[0], shape(ui, tab.lo), yl[-1], shape(ui, tab.hi)

    def _row(self, i: int) -> Callable[[float], float]:
        """``Grid2D._row(i, v)`` against v (the same floats): ``Table1D``'s interpolation inline inside the row's
        measured range; outside it the edge's measured time scaled by the shape, the edge's shape computed once."""
        tab, shape, ui = self.grid.rows[i], self.grid.shape, self.grid.rows_u[i]
        xl, yl, lo, hi = tab._xl, tab._yl, tab.lo, tab.hi
        y_lo, y_hi, s_lo, s_hi = yl[0], yl[-1], shape(ui, lo), shape(ui, hi)  # tab(lo), tab(hi): measured points

        def row(v: float) -> float:
            if lo <= v <= hi:
                k = bisect.bisect_left(xl, v)  # lo <= v <= hi: 0 < k < len(xl) unless v is a measured point
                x1 = xl[k]
                if x1 == v:
                    return yl[k]
                x0, y0 = xl[k - 1], yl[k - 1]
                return y0 + (v - x0) / (x1 - x0) * (yl[k] - y0)
            return y_lo * shape(ui, v) / s_lo if v < lo else y_hi * shape(ui, v) / s_hi
        return row

    def __call__(self, num_decodes: int, total_context: int) -> tuple[float, str]:
        """(seconds, source): ``seconds`` and whether the point lies inside the measured rows."""
        kind, i, j, _ = self._rows.get(num_decodes) or self._rows_of(num_decodes)
        v = total_context / num_decodes
        rows = self.grid.rows  # (beyond the first or last row, kind 1, is outside)
        inside = kind != 1 and rows[i].contains(v) and rows[j].contains(v)
        t = (self._plans.get(num_decodes) or self._plan(num_decodes))((v,))[0]
        return t, self.source if inside else self.source + EDGE


def decode_shape(rl: Any, fold: int) -> Callable[[float, float], float]:
    """``rl.attn_decode_cost(b / fold, b / fold * v)[0]`` as one function: the roofline of ``b`` decodes with ``v``
    keys each (b / fold requests when KV groups are folded into the batch), with the roofline's arithmetic in its
    order (the same floats; tests compare), without its three calls: a decode price between two measured rows
    evaluates it three times. ``rl``: a ``RooflineCostModel``."""
    pf, bn, bk = rl._attn_flops_per_pair, rl._attn_bytes_per_new, rl._attn_bytes_per_key
    fr, br, kl = rl._flop_rate, rl._byte_rate, rl.kernel_launch_overhead

    def shape(b: float, v: float) -> float:
        nd = b / fold
        if nd <= 0:
            return 0.0
        tc = nd * v
        return max((bn * nd + bk * (tc - nd)) / br, pf * tc / fr) + kl
    shape.constants = (fold, pf, bn, bk, fr, br, kl)  # (DecodeAttention inlines it)
    return shape


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
