"""The kernels model's memoised and one-call prices are its plain prices, bit for bit (skipped without the kernels
extra): decode-attention plans per batch size against the grid read with the roofline's own attention, a decode
stretch priced in one call (``decode_run``) against ``stage_cost`` per step, warm caches against cold ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")
from sim.cost.kernels import database as db

try:
    db.data_dir()
except db.KernelDatabaseError:
    pytest.skip("aiconfigurator-core is not installed (pip install -e '.[kernels]')", allow_module_level=True)

from sim.batch import Batch
from sim.cost.kernels import lookups
from sim.cost.kernels.lookups import EDGE, decode_shape
from sim.cost.kernels.model import KernelCostModel
from sim.cost.kernels.run_pricing import VECTOR_STEPS
from sim.cost.roofline import RooflineCostModel
from sim.cost.tables import Grid2D

#: (model, GPU, keyword arguments): KV groups folded into the batch (fold 4), PP2 unfitted, FP8 with TP4, MoE with EP
DEPLOYMENTS = [
    ("llama-2-7b", "a100-80gb", {}), ("llama-2-7b", "a100-80gb", {"fitted": False, "pp": 2}),
    ("llama-3.1-70b", "h100-sxm", {"tp": 4, "weight_dtype": "fp8", "kv_cache_dtype": "fp8"}),
    ("mixtral-8x7b", "h100-sxm", {"tp": 2, "ep": 2, "router_skew": 0.5}),
]
#: decode batch sizes on measured rows, between them, below and beyond them; contexts inside and outside the rows
SIZES = [1, 2, 3, 5, 7, 8, 13, 64, 100, 257, 600, 2000, 2048, 3000]
CONTEXTS = [1, 2, 17, 500, 4096, 40000, 131072]


@pytest.fixture(scope="module", params=DEPLOYMENTS, ids=lambda d: f"{d[0]}-{d[1]}-{len(d[2])}")
def cost(request) -> KernelCostModel:
    model, gpu, kw = request.param
    return KernelCostModel(model, gpu, **kw)


def _decodes(cached: list[int], step: int = 0) -> Batch:
    return Batch([(None, 1, c + step) for c in cached], num_decodes=len(cached))


def _plain(dec, rl: RooflineCostModel) -> Grid2D:
    """The grid ``dec`` reads, rebuilt with a shape calling ``rl.attn_decode_cost`` itself (the unmemoised price)."""
    g, fold = dec.grid, dec.fold
    return Grid2D(np.repeat(g.rows_u, [len(r) for r in g.rows]), np.concatenate([r.x for r in g.rows]),
                  np.concatenate([r.y for r in g.rows]), lambda b, v: rl.attn_decode_cost(b / fold, b / fold * v)[0],
                  enforce_monotone=False)


def _curves(cost: KernelCostModel) -> list:
    """Every measured curve the model reads (GEMMs, all-reduce, prefill attention, MoE experts, EP all-to-alls)."""
    out = [*cost._gemms.values(), *cost._all_reduce.values(), *(p for pair in cost._a2a.values() for p in pair)]
    return out + [c for c in (cost._moe, cost._prefill and cost._prefill.curve) if c is not None]


def _cold(cost: KernelCostModel) -> None:
    """Forget every memoised price (what a fresh model knows)."""
    cost._token_cache.clear()
    cost._prefill_cache.clear()
    for curve in _curves(cost):
        curve._memo.clear()
    if cost._decode is not None:
        cost._decode._rows.clear()
        cost._decode._plans.clear()


def test_the_decode_shape_is_the_roofline_decode_attention_bit_for_bit():
    rng = np.random.default_rng(0)
    for model, gpu, kw in [*DEPLOYMENTS, ("deepseek-v3", "h200", {"tp": 8}), ("llama-3-8b", "l40s", {})]:
        rl = RooflineCostModel(model, gpu, **kw)
        for fold in (1, 2, 4):
            shape = decode_shape(rl, fold)
            for b in [1.0, 2.0, 3.0, 4.0, 48.0, 2048.0, *rng.integers(1, 9000, 20).astype(float).tolist()]:
                for v in [1.0, 1.5, 17.0, 4096.25, *(rng.random(10) * 1e5).tolist()]:
                    assert shape(b, v) == rl.attn_decode_cost(b / fold, b / fold * v)[0]


def test_decode_attention_plans_price_as_the_grid_read_with_the_roofline(cost):
    """Per batch size, the bound rows and inlined blend give the floats of a ``Grid2D`` over the same rows whose
    shape calls ``RooflineCostModel.attn_decode_cost`` itself (the unmemoised reading), and the same edge flags."""
    dec = cost._decode
    fold, g, plain = dec.fold, dec.grid, _plain(dec, cost.rl)
    rng = np.random.default_rng(1)
    sizes = SIZES + rng.integers(1, 3000, 60).tolist()
    for n in sizes:
        contexts = [n * c + int(rng.integers(0, n)) for c in CONTEXTS + rng.integers(1, 60000, 6).tolist()]
        # measured points exactly (v on a row's grid), and every price twice: a plan made, then reused
        contexts += [int(n * v) for v in g.rows[len(g.rows) // 2].x[:3]]
        for _ in range(2):
            for total in contexts:
                b, v = float(n * fold), total / n
                want = plain(b, v)
                assert dec.seconds(n, total) == want
                t, src = dec(n, total)
                assert t == want and src == (dec.source if plain.contains(b, v) else dec.source + EDGE)
        assert dec.run_array(n, np.array(contexts)).tolist() == [dec.seconds(n, c) for c in contexts]
        run = range(contexts[0], contexts[0] + n * 70, n)
        want = [plain(float(n * fold), c / n) for c in run]
        assert dec.run(n, run) == want
        assert dec.run_array(n, np.array(run, dtype=np.int64)).tolist() == want


@pytest.mark.parametrize("cached", [[7], [0, 15, 16, 4095], list(range(3, 300, 7)), [40000] * 5,
                                    list(range(1, 6000, 2))])
def test_a_stretch_priced_in_one_call_is_stage_cost_per_step(cost, cached):
    """``KernelCostModel.decode_run`` (what a decode stretch prices) is ``stage_cost`` of each step's all-decode
    batch bit for bit, with caches cold or warm, and leaves the same per-source counts."""
    n, steps = len(cached), 70
    assert 20 < VECTOR_STEPS <= 40  # 20 steps are priced one call a step, 40 and 70 in arrays
    batches = [_decodes(cached, j) for j in range(steps)]
    _cold(cost)
    before = dict(cost.source_counts)
    got = cost.decode_run(n, batches[0].decode_context, steps)
    counted = dict(cost.source_counts)
    _cold(cost)
    cost.source_counts.clear()
    cost.source_counts.update(before)
    want = [tuple(cost.stage_cost(b, 0)) for b in batches]
    assert got == want
    assert dict(cost.source_counts) == counted
    assert cost.decode_run(n, batches[0].decode_context, steps) == want  # warm
    assert cost.decode_run(n, batches[0].decode_context, 20) == want[:20]
    assert cost.decode_run(n, batches[5].decode_context, 40) == want[5:45]
    assert cost.decode_run(n, batches[0].decode_context, 0) == []


def test_a_stretch_of_runs_priced_in_one_pass_is_decode_run_per_run(cost):
    """``KernelCostModel.decode_runs`` (a stretch whose requests finish run by run, in one NumPy pass) is
    ``decode_run`` of each run in turn bit for bit, batch sizes on, between, below and beyond the measured rows and
    contexts inside and outside them, and leaves the same per-source counts (cold caches both times)."""
    rng = np.random.default_rng(2)
    cases = [[(n, n * c, int(rng.integers(1, 50))) for n, c in zip(SIZES, CONTEXTS * 2)],
             [(n, n * 300 + 7, 3) for n in range(40, 20, -1)],  # a batch emptying a request a run
             [(13, 13 * 40000, 30), (5, 5 * 131072, 30)], [(8, 8 * 17, 45)]]
    for runs in cases:
        _cold(cost)
        cost.source_counts.clear()
        got = cost.decode_runs(runs)
        counted = dict(cost.source_counts)
        _cold(cost)
        cost.source_counts.clear()
        want = [p for n, c, m in runs for p in cost.decode_run(n, c, m)]
        assert got == want and dict(cost.source_counts) == counted
        dec = cost._decode
        ns, counts = [r[0] for r in runs], [r[2] for r in runs]
        ctx = np.concatenate([np.arange(c, c + n * m, n) for n, c, m in runs])
        each = [x for n, c, m in runs for x in dec.run(n, range(c, c + n * m, n))]
        assert dec.run_many(ns, ctx, counts).tolist() == each


def test_warm_caches_price_as_cold_ones(cost):
    """Mixed, prefill-only and decode-only batches priced twice over with caches kept give the prices of a model
    whose caches are emptied before each batch; ``attn_prefill`` (with its source) agrees with the fast path."""
    rng = np.random.default_rng(2)
    batches = []
    for _ in range(150):
        decodes = rng.integers(1, 5000, int(rng.integers(0, 40))).tolist()
        chunks = [(int(c), int(p)) for c, p in zip(rng.integers(1, 700, int(rng.integers(0, 4))),
                                                   rng.integers(0, 9000, 4))]
        if not decodes and not chunks:
            continue
        b = Batch([(None, 1, c) for c in decodes] + [(None, c, p) for c, p in chunks], num_decodes=len(decodes))
        batches.append(b)
    cold = []
    for b in batches:
        _cold(cost)
        cold.append(tuple(cost.stage_cost(b, 0)))
    for _ in range(2):
        assert [tuple(cost.stage_cost(b, 0)) for b in batches] == cold
    for b in batches:
        if b.prefill_items:
            assert cost._prefill_seconds(b, cost.rl._prefill_sums(b)) == cost.attn_prefill(b)[0]
    assert sum(cost.breakdown(batches[0], 0).values()) == pytest.approx(cold[0][0], rel=1e-12)


def test_host_time_reads_only_the_batch_size(cost):
    """Decode stretches price a stretch's host time once: it must not depend on contexts or chunks."""
    for size in (1, 7, 64):
        prices = {cost.host_time(Batch([(None, 1, c) for c in range(k, k + size)], num_decodes=size))
                  for k in (1, 500, 90000)}
        prices.add(cost.host_time(Batch([(None, 1, 10)] * (size - 1) + [(None, 300, 40)], num_decodes=size - 1)))
        assert len(prices) == 1 and prices == {cost.rl.host_time(_decodes(list(range(size))))}


