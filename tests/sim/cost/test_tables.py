"""The fit: grids, monotone 1-D tables and 2-D attention grids recover known functions (no torch needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calibration.grid import FULL, QUICK, decode_points, plan, prefill_points, token_grid
from calibration.report import held_out_1d, held_out_2d
from sim.catalog.models import get_model
from sim.cost.profile_format import model_ops
from sim.cost.tables import Grid2D, Table1D, monotone
from sim.ops import ALL_OPS, COMMUNICATION_OPS, UNIT_TIMINGS


def test_token_grid_is_dense_at_tile_steps_and_geometric_above():
    g = token_grid(FULL)
    assert g[:6] == [1, 2, 4, 8, 16, 32]
    for k in range(64, 513, 64):  # both sides of every tile step up to dense_max
        assert k in g and k + 1 in g
    above = [x for x in g if x > 513]
    assert all(x % 64 == 0 for x in above) and above[-1] == FULL.max_tokens
    ratios = np.diff(np.log(above))
    assert np.all(ratios < math.log(1.5))  # geometric, factor sqrt(2) rounded to tiles
    assert g == sorted(set(g))


def test_attention_grids_respect_context_and_memory_limits():
    for c, p in prefill_points(FULL, 4096):
        assert c + p <= 4096
    rows = {}
    for c, p in prefill_points(FULL, 4096):
        rows.setdefault(c, []).append(p)
    assert rows[1024][0] == 0 and rows[1024][-1] == 4096 - 1024  # each row reaches the context limit
    for b, L in decode_points(FULL, 4096):
        assert b * L <= FULL.max_kv_tokens and L <= 4096


def test_plan_covers_every_op_but_communication():
    pts = plan(get_model("llama-2-7b"), [1, 2], QUICK)
    ops = {p.op for p in pts}
    # the dense model's own ops (no MoE ops) and whole layers / forwards too
    assert ops == set(model_ops(get_model("llama-2-7b"), ALL_OPS + UNIT_TIMINGS)) - set(COMMUNICATION_OPS)
    assert not ops & {"moe_router", "moe_experts"}
    assert {p.tp for p in pts if p.op in UNIT_TIMINGS} == {0}
    assert {p.tp for p in pts if p.op == "input_norm"} == {0}       # TP-independent: measured once
    assert {p.tp for p in pts if p.op == "qkv_proj"} == {1, 2}
    with pytest.raises(ValueError, match="unknown op"):
        plan(get_model("tiny"), [1], QUICK, ops=("nope",))
    with pytest.raises(ValueError, match="tp=3"):
        plan(get_model("llama-2-7b"), [3], QUICK)


@pytest.mark.parametrize("grid", [QUICK, FULL])
def test_step_at_tile_multiple_recovered(grid):
    """A GEMM-like staircase (cost per started 64-token tile): exact at grid points, within 1% between them
    over the dense range (every tile multiple and the token after it is measured)."""
    def f(t):
        return 5e-6 + 2e-6 * np.ceil(np.asarray(t) / 64)

    x = np.array(token_grid(grid), dtype=float)
    tab = Table1D(x, f(x))
    assert np.array_equal(tab.evaluate(x), f(x))
    assert all(tab(float(t)) == f(t) for t in x)
    between = np.arange(1, grid.dense_max + 1)
    err = np.abs(tab.evaluate(between) / f(between) - 1)
    assert err.max() < 0.01


def test_linear_ramp_recovered_everywhere():
    def f(t):
        return 3e-6 + 4e-9 * np.asarray(t, dtype=float)

    x = np.array(token_grid(FULL), dtype=float)
    tab = Table1D(x, f(x))
    assert np.allclose(tab.evaluate(x), f(x), rtol=0, atol=0)
    between = np.arange(1, FULL.max_tokens + 1)
    assert np.abs(tab.evaluate(between) / f(between) - 1).max() < 1e-12
    assert abs(tab(1000.5) / f(1000.5) - 1) < 1e-12


def test_monotone_fit_removes_noise_dips_and_keeps_monotone_data():
    y = np.array([1.0, 2.0, 1.5, 3.0, 2.9, 4.0])
    m = monotone(y)
    assert np.all(np.diff(m) >= 0)
    assert m[0] == 1.0 and m[-1] == 4.0
    assert m[1] == m[2] == pytest.approx(1.75)  # pooled
    mono = np.array([1.0, 1.0, 2.0, 5.0])
    assert np.array_equal(monotone(mono), mono)
    tab = Table1D([1, 2, 2, 3], [1.0, 2.0, 4.0, 5.0])  # duplicate x averaged
    assert tab(2) == 3.0 and len(tab) == 3
    with pytest.raises(ValueError):
        Table1D([], [])


def test_grid2d_bilinear_exact_for_decode_like_costs():
    """t = a + b B + c B L (fixed cost, per-sequence work, keys read): exact anywhere inside the grid."""
    def f(B, L):
        return 2e-5 + 1e-6 * B + 3e-9 * B * L

    pts = decode_points(QUICK, 4096)
    B = np.array([b for b, _ in pts], float)
    L = np.array([c for _, c in pts], float)
    g = Grid2D(B, L, f(B, L), shape=lambda b, l: 1e-6 * b + 3e-9 * b * l)
    for b, l in [(1, 16), (4, 512), (16, 1024)]:
        assert g(b, l) == pytest.approx(f(b, l), rel=1e-12)
    for b, l in [(2, 100), (10, 700), (40, 300)]:
        assert g.contains(b, l)
        assert g(b, l) == pytest.approx(f(b, l), rel=1e-9)


def test_grid2d_follows_the_shape_across_rows_and_scales_at_edges():
    """Quadratic prefill cost in the chunk: shape-weighted blending is exact where a straight line is not."""
    def shape(c, p):
        return 1e-9 * (c * p + c * c / 2) + 1e-7 * c

    def f(c, p):
        return 1.3 * shape(c, p)

    pts = prefill_points(QUICK, 1024)
    c = np.array([a for a, _ in pts], float)
    p = np.array([b for _, b in pts], float)
    g = Grid2D(c, p, f(c, p), shape)
    assert g(512, 100) == pytest.approx(f(512, 100), rel=1e-9)  # between rows 256 and 1024
    naive = f(256, 100) + (512 - 256) / (1024 - 256) * (f(1024, 100) - f(256, 100))
    assert abs(naive / f(512, 100) - 1) > 0.05  # what a linear-in-chunk blend would get wrong
    # outside: beyond the last row and past a row's context range, the shape scaled at the edge
    assert not g.contains(2048, 0)
    assert g(2048, 0) == pytest.approx(f(1024, 0) * shape(2048, 0) / shape(1024, 0), rel=1e-12)
    assert g(16, 5000) == pytest.approx(f(16, 1008) * shape(16, 5000) / shape(16, 1008), rel=1e-12)


def test_held_out_points_are_every_fifth_interior_point():
    assert held_out_1d(3) == []
    assert held_out_1d(12) == [5, 10]
    u = np.repeat([1.0, 2.0, 3.0, 4.0], 6)
    v = np.tile(np.arange(6.0), 4)
    held = held_out_2d(u, v)
    assert held and all(u[i] in (2.0, 3.0) and 0 < v[i] < 5 for i in held)
