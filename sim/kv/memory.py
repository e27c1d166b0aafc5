"""GPU memory planning: how many KV-cache blocks a replica gets after weights and activations.

Follows vLLM's rule: usable = GPU memory x ``gpu_memory_utilization`` - weights - peak activation
(and runtime) memory; the rest is cut into ``block_size``-token blocks. Every GPU of a replica
holds the same number of blocks (one block id covers all layers on all shards), so the count is
the minimum over pipeline stages, i.e. the one set by the most loaded shard.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sim.catalog.hardware import GiB, GPUSpec, get_gpu
from sim.catalog.models import ModelSpec, get_model, layers_per_stage


class InfeasibleConfigError(ValueError):
    """The model does not fit (weights, or not even one KV block) on the chosen GPUs and parallelism."""


# ---- default activation reserve ----------------------------------------------------------------
# vLLM measures the peak of a profiling forward pass at the largest token budget; we estimate it.
# Tokens per iteration the reserve covers: a full 8k-token prefill (vLLM's max_num_batched_tokens
# is at most this in common configurations).
DEFAULT_MAX_BATCHED_TOKENS = 8192
# Sequences sampled per iteration (vLLM's default max_num_seqs): float32 logits and probabilities.
DEFAULT_MAX_NUM_SEQS = 256
# CUDA context, cuBLAS/NCCL workspaces and allocator slack outside the KV pool (vLLM reports a few
# hundred MiB of "non-torch memory" plus fragmentation).
RUNTIME_OVERHEAD_BYTES = 512 * 1024 * 1024
# Never reserve less than this (but at most MIN_RESERVE_FRACTION of a small GPU).
MIN_RESERVE_BYTES = 1 * GiB
MIN_RESERVE_FRACTION = 0.05


def default_activation_reserve_bytes(model: ModelSpec, gpu: GPUSpec, *, tp: int = 1, dtype_bytes: int = 2,
                                     max_batched_tokens: int = DEFAULT_MAX_BATCHED_TOKENS,
                                     max_num_seqs: int = DEFAULT_MAX_NUM_SEQS) -> int:
    """Estimated peak activation + runtime memory per GPU, kept out of the KV cache.

    At the MLP, the peak of a forward pass holds per token the residual and normed hidden states
    (2 x hidden), the gate/up output and the activation output (3 x intermediate / tp when gated,
    2 x when not), in ``dtype_bytes``; the last stage also holds float32 logits and probabilities
    for ``max_num_seqs`` rows over the full vocabulary (gathered on one rank). Plus a fixed runtime
    overhead, and at least ``min(1 GiB, 5% of the GPU)``.
    """
    inter = model.intermediate_per_gpu(tp)
    per_token = 2 * model.hidden_size + (3 if model.gated_mlp else 2) * inter
    activations = max_batched_tokens * per_token * dtype_bytes
    logits = max_num_seqs * model.vocab_size * 4 * 2
    floor = min(MIN_RESERVE_BYTES, int(MIN_RESERVE_FRACTION * gpu.mem_bytes))
    return max(floor, RUNTIME_OVERHEAD_BYTES + activations + logits)


@dataclass(frozen=True)
class MemoryPlan:
    """How one GPU's memory is split (most loaded shard); goes into summary.json."""

    model: str
    gpu: str
    tp: int
    pp: int
    dtype_bytes: int
    gpu_memory_bytes: int
    gpu_memory_utilization: float
    budget_bytes: int            # gpu_memory_bytes x utilisation
    weight_bytes: int            # largest weight shard
    activation_reserve_bytes: int
    kv_bytes_per_token: int      # on the GPU that limits the block count
    block_size: int
    bytes_per_block: int
    num_blocks: int              # per replica (every GPU holds this many)
    limiting_stage: int          # pipeline stage whose GPUs set num_blocks

    @property
    def kv_cache_bytes(self) -> int:
        """Bytes the KV cache occupies on the limiting GPU."""
        return self.num_blocks * self.bytes_per_block

    @property
    def max_tokens(self) -> int:
        """Tokens the replica's KV cache holds in total."""
        return self.num_blocks * self.block_size

    def to_dict(self) -> dict:
        """JSON-able dict including the derived fields."""
        d = asdict(self)
        d["kv_cache_bytes"] = self.kv_cache_bytes
        d["max_tokens"] = self.max_tokens
        return d


