"""Roofline cost model: tile effects, the decode weight-read floor, breakdowns, TP and PP pricing."""

from __future__ import annotations

import json
import random

import pytest

from sim.batch import Batch, BatchItem
from sim.catalog.hardware import GPUS, get_gpu
from sim.catalog.models import MODELS, get_model
from sim.cost.interface import CostModel, StageCost
from sim.cost.roofline import RooflineCostModel
from sim.ops import FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, STAGE_OPS
from sim.request import Request


def decode_item(i: int, context: int) -> BatchItem:
    """A decode of a request whose prompt and earlier outputs (``context`` tokens) are cached."""
    r = Request(f"d{i}", 0.0, max(1, context - 1), 100)
    r.num_generated = context - r.prompt_tokens + 1
    r.num_computed = r.prompt_tokens + r.num_generated - 1
    assert r.num_computed == context
    return BatchItem(r, 1, r.num_computed)


def prefill_item(i: int, chunk: int, cached: int = 0) -> BatchItem:
    """A prefill chunk of ``chunk`` prompt tokens after ``cached`` already computed ones."""
    r = Request(f"p{i}", 0.0, cached + chunk + 10, 10)
    r.num_computed = cached
    return BatchItem(r, chunk, cached)


def decode_batch(n: int, context: int) -> Batch:
    return Batch([decode_item(i, context) for i in range(n)])


def prefill_batch(*chunks: int) -> Batch:
    return Batch([prefill_item(i, c) for i, c in enumerate(chunks)])


@pytest.fixture(scope="module")
def cm7() -> RooflineCostModel:
    """The datasheet roofline (uniform efficiencies, 64-token tiles): hand-derivable; the fitted one is
    tested in test_roofline_fit.py."""
    return RooflineCostModel("llama-2-7b", "a100-80gb", fitted=False)


def test_interface(cm7) -> None:
    assert isinstance(cm7, CostModel) and cm7.num_stages == 1
    b = decode_batch(2, 100)
    assert b.num_decode_tokens == 2 and b.decode_context == 202
    sc = cm7.stage_cost(b, 0)
    assert isinstance(sc, StageCost) and sc.time > 0 and sc.flops > 0 and sc.bytes > 0
    assert cm7.stage_cost(Batch([]), 0) == StageCost(0.0, 0.0, 0.0)
    json.dumps(cm7.describe())
    assert cm7.describe()["name"] == "roofline"


def test_tile_257_clearly_slower_than_256(cm7) -> None:
    t256 = cm7.stage_cost(prefill_batch(256), 0).time
    t257 = cm7.stage_cost(prefill_batch(257), 0).time
    t320 = cm7.stage_cost(prefill_batch(320), 0).time
    assert t257 > 1.10 * t256
    assert t257 == pytest.approx(t320, rel=0.03)  # both fill five 64-token tiles
    # the linear ops see exactly the tile jump (compute-bound at 256 tokens)
    q256 = cm7.breakdown(prefill_batch(256), 0)["qkv_proj"]
    q257 = cm7.breakdown(prefill_batch(257), 0)["qkv_proj"]
    assert q257 / q256 == pytest.approx(320 / 256, rel=0.02)
    # with tile=1 the step disappears
    flat = RooflineCostModel("llama-2-7b", "a100-80gb", tile=1, fitted=False)
    assert flat.stage_cost(prefill_batch(257), 0).time < 1.02 * flat.stage_cost(prefill_batch(256), 0).time


def test_decode_batch1_near_weight_read_floor(cm7) -> None:
    m, g = get_model("llama-2-7b"), get_gpu("a100-80gb")
    floor = m.weight_bytes() / g.mem_bandwidth  # ~6.6 ms
    assert 6.4e-3 < floor < 6.8e-3
    t = cm7.stage_cost(decode_batch(1, 128), 0).time
    assert 1.0 * floor <= t <= 1.3 * floor


def test_prefill_4096_near_compute_bound(cm7) -> None:
    sc = cm7.stage_cost(prefill_batch(4096), 0)
    peak = get_gpu("a100-80gb").bf16_flops
    # useful FLOPs: ~2 x params x tokens plus causal attention
    assert sc.flops == pytest.approx(2 * 6.74e9 * 4096 + 32 * 4 * 4096 * 4097 / 2 * 4096, rel=0.05)
    compute_floor = sc.flops / (peak * cm7.compute_efficiency)
    assert compute_floor <= sc.time <= 1.15 * compute_floor
    assert sc.flops / sc.time / peak > 0.55  # MFU of a long prefill


