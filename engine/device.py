"""Device facts the engine needs: dtype names, the GPU catalogue entry of a CUDA device, KV sizing, OOM messages.

Kept apart from the runner so the replay, the CLI and the speed benchmark share one
answer to "which GPU is this" and one wording for out-of-memory advice.
"""

from __future__ import annotations

import torch

from engine.model import default_dtype
from sim.catalog.hardware import GPUSpec, get_gpu, gpu_for_device_name
from sim.catalog.models import ModelSpec
from sim.kv.memory import default_activation_reserve_bytes

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
DTYPE_CHOICES = ("float32", "bfloat16", "float16")

class EngineOutOfMemoryError(RuntimeError, ValueError):
    """The device ran out of memory (or would: a pre-check); the message says which setting to change. A
    ValueError too, so every command reports it in one line."""


def parse_dtype(name: str | torch.dtype | None, device: torch.device | str) -> torch.dtype:
    """A torch dtype from a name (``bf16``, ``float32``...); None means bfloat16 on CUDA, float32 elsewhere."""
    if isinstance(name, torch.dtype):
        return name
    if name is None:
        return default_dtype(torch.device(device))
    key = str(name).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[key]


def resolve_device(name: str | torch.device | None) -> torch.device:
    """The torch device to run on: the given one (checked), or CUDA when available, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"unknown device {name!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but this torch ({torch.__version__}) sees no CUDA GPU; "
                         f"use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu or cuda")
    return dev


def device_name(device: torch.device) -> str:
    """Human-readable name of ``device`` (the CUDA product name, or 'cpu')."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def detect_gpu(device: torch.device, requested: str | None = None) -> GPUSpec | None:
    """The catalogue GPU for roofline FLOPs/bytes and floors: ``requested``, else the CUDA device's, else None."""
    if requested:
        return get_gpu(requested)
    if device.type == "cuda":
        name = gpu_for_device_name(device_name(device), torch.cuda.get_device_properties(device).total_memory)
        return get_gpu(name) if name else None
    return None


def dtype_bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def kv_blocks_for_device(spec: ModelSpec, device: torch.device, dtype: torch.dtype, block_size: int,
                         gpu_memory_utilization: float) -> int:
    """vLLM's rule on the real device: total x utilisation - memory in use - weights - activation reserve.

    Call before the weights are loaded (they are counted from the model shape).
    """
    if device.type != "cuda":
        raise ValueError("sizing the KV cache from device memory needs CUDA; pass --kv-blocks on the CPU")
    free, total = torch.cuda.mem_get_info(device)
    elem = dtype_bytes(dtype)
    weights = spec.weight_bytes(elem)
    probe = GPUSpec("detected", 0.0, 0.0, float(total), 0.0)
    reserve = default_activation_reserve_bytes(spec, probe, dtype_bytes=elem)
    budget = int(total * gpu_memory_utilization) - (total - free) - weights - reserve
    per_block = 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * elem
    blocks = budget // per_block
    if blocks < 1:
        gib = 1 << 30
        raise EngineOutOfMemoryError(
            f"no KV-cache block fits on {device_name(device)}: {total / gib:.1f} GiB x {gpu_memory_utilization:g} "
            f"(--gpu-mem-util) leaves {budget / gib:.2f} GiB after {(total - free) / gib:.1f} GiB already in use, "
            f"{weights / gib:.1f} GiB of {spec.name} weights and a {reserve / gib:.1f} GiB activation reserve; "
            f"raise --gpu-mem-util, use a smaller --model or --dtype, or pass --kv-blocks")
    return int(blocks)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is a device (CUDA) or host (CPU allocator) out-of-memory error."""
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if t is not None)
    if oom_types and isinstance(exc, oom_types):
        return True
    text = str(exc)
    return isinstance(exc, (RuntimeError, MemoryError)) and (
        "out of memory" in text.lower() or "can't allocate memory" in text or isinstance(exc, MemoryError))


def oom_message(where: str, device: torch.device, exc: BaseException) -> str:
    """The advice for an out-of-memory error raised while ``where`` (allocating the KV cache, or running a batch)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if where == "kv":
        advice = ("lower --kv-blocks" if device.type == "cpu"
                  else "lower --kv-blocks or --gpu-mem-util (leave room for activations)")
        return f"out of memory on {device_name(device)} while allocating the model and KV cache: {advice}. ({first})"
    return (f"out of memory on {device_name(device)} while running a batch: lower --max-batch or --token-budget "
            f"(smaller iterations), or --gpu-mem-util / --kv-blocks (more room for activations). ({first})")


def available_host_bytes() -> int | None:
    """MemAvailable of this machine (Linux /proc/meminfo), or None where it cannot be read."""
    try:
        for line in open("/proc/meminfo", encoding="ascii"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_host_memory(spec: ModelSpec, dtype: torch.dtype, kv_blocks: int, block_size: int, *,
                      what: str = "the engine", headroom: float = 0.8,
                      advice: str = "a smaller --model (tiny, small), --dtype bfloat16, or fewer --kv-blocks") -> None:
    """Refuse, before allocating, a CPU run whose weights, KV cache and activations exceed ``headroom`` of the
    available memory (a 7B model in float32 on a 24 GiB machine is killed by the kernel otherwise)."""
    free = available_host_bytes()
    if free is None:
        return
    elem = dtype_bytes(dtype)
    weights = spec.weight_bytes(elem)
    kv = kv_blocks * 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * elem
    act = default_activation_reserve_bytes(spec, GPUSpec("cpu", 0.0, 0.0, float(free), 0.0), dtype_bytes=elem)
    need = weights + kv + act
    if need > headroom * free:
        gib = 1 << 30
        raise EngineOutOfMemoryError(
            f"{what} would need about {need / gib:.1f} GiB on the CPU ({spec.name} weights {weights / gib:.1f} GiB in "
            f"{str(dtype).removeprefix('torch.')}, KV cache {kv / gib:.1f} GiB, activations {act / gib:.1f} GiB) "
            f"but {free / gib:.1f} GiB is available: use {advice}")