def test_plans_on_an_irregular_grid_price_as_the_grid():
    """Rows at uneven batch sizes and contexts (the published tables' steps are powers of two, where a reordered
    interpolation would round alike): plans give ``Grid2D``'s floats with the roofline's shape."""
    import pandas as pd

    from sim.cost.kernels.database import TableRef
    from sim.cost.kernels.lookups import DecodeAttention

    rng = np.random.default_rng(3)
    sizes, steps = [1, 3, 10, 37, 130], [0, 6, 20, 99, 333, 1000, 5001]
    rows = pd.DataFrame([{"kernel_source": "k", "batch_size": b, "step": s, "isl": 1,
                          "latency": 0.01 + 1e-5 * b * s * rng.random()} for b in sizes
                         for s in steps[b % 2: 4 + b % 4]])  # rows of odd b start at step 6
    rl = RooflineCostModel("llama-2-7b", "a100-80gb")
    for fold in (1, 3):
        dec = DecodeAttention(rows, fold, TableRef("generation_attention", "s", "f", "v", Path("t.parquet")), rl)
        plain = _plain(dec, rl)
        for n in range(1, 200, 3):
            totals = rng.integers(n, n * 8000, 40)
            want = [plain(float(n * fold), total / n) for total in totals.tolist()]
            assert [dec.seconds(n, total) for total in totals.tolist()] == want
            assert dec.run_array(n, totals).tolist() == want


