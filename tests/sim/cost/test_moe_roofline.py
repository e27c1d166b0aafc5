"""The roofline of mixture-of-experts layers: routing statistics, expert weights read once, EP all-to-alls, FP8."""

from __future__ import annotations

import numpy as np
import pytest

from sim.batch import synthetic_batch
from sim.catalog.hardware import get_gpu
from sim.cost.moe_routing import busiest_gpu_load, expected_distinct_experts, pick_probabilities
from sim.cost.roofline import RooflineCostModel


def _systematic_sample(q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """k distinct experts whose inclusion probabilities are exactly ``q`` (Madow's systematic sampling)."""
    edges = np.concatenate([[0.0], np.cumsum(q)])
    points = rng.random() + np.arange(round(q.sum()))
    return np.searchsorted(edges, points, side="right") - 1


@pytest.mark.parametrize("skew", [0.0, 1.0])
@pytest.mark.parametrize("tokens", [1, 8, 64])
def test_expected_distinct_experts_matches_a_monte_carlo_count(tokens, skew):
    E, k, trials = 64, 4, 2000
    rng = np.random.default_rng(0)
    q = pick_probabilities(E, k, skew)
    counts = []
    for _ in range(trials):
        picked = np.zeros(E, dtype=bool)
        for _ in range(tokens):
            idx = rng.choice(E, k, replace=False) if skew == 0 else _systematic_sample(q, rng)
            assert len(set(idx)) == k  # k distinct experts per token
            picked[idx] = True
        counts.append(picked.sum())
    expected = expected_distinct_experts(tokens, E, k, skew)
    sem = np.std(counts) / np.sqrt(trials)
    assert abs(np.mean(counts) - expected) < 4 * sem + 1e-9
    if skew == 0:
        assert expected == pytest.approx(E * (1 - (1 - k / E) ** tokens))


def test_skew_concentrates_tokens_on_the_gpu_with_the_popular_experts():
    q = pick_probabilities(8, 2, 2.0)
    assert q.sum() == pytest.approx(2.0) and q.max() <= 1.0
    even = busiest_gpu_load(100, 8, 2, 4, 0.0)
    skewed = busiest_gpu_load(100, 8, 2, 4, 2.0)
    assert even.pairs == pytest.approx(50.0)           # 200 token-expert pairs over 4 GPUs
    assert skewed.pairs > even.pairs


def test_one_decode_token_reads_exactly_its_top_k_experts():
    """Datasheet roofline (no fit): T=1, Mixtral on one H100: 2 experts' weights read, as two GEMM kernels."""
    rl = RooflineCostModel("mixtral-8x7b", "h100-sxm", fitted=False)
    g = get_gpu("h100-sxm")
    h, inter = 4096, 14336
    experts = rl.token_op_costs(1, 1)["moe_experts"]
    weights = 2 * 3 * h * inter * 2                   # two experts, gate+up+down, bf16
    acts = 2 * 1 * (h + 2 * inter) * 2 + 2 * 1 * (inter + h) * 2
    rate, launch = g.mem_bandwidth * rl.memory_efficiency, rl.kernel_launch_overhead
    gemms = (weights + acts) / rate + 2 * launch      # the gate/up and the down grouped GEMMs
    silu = 3 * 2 * inter * 2 / rate + launch          # SiLU(gate) * up over both experts' rows
    weighted_sum = 2 * 2 * h * 2 / rate + launch      # routing weight x output, summed into the token
    assert experts[0] == pytest.approx(gemms + silu + weighted_sum, rel=1e-9)
    assert experts[2] > weights                            # bytes: every weight read once


def test_expert_parallel_all_to_all_by_hand():
    """1024 tokens, TP=EP=8 on H100: each GPU sends its 128 tokens x top-8 hidden states, 7/8 of them away."""
    rl = RooflineCostModel("deepseek-v3", "h100-sxm", tp=8, ep=8)
    ops = rl.token_op_costs(1024, 1)
    sent = 128 * 8 * 7168 * 2 * 7 / 8
    rate = 450e9 * 0.75  # NVLink per direction x NCCL efficiency
    assert ops["ep_dispatch"][0] == pytest.approx(sent / rate + 10e-6)
    gather = 7 / 8 * 1024 * 7168 * 2 / rate + 10e-6  # then every rank gets all outputs back
    assert ops["ep_combine"][0] == pytest.approx(sent / rate + 10e-6 + gather)
    b = synthetic_batch([], [(1024, 0)], prefix="x")
    bd = rl.breakdown(b, 0)
    dense_ar = ops["tp_all_reduce_mlp"][0]
    assert bd["tp_all_reduce_mlp"] == pytest.approx(3 * dense_ar)  # only the 3 dense layers all-reduce the MLP
    assert bd["ep_dispatch"] == pytest.approx(58 * ops["ep_dispatch"][0])


def test_dense_models_have_no_moe_ops_and_moe_layers_no_dense_mlp():
    b = synthetic_batch([512] * 8, [(256, 0)], prefix="x")
    dense = RooflineCostModel("llama-2-7b", "a100-80gb").breakdown(b, 0)
    assert not any(op.startswith(("moe_", "ep_")) for op in dense)
    mix = RooflineCostModel("mixtral-8x7b", "h100-sxm", tp=2).breakdown(b, 0)
    assert mix["gate_up_proj"] == mix["down_proj"] == 0.0 and mix["moe_experts"] > 0 and mix["moe_shared"] == 0.0
    ds = RooflineCostModel("deepseek-v3", "h200", tp=8).breakdown(b, 0)
    assert ds["gate_up_proj"] > 0 and ds["moe_shared"] > 0  # 3 dense layers; a shared expert in the others


def test_fp8_weights_run_at_the_fp8_peak_where_there_is_one_and_weight_only_elsewhere():
    b = synthetic_batch([], [(4096, 0)], prefix="x")  # a compute-bound prefill
    h100 = {dt: RooflineCostModel("llama-3.1-8b", "h100-sxm", weight_dtype=dt, fitted=False) for dt in ("bf16", "fp8")}
    gemm = {dt: m.breakdown(b, 0)["gate_up_proj"] for dt, m in h100.items()}
    assert gemm["fp8"] == pytest.approx(gemm["bf16"] / 2, rel=0.02)  # 1979 vs 989 TFLOP/s
    a100 = {dt: RooflineCostModel("llama-3.1-8b", "a100-80gb", weight_dtype=dt, fitted=False) for dt in ("bf16", "fp8")}
    assert a100["fp8"].breakdown(b, 0)["gate_up_proj"] == pytest.approx(a100["bf16"].breakdown(b, 0)["gate_up_proj"],
                                                                        rel=0.01)  # no FP8 tensor cores: bf16 math
    assert a100["fp8"].describe()["fp8_compute"] is False
    d = synthetic_batch([4096] * 8, [], prefix="d")  # a memory-bound decode: half the weight bytes
    assert a100["fp8"].stage_cost(d, 0).bytes < 0.7 * a100["bf16"].stage_cost(d, 0).bytes


def test_fp8_kv_cache_halves_the_attention_bytes():
    d = synthetic_batch([4096] * 32, [], prefix="d")
    auto = RooflineCostModel("llama-3.1-8b", "a100-80gb").breakdown(d, 0)["attn_decode"]
    fp8 = RooflineCostModel("llama-3.1-8b", "a100-80gb", kv_cache_dtype="fp8").breakdown(d, 0)["attn_decode"]
    assert fp8 == pytest.approx(auto / 2, rel=0.05)


def test_ep_must_be_the_tp_group_and_needs_experts():
    with pytest.raises(ValueError, match="must equal --tp"):
        RooflineCostModel("mixtral-8x7b", "h100-sxm", tp=4, ep=2)
    with pytest.raises(ValueError, match="no experts"):
        RooflineCostModel("llama-2-7b", "h100-sxm", tp=2, ep=2)