def _gib(x: float) -> str:
    return f"{x / GiB:.1f} GiB"


def plan_memory(model: ModelSpec | str, gpu: GPUSpec | str, *, tp: int = 1, pp: int = 1, block_size: int = 16,
                gpu_memory_utilization: float = 0.9, activation_reserve_bytes: int | None = None,
                dtype_bytes: int = 2, ep: int = 1, kv_dtype_bytes: int | None = None) -> MemoryPlan:
    """Split one replica's GPU memory into weights, activation reserve and KV blocks; raise if it does not fit.

    ``dtype_bytes`` per weight (1 for FP8), ``kv_dtype_bytes`` per cached value (default: 2, the activation
    dtype, as vLLM's --kv-cache-dtype auto); with ``ep`` > 1 every GPU holds 1/ep of the routed experts.
    """
    model, gpu = get_model(model), get_gpu(gpu)
    if not 0.0 < gpu_memory_utilization <= 1.0:
        raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {gpu_memory_utilization}")
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    model.check_tp(tp)
    layers_per_stage(model.num_layers, pp)  # validates pp
    kv_bytes = 2 if kv_dtype_bytes is None else kv_dtype_bytes
    reserve = (default_activation_reserve_bytes(model, gpu, tp=tp)
               if activation_reserve_bytes is None else int(activation_reserve_bytes))
    budget = int(gpu.mem_bytes * gpu_memory_utilization)
    where = f"{model.name} on {gpu.name} (tp={tp}, pp={pp}{f', ep={ep}' if ep > 1 else ''}, {dtype_bytes}-byte weights)"

    best: tuple[int, int, int, int] | None = None  # (blocks, stage, weights, kv per token)
    for s in range(pp):
        w = dtype_bytes * model.stage_params(s, tp, pp, ep)
        kv = model.stage_kv_bytes_per_token(s, kv_bytes, tp, pp)
        free = budget - w - reserve
        if free <= 0:
            raise InfeasibleConfigError(
                f"{where}: weights need {_gib(w)} per GPU ({w / 1e9:.1f} GB) on stage {s}, but only "
                f"{_gib(budget - reserve)} is available ({_gib(gpu.mem_bytes)} x {gpu_memory_utilization:g} "
                f"minus {_gib(reserve)} activation reserve); use more tensor or pipeline parallelism"
                + (", expert parallelism (--ep) or FP8 weights (--dtype fp8)" if model.moe else ""))
        blocks = free // (block_size * kv)
        if best is None or blocks < best[0]:
            best = (blocks, s, w, kv)
    assert best is not None
    blocks, stage, w, kv = best
    if blocks < 1:
        raise InfeasibleConfigError(
            f"{where}: no KV block fits: {_gib(budget - w - reserve)} left after {_gib(w)} of weights and "
            f"{_gib(reserve)} activation reserve, but one {block_size}-token block needs "
            f"{block_size * kv / 2**20:.1f} MiB")
    return MemoryPlan(model=model.name, gpu=gpu.name, tp=tp, pp=pp, dtype_bytes=dtype_bytes,
                      gpu_memory_bytes=int(gpu.mem_bytes), gpu_memory_utilization=gpu_memory_utilization,
                      budget_bytes=budget, weight_bytes=model.weight_bytes(dtype_bytes, tp, pp, ep),
                      activation_reserve_bytes=reserve, kv_bytes_per_token=kv, block_size=block_size,
                      bytes_per_block=block_size * kv, num_blocks=int(blocks), limiting_stage=stage)


def kv_cache_blocks(model: ModelSpec | str, gpu: GPUSpec | str, *, tp: int = 1, pp: int = 1, block_size: int = 16,
                    gpu_memory_utilization: float = 0.9, activation_reserve_bytes: int | None = None,
                    dtype_bytes: int = 2, ep: int = 1, kv_dtype_bytes: int | None = None) -> int:
    """KV-cache blocks per replica (same on every GPU); raises InfeasibleConfigError when nothing fits."""
    return plan_memory(model, gpu, tp=tp, pp=pp, block_size=block_size,
                       gpu_memory_utilization=gpu_memory_utilization,
                       activation_reserve_bytes=activation_reserve_bytes, dtype_bytes=dtype_bytes, ep=ep,
                       kv_dtype_bytes=kv_dtype_bytes).num_blocks
