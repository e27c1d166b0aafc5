"""Prefill attention priced at an efficiency rising with the keys per query (sim/cost/attention_fit.py), and the
roofline's TP link override; against hand-derived numbers and, when installed, AIConfigurator's measured tables."""

from __future__ import annotations

import pytest

from sim.cost.attention_fit import FITS, fit_attention
from sim.cost.roofline import RooflineCostModel


def test_long_prefill_attention_is_the_hand_derived_number():
    # Llama-3-8B on one A100, one 8192-token prompt: 32 query heads x 128, pairs = 8192 * 8193 / 2 = 33,558,528;
    # FLOPs = 2 * 32 * (128 + 128) * pairs = 549,822,922,752; mean keys per query = pairs / 8192 = 4096.5;
    # efficiency = 0.610 * 4096.5 / (4096.5 + 493) = 0.54447; seconds = FLOPs / (312e12 * 0.54447) + 1.5 us
    t, flops, _ = RooflineCostModel("llama-3-8b", "a100-80gb").attn_prefill_cost(8192, 0, 33_558_528)
    assert flops == 549_822_922_752
    assert t == pytest.approx(549_822_922_752 / (312e12 * 0.610 * 4096.5 / 4589.5) + 1.5e-6, rel=1e-12)
    assert t == pytest.approx(3.2381e-3, rel=1e-4)


def test_without_a_fit_the_flat_efficiency_stays():
    pairs = 8192 * 8193 // 2
    flops = 4 * 128 * 32 * pairs
    flat = flops / (312e12 * 0.70) + 1.5e-6
    assert RooflineCostModel("llama-3-8b", "a100-80gb", fitted=False).attn_prefill_cost(8192, 0, pairs)[0] == \
        pytest.approx(flat, rel=1e-12)
    a40 = RooflineCostModel("llama-3-8b", "a40")  # no AIConfigurator tables for the A40: no fit
    assert a40.attn_fit is None
    assert a40.attn_prefill_cost(8192, 0, pairs)[0] == pytest.approx(flops / (149.7e12 * 0.70) + 1.5e-6, rel=1e-12)


def test_attention_rate_rises_with_length_and_stays_below_the_fitted_peak():
    rl = RooflineCostModel("llama-3-8b", "h100-sxm")
    rates = []
    for L in (1024, 4096, 16384, 65536):
        t, f, _ = rl.attn_prefill_cost(L, 0, L * (L + 1) // 2)
        rates.append(f / t)
    assert rates == sorted(rates)
    assert rates[-1] < FITS["h100_sxm"].peak_efficiency * 989.4e12


def test_a_chunk_over_cached_context_counts_its_mean_keys():
    # a 512-token chunk over 7680 cached tokens sees 7680 + (512 + 1) / 2 keys per query on average
    rl = RooflineCostModel("llama-3-8b", "a100-80gb")
    pairs = 512 * 7680 + 512 * 513 // 2
    fit = FITS["a100_sxm"]
    expect = 4 * 128 * 32 * pairs / (312e12 * fit.efficiency(pairs / 512)) + 1.5e-6
    assert rl.attn_prefill_cost(512, 7680, pairs)[0] == pytest.approx(expect, rel=1e-12)


def test_tp_link_bandwidth_prices_the_all_reduce():
    # 4 GPUs over PCIe Gen4 (32 GB/s a direction) at 75% link efficiency, 25 us latency:
    # ring all-reduce of 1 MB = 2 * 3/4 * 1e6 / (32e9 * 0.75) + 25e-6 = 87.5 us
    rl = RooflineCostModel("falcon-180b", "a100-80gb-pcie", tp=4, tp_link_bandwidth=32e9, comm_latency=25e-6)
    assert rl._all_reduce(1e6) == pytest.approx(87.5e-6, rel=1e-12)
    assert rl.describe()["tp_link_bandwidth"] == 32e9
    assert RooflineCostModel("falcon-180b", "a100-80gb-pcie", tp=4).describe()["tp_link_bandwidth"] == 300e9


def _context_table(system: str):
    pytest.importorskip("pyarrow")
    from sim.cost.kernels import database as db
    try:
        ref = db.resolve(system, "vllm", None)["context_attention"]
    except Exception as e:  # noqa: BLE001 - the kernels extra is optional
        pytest.skip(f"aiconfigurator-core tables not available: {e}")
    t = db.read_table(ref.path)
    t = t[(t["batch_size"] == 1) & (t["kv_cache_dtype"] == "bfloat16") & (t["head_dim"] == 128)]
    return t[t["window_size"] == 0] if "window_size" in t.columns else t


@pytest.mark.parametrize("system,gpu,peak", [("a100_sxm", "a100-80gb", 312e12), ("h100_sxm", "h100-sxm", 989.4e12)])
def test_stored_fit_is_what_the_tables_give_and_matches_them_at_long_lengths(system, gpu, peak):
    from sim.cost.attention_fit import FIT_MIN_HEADS, FIT_MIN_TOKENS
    t = _context_table(system)
    rows = t[(t["isl"] >= FIT_MIN_TOKENS) & (t["num_heads"] >= FIT_MIN_HEADS)]
    e, half = fit_attention(rows["isl"], rows["num_heads"], rows["latency"] * 1e-3, 128, peak)
    assert e == pytest.approx(FITS[system].peak_efficiency, abs=1e-3)
    assert half == pytest.approx(FITS[system].half_keys, abs=1.0)
    rl = RooflineCostModel("llama-3-8b", gpu)  # 32 query / 8 KV heads
    for L in (4096, 8192, 16384):
        measured = float(t[(t["isl"] == L) & (t["num_heads"] == 32) & (t["num_key_value_heads"] == 8)]["latency"]
                         .iloc[0]) * 1e-3
        assert rl.attn_prefill_cost(L, 0, L * (L + 1) // 2)[0] == pytest.approx(measured, rel=0.06)