def test_memoised_curves_price_as_computed_and_stay_bounded(cost, monkeypatch):
    monkeypatch.setattr(lookups, "CURVE_MEMO", 50)
    rng = np.random.default_rng(4)
    xs = [1, 2, 63, 64, 65, 4096, 1e9, *rng.integers(1, 20000, 80).tolist(), *(rng.random(20) * 5000).tolist()]
    curves = _curves(cost)
    assert len(curves) >= 5
    for curve in curves:
        for _ in range(2):
            for x in xs:
                assert curve(x) == curve.price(x)
                assert len(curve._memo) <= 50


def test_the_decode_plans_stay_bounded(monkeypatch):
    monkeypatch.setattr(lookups, "PLAN_LIMIT", 8)
    dec = KernelCostModel("llama-2-7b", "a100-80gb")._decode
    for n in range(1, 100):
        dec.seconds(n, n * 300)
        assert len(dec._plans) <= 8
    assert dec.seconds(3, 900) == dec.seconds(3, 900)


@pytest.mark.parametrize("cached, chunk, done", [([], 64, 0), ([7], 1, 5), ([0, 15, 16, 4095], 500, 0),
                                                 (list(range(3, 300, 7)), 37, 4096)])
def test_a_chunk_stretch_priced_lazily_is_stage_cost_per_step(cost, cached, chunk, done):
    """``KernelCostModel.chunk_run`` (a chunk stretch's steps: decodes beside a prompt's next chunk) is ``stage_cost``
    of each step's batch bit for bit, and counts a chunk's source only for the steps taken from it: a stretch that
    stops early leaves the counts the loop would (``describe``'s distinct prices by source)."""
    from sim.batch import BatchItem

    n, steps = len(cached), 30
    batches = [Batch([*((None, 1, c + j) for c in cached), BatchItem(None, chunk, done + j * chunk)], num_decodes=n)
               for j in range(steps)]
    for taken in (steps, 3):
        _cold(cost)
        before = dict(cost.source_counts)
        run = cost.chunk_run(n, batches[0].decode_context, chunk, done, steps)
        got = [next(run) for _ in range(taken)]
        counted = dict(cost.source_counts)
        _cold(cost)
        cost.source_counts.clear()
        cost.source_counts.update(before)
        assert got == [tuple(cost.stage_cost(b, 0)) for b in batches[:taken]]
        assert dict(cost.source_counts) == counted