def test_decode_grows_with_batch_and_context(cm7) -> None:
    t1 = cm7.stage_cost(decode_batch(1, 128), 0).time
    t64 = cm7.stage_cost(decode_batch(64, 128), 0).time
    t64_long = cm7.stage_cost(decode_batch(64, 1024), 0).time
    assert t1 < t64 < t64_long
    # 64 short decodes share one weight read: far cheaper than 64 separate ones
    assert t64 < 2 * t1
    # the extra KV reads (MHA: 512 KiB per token) are priced at the memory roofline
    extra_kv = 64 * (1024 - 128) * get_model("llama-2-7b").kv_bytes_per_token()
    assert t64_long - t64 == pytest.approx(extra_kv / (2.039e12 * cm7.memory_efficiency), rel=0.02)


def test_cached_context_costs_attention(cm7) -> None:
    fresh = Batch([prefill_item(0, 512, 0)])
    resumed = Batch([prefill_item(0, 512, 3000)])
    assert cm7.stage_cost(resumed, 0).time > cm7.stage_cost(fresh, 0).time
    # same token count, same item count: the linear part is shared, only attention differs
    bf, br = cm7.breakdown(fresh, 0), cm7.breakdown(resumed, 0)
    assert bf["qkv_proj"] == br["qkv_proj"] and br["attn_prefill"] > 2 * bf["attn_prefill"]


def mixed_batch() -> Batch:
    return Batch([prefill_item(0, 300, 0), prefill_item(1, 200, 1000)] + [decode_item(i, 700 + i) for i in range(40)])


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 3)])
def test_breakdown_sums_to_total(tp, pp) -> None:
    cm = RooflineCostModel("llama-2-7b", "a100-80gb", tp=tp, pp=pp)
    expected = set(LAYER_OPS + FIRST_STAGE_OPS + LAST_STAGE_OPS + STAGE_OPS)
    for batch in (mixed_batch(), decode_batch(7, 300), prefill_batch(1000, 24)):
        for s in range(pp):
            bd = cm.breakdown(batch, s)
            assert set(bd) == expected
            assert all(v >= 0 for v in bd.values())
            assert sum(bd.values()) == pytest.approx(cm.stage_cost(batch, s).time, rel=1e-9)


def test_mixed_batch_costs_at_least_its_parts(cm7) -> None:
    b = mixed_batch()
    bd = cm7.breakdown(b, 0)
    assert bd["attn_prefill"] > 0 and bd["attn_decode"] > 0
    prefill_only = Batch([it for it in b.items if not it.is_decode])
    assert cm7.stage_cost(b, 0).time > cm7.stage_cost(prefill_only, 0).time


def test_tp2_halves_linear_compute_and_adds_all_reduce() -> None:
    b = prefill_batch(4096)
    one = RooflineCostModel("llama-2-7b", "a100-80gb", tp=1).breakdown(b, 0)
    two = RooflineCostModel("llama-2-7b", "a100-80gb", tp=2).breakdown(b, 0)
    for op in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
        assert two[op] / one[op] == pytest.approx(0.5, abs=0.03), op
    assert one["tp_all_reduce"] == one["tp_all_reduce_mlp"] == 0.0
    assert two["tp_all_reduce"] > 0 and two["tp_all_reduce_mlp"] > 0
    # ring all-reduce of 4096 x 4096 bf16 over NVLink: 2 (tp-1)/tp x 32 MiB / (300 GB/s x eff) + latency, x 32 layers
    cm2 = RooflineCostModel("llama-2-7b", "a100-80gb", tp=2)
    per = 1.0 * 4096 * 4096 * 2 / (300e9 * cm2.comm_efficiency) + cm2.comm_latency
    assert two["tp_all_reduce"] == pytest.approx(32 * per, rel=1e-6)
    total1 = sum(one.values())
    total2 = sum(two.values())
    assert 0.5 * total1 < total2 < 0.75 * total1


def test_pp_stage_split_and_consistency() -> None:
    pp1 = RooflineCostModel("llama-2-7b", "a100-80gb")
    pp2 = RooflineCostModel("llama-2-7b", "a100-80gb", pp=2)
    assert pp2.num_stages == 2 and pp2.layers == [16, 16]
    b = mixed_batch()
    s0, s1 = pp2.breakdown(b, 0), pp2.breakdown(b, 1)
    assert s0["embedding"] > 0 and s0["lm_head"] == s0["sampling"] == s0["final_norm"] == 0
    assert s1["embedding"] == 0 and s1["lm_head"] > 0 and s1["sampling"] > 0
    assert s0["pp_send_recv"] > 0 and s1["pp_send_recv"] == 0
    # both stages price the same layer work identically
    for op in LAYER_OPS:
        assert s0[op] == pytest.approx(s1[op], rel=1e-12), op
    # the two stages together do the single-stage work plus one transfer
    t1 = pp1.stage_cost(b, 0).time
    t0, t_last = pp2.stage_cost(b, 0).time, pp2.stage_cost(b, 1).time
    assert t0 + t_last == pytest.approx(t1 + s0["pp_send_recv"], rel=1e-9)
    f1 = pp1.stage_cost(b, 0).flops
    assert pp2.stage_cost(b, 0).flops + pp2.stage_cost(b, 1).flops == pytest.approx(f1, rel=1e-12)
    # pp=1: no transfer
    assert pp1.breakdown(b, 0)["pp_send_recv"] == 0


