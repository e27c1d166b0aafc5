"""Mixture-of-experts and MLA shapes: parameter totals and active parameters against the public figures, KV bytes."""

from __future__ import annotations

import pytest

from sim.catalog.models import get_model
from sim.kv.memory import plan_memory

# (model, public total, public active per token): model cards and papers (see each entry's source)
PUBLIC = [("mixtral-8x7b", 46.7e9, 12.9e9), ("mixtral-8x22b", 141e9, 39e9), ("qwen3-30b-a3b", 30.5e9, 3.3e9),
          ("qwen3-235b-a22b", 235e9, 22e9)]


@pytest.mark.parametrize("name,total,active", PUBLIC)
def test_moe_totals_and_active_parameters_match_the_public_figures(name, total, active):
    m = get_model(name)
    assert m.num_params == pytest.approx(total, rel=0.01)
    # the cards give active counts to two digits; ours count the embedding and lm head (Qwen3-30B-A3B: 3.35B for
    # "3.3B", 1.6% above; by hand: 0.91B attention + 1.81B experts + 0.62B embedding/lm head)
    assert m.active_params == pytest.approx(active, rel=0.02)


def test_deepseek_v3_totals():
    """671B total (its multi-token-prediction module is not part of the 671B), 37B active.

    Our active count is 37.5B with the embedding and lm head counted (as Mixtral's 12.9B counts them): within
    the rounding of "37B" (1.5%).
    """
    m = get_model("deepseek-v3")
    assert m.num_params == pytest.approx(671e9, rel=0.01)
    assert m.active_params == pytest.approx(37e9, rel=0.015)


def test_mixtral_active_parameters_by_hand():
    """Per layer: attention, 2 of 8 experts (3 x 4096 x 14336 each), the router, two norms; plus embedding/lm head."""
    m = get_model("mixtral-8x7b")
    h, layers = 4096, 32
    attn = h * (32 + 2 * 8) * 128 + 32 * 128 * h
    per_layer = attn + 2 * 3 * h * 14336 + 8 * h + 2 * h
    assert m.active_params == layers * per_layer + 2 * 32000 * h + h


def test_mla_caches_one_latent_per_token_not_split_by_tp():
    m = get_model("deepseek-v3")
    assert m.kv_bytes_per_token(2) == 61 * (512 + 64) * 2 == 70272
    assert m.kv_bytes_per_token(2, tp=8) == 70272  # every rank holds the whole latent
    assert m.kv_bytes_per_token(1) == 35136          # an FP8 cache


def test_expert_parallelism_spreads_whole_experts_and_tp_splits_their_width():
    """Mixtral on 2 GPUs: the same expert bytes per GPU either way (8 experts / 2 = half the width of 8)."""
    m = get_model("mixtral-8x7b")
    tp_split = m.stage_params(0, tp=2)
    ep_split = m.stage_params(0, tp=2, ep=2)
    assert ep_split == tp_split
    # DeepSeek-V3 on 8 GPUs: 256 experts / 8 = 32 whole experts per GPU in each of its 58 MoE layers
    d = get_model("deepseek-v3")
    assert d.moe_mlp_params(8, 8) == 256 * 7168 + 32 * 3 * 7168 * 2048 + 3 * 7168 * (2048 // 8)


def test_memory_counts_every_expert_and_fp8_halves_the_weights():
    """The issue's failure: Mixtral-8x7B was sized as a dense 7B (14.5 GB). All experts: ~93 GB, no single A100."""
    from sim.kv.memory import InfeasibleConfigError
    with pytest.raises(InfeasibleConfigError, match="expert parallelism"):
        plan_memory("mixtral-8x7b", "a100-80gb")
    bf16 = plan_memory("mixtral-8x7b", "h100-sxm", tp=2)
    fp8 = plan_memory("mixtral-8x7b", "h100-sxm", tp=2, dtype_bytes=1)
    assert bf16.weight_bytes == pytest.approx(93.4e9 / 2, rel=0.01)
    assert fp8.weight_bytes * 2 == bf16.weight_bytes
    assert fp8.num_blocks > bf16.num_blocks