def test_the_token_part_is_the_sum_of_the_stage_ops_and_counts_each_new_shapes_sources(cost):
    """``_token_part`` keeps the sums before lm_head per token count and adds the item-dependent ops: each new
    shape's answer is bit for bit the sums of ``_stage_token_times``' seconds and the roofline's FLOPs and bytes, in
    their order, and it counts every op's source once (``describe``'s distinct prices), as pricing it whole does."""
    import random
    from collections import Counter

    rng, rl = random.Random(7), cost.rl
    shapes = [(rng.randint(1, 9000), rng.randint(0, 300), rng.randrange(cost.pp), rng.random() < 0.5)
              for _ in range(200)]
    shapes += [(t, min(t, n + 1), s, d) for t, n, s, d in shapes[:80]]  # token counts seen, new item counts
    for t, n, s, d in shapes:
        n = min(n, t)
        if (t, n, s, d) in cost._token_cache:
            continue
        ops = cost._stage_token_times(t, n, s, d)
        useful = list(rl._stage_token_ops(t, n, s).values())
        want = (sum(v[0] for v in ops.values()), sum(v[1] for v in useful), sum(v[2] for v in useful))
        before = Counter(cost.source_counts)
        assert cost._token_part(t, n, s, d) == want
        assert cost.source_counts - before == Counter(cost._count_key(src) for _, src in ops.values())
