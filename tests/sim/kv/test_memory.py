"""Memory planning: KV-cache blocks after weights and the activation reserve; infeasible configurations."""

from __future__ import annotations

import json

import pytest

from sim.catalog.hardware import GiB, GPUSpec, get_gpu
from sim.catalog.models import get_model
from sim.kv.memory import (
    InfeasibleConfigError,
    MemoryPlan,
    default_activation_reserve_bytes,
    kv_cache_blocks,
    plan_memory,
)


def test_llama2_7b_on_a100_80gb_hand_computed() -> None:
    budget = int(80 * 2**30 * 0.9)                      # 77,309,411,328 B usable at 90%
    weights = 2 * 6_738_415_616                         # 13,476,831,232 B (12.55 GiB)
    reserve = (512 * 2**20                              # runtime overhead
               + 8192 * 2 * (2 * 4096 + 3 * 11008)     # activations of an 8192-token iteration (675 MB)
               + 256 * 32000 * 4 * 2)                   # float32 logits + probs for 256 rows (66 MB)
    per_block = 16 * (2 * 32 * 32 * 128 * 2)            # 16 tokens x 512 KiB = 8 MiB
    expected = (budget - weights - reserve) // per_block
    assert expected == 7457
    assert kv_cache_blocks("llama-2-7b", "a100-80gb") == expected
    plan = plan_memory("llama-2-7b", "a100-80gb")
    assert plan.weight_bytes == weights and plan.activation_reserve_bytes == reserve
    assert plan.bytes_per_block == per_block and plan.max_tokens == 16 * expected
    # ~116k tokens of KV cache: about 29 full 4k-token sequences
    assert 100_000 < plan.max_tokens < 130_000


def test_reserve_default_is_documented_estimate() -> None:
    m, g = get_model("llama-2-7b"), get_gpu("a100-80gb")
    r = default_activation_reserve_bytes(m, g)
    assert 1 * GiB <= r <= 2 * GiB
    # tiny model: the floor applies
    assert default_activation_reserve_bytes(get_model("tiny"), g) == 1 * GiB


def test_70b_on_one_a100_is_infeasible() -> None:
    with pytest.raises(InfeasibleConfigError) as e:
        kv_cache_blocks("llama-2-70b", "a100-80gb")
    msg = str(e.value)
    assert "weights" in msg and "128.5 GiB" in msg  # 2 x 68.98e9 bytes
    assert "llama-2-70b" in msg and "a100-80gb" in msg
    assert isinstance(e.value, ValueError)


def test_70b_with_tp_fits_and_scales() -> None:
    b4 = kv_cache_blocks("llama-2-70b", "a100-80gb", tp=4)
    b8 = kv_cache_blocks("llama-2-70b", "a100-80gb", tp=8)
    assert b4 > 0 and b8 > 2 * b4  # less weight per GPU and half the kv heads per GPU
    # pp splits layers: more blocks than one GPU could hold, limited by the stage with embedding
    plan = plan_memory("llama-2-70b", "a100-80gb", tp=2, pp=2)
    assert plan.num_blocks > 0 and plan.limiting_stage in (0, 1)


def test_tiny_model_works() -> None:
    plan = plan_memory("tiny", "a100-80gb")
    # 2 layers x 2 kv heads x 16 dims x k,v x 2 bytes = 256 B per token
    assert plan.kv_bytes_per_token == 256
    assert plan.num_blocks == (plan.budget_bytes - plan.weight_bytes - plan.activation_reserve_bytes) // (16 * 256)
    assert plan.num_blocks > 1_000_000


def test_uneven_pp_limited_by_most_loaded_stage() -> None:
    plan = plan_memory("llama-2-7b", "a100-80gb", pp=3)
    assert plan.limiting_stage == 0  # 11 layers + embedding
    assert plan.kv_bytes_per_token == 2 * 11 * 32 * 128 * 2
    one = kv_cache_blocks("llama-2-7b", "a100-80gb")
    assert plan.num_blocks > 2.5 * one


def test_knobs() -> None:
    base = kv_cache_blocks("llama-2-7b", "a100-80gb")
    assert kv_cache_blocks("llama-2-7b", "a100-80gb", gpu_memory_utilization=0.5) < base
    assert kv_cache_blocks("llama-2-7b", "a100-80gb", block_size=32) in (base // 2, base // 2 + 1)
    no_reserve = kv_cache_blocks("llama-2-7b", "a100-80gb", activation_reserve_bytes=0)
    assert no_reserve > base
    assert kv_cache_blocks("llama-2-7b", "a100-80gb", dtype_bytes=1, kv_dtype_bytes=1) > 2 * base
    # an FP8 KV cache alone: about twice the blocks (the same memory, half the bytes per token)
    assert 1.99 * base < kv_cache_blocks("llama-2-7b", "a100-80gb", kv_dtype_bytes=1) < 2.01 * base
    with pytest.raises(ValueError):
        kv_cache_blocks("llama-2-7b", "a100-80gb", gpu_memory_utilization=1.5)


def test_no_block_fits() -> None:
    tiny = get_model("tiny")
    w = tiny.weight_bytes()
    small = GPUSpec("toy", 1e12, 1e11, w + 2000, 1e9, source="test")
    with pytest.raises(InfeasibleConfigError, match="no KV block fits"):
        kv_cache_blocks(tiny, small, gpu_memory_utilization=1.0, activation_reserve_bytes=0)
    roomy = GPUSpec("toy2", 1e12, 1e11, w + 10 * 4096, 1e9, source="test")
    assert kv_cache_blocks(tiny, roomy, gpu_memory_utilization=1.0, activation_reserve_bytes=0) == 10


def test_plan_serialises() -> None:
    plan = plan_memory("llama-3-8b", "h100-sxm", tp=2)
    assert isinstance(plan, MemoryPlan)
    d = json.loads(json.dumps(plan.to_dict()))
    assert d["num_blocks"] == plan.num_blocks and d["max_tokens"] == plan.num_blocks * 16
    assert d["kv_cache_bytes"] + d["weight_bytes"] + d["activation_reserve_bytes"] <= d["budget_bytes"]