def test_pp_uneven_split() -> None:
    cm = RooflineCostModel("llama-2-7b", "a100-80gb", pp=3)
    assert cm.layers == [11, 11, 10]
    b = decode_batch(8, 500)
    bd = [cm.breakdown(b, s) for s in range(3)]
    assert bd[0]["qkv_proj"] == pytest.approx(bd[1]["qkv_proj"])
    assert bd[2]["qkv_proj"] == pytest.approx(bd[0]["qkv_proj"] * 10 / 11)
    assert bd[1]["pp_send_recv"] > 0 and bd[1]["embedding"] == 0 and bd[1]["lm_head"] == 0


def test_lm_head_only_for_sampled_rows(cm7) -> None:
    # same tokens, more items -> more lm head rows
    one = cm7.breakdown(prefill_batch(512), 0)
    many = cm7.breakdown(prefill_batch(*([64] * 8)), 0)
    assert many["lm_head"] > one["lm_head"]
    assert many["sampling"] > one["sampling"]


def test_host_time(cm7) -> None:
    b = decode_batch(10, 100)
    assert cm7.host_time(b) == pytest.approx(cm7.host_overhead_base + 10 * cm7.host_overhead_per_item)
    assert 100e-6 <= cm7.host_overhead_base <= 1e-3
    assert 1e-6 <= cm7.host_overhead_per_item <= 20e-6
    custom = RooflineCostModel("llama-2-7b", "a100-80gb", host_overhead_base=0.0, host_overhead_per_item=1e-3)
    assert custom.host_time(b) == pytest.approx(10e-3)


def test_cache_does_not_mix_contexts_or_stages() -> None:
    cm = RooflineCostModel("llama-2-7b", "a100-80gb", pp=2)
    short, long = decode_batch(16, 100), decode_batch(16, 3000)
    a = cm.stage_cost(short, 0)
    assert cm.stage_cost(long, 0).time > a.time
    assert cm.stage_cost(short, 0) == a
    assert cm.stage_cost(short, 1) != a


def test_pcie_gpus_pay_more_for_all_reduce() -> None:
    b = prefill_batch(2048)
    nv = RooflineCostModel("llama-2-13b", "a100-80gb", tp=2).breakdown(b, 0)["tp_all_reduce"]
    pcie = RooflineCostModel("llama-2-13b", "l40s", tp=2).breakdown(b, 0)["tp_all_reduce"]
    assert pcie > 5 * nv


def test_every_catalogue_pair_prices() -> None:
    b = mixed_batch()
    for mname, m in MODELS.items():
        for gname in GPUS:
            tp = 8 if m.num_params > 30e9 else 1
            tp = tp if m.num_heads % tp == 0 else 1
            cm = RooflineCostModel(mname, gname, tp=tp)
            sc = cm.stage_cost(b, 0)
            assert sc.time > 0 and sc.flops > 0, (mname, gname)


def test_falcon_replicated_kv_heads_and_tiny() -> None:
    cm = RooflineCostModel("falcon-180b", "h100-sxm", tp=8)
    assert cm.stage_cost(decode_batch(4, 1000), 0).time > 0
    tiny = RooflineCostModel("tiny", "a100-80gb")
    assert tiny.stage_cost(mixed_batch(), 0).time > 0
    with pytest.raises(ValueError):
        RooflineCostModel("llama-2-7b", "a100-80gb", tp=3)
    with pytest.raises(ValueError):
        RooflineCostModel("llama-2-7b", "a100-80gb", compute_efficiency=0)


@pytest.mark.parametrize("model, gpu, kw", [
    ("llama-2-7b", "a100-80gb", {}), ("llama-2-70b", "h100-sxm", {"tp": 4, "pp": 2}),
    ("mixtral-8x7b", "h100-sxm", {"tp": 2, "ep": 2}), ("deepseek-v3", "h200", {"tp": 8}),
])
def test_the_token_part_is_the_sum_of_the_stage_ops_whatever_was_priced_before(model, gpu, kw):
    """``_token_part`` keeps the sum before lm_head per token count and adds the item-dependent ops: each answer,
    first or later, is bit for bit the sum of ``_stage_token_ops``' values in their order (the batch's price)."""
    cost, rng = RooflineCostModel(model, gpu, **kw), random.Random(5)
    shapes = [(rng.randint(1, 9000), rng.randint(0, 300), rng.randrange(cost.pp)) for _ in range(300)]
    shapes += [(t, n + 1, s) for t, n, s in shapes[:100]]  # token counts seen before, new item counts
    for t, n, s in shapes:
        ops = list(cost._stage_token_ops(t, min(n, t), s).values())
        want = (sum([v[0] for v in ops]), sum([v[1] for v in ops]), sum([v[2] for v in ops]))
        assert cost._token_part(t, min(n, t), s) == want
