"""GPU catalogue: dense bf16 FLOP/s, memory bandwidth, memory size and interconnect, from datasheets.

Conventions:
- ``bf16_flops`` is the dense tensor-core rate (datasheets often quote 2x "with sparsity").
- ``mem_bytes`` is the capacity ``nvidia-smi`` shows, in binary units (an "80GB" part has 80 GiB
  of HBM; 48 GB GDDR6 boards with ECC on by default show 45 GiB); CUDA reports about 1% less,
  which the memory planner's utilisation fraction and reserve absorb.
- ``interconnect_bw`` is per GPU and per direction: half of NVIDIA's bidirectional NVLink figure,
  or PCIe x16 (~32 GB/s Gen4, ~64 GB/s Gen5) for boards used without NVLink bridges.
- ``hourly_price_usd`` is a rough, typical on-demand cloud price per GPU-hour (mid-2024, across
  hyperscalers and GPU clouds, which differ by 2-4x). It is a default to edit, not a quote.
"""

from __future__ import annotations

from dataclasses import dataclass

GiB = 1 << 30


class UnknownGPUError(ValueError):
    """A GPU name that is not in the catalogue."""


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator: peak rates and capacities that the roofline and the memory planner use."""

    name: str
    bf16_flops: float        # dense (no sparsity) bf16 tensor-core FLOP/s
    mem_bandwidth: float     # HBM/GDDR bytes/s
    mem_bytes: float         # device memory, bytes
    interconnect_bw: float   # per-GPU unidirectional bytes/s to peers (NVLink, else PCIe)
    source: str = ""
    interconnect: str = "nvlink"  # "nvlink" or "pcie": picks the default communication latency
    hourly_price_usd: float = 0.0  # rough on-demand cloud price per GPU-hour (editable default)


_PCIE4 = 32e9   # PCIe Gen4 x16, per direction (theoretical 31.5 GB/s)
_PCIE5 = 64e9   # PCIe Gen5 x16, per direction

GPUS: dict[str, GPUSpec] = {g.name: g for g in (
    GPUSpec("a100-40gb", 312e12, 1.555e12, 40 * GiB, 300e9,
            source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 40GB): 312 TFLOPS bf16 dense, 1555 GB/s HBM2, "
                   "NVLink 600 GB/s bidirectional",
            hourly_price_usd=3.0),
    GPUSpec("a100-80gb", 312e12, 2.039e12, 80 * GiB, 300e9,
            source="NVIDIA A100 Tensor Core GPU datasheet (SXM4 80GB): 312 TFLOPS bf16 dense, 2039 GB/s HBM2e, "
                   "NVLink 600 GB/s bidirectional",
            hourly_price_usd=3.5),
    GPUSpec("a6000", 154.8e12, 768e9, 48 * GiB, _PCIE4,
            source="NVIDIA RTX A6000 datasheet / Ampere GA102 whitepaper: 154.8 TFLOPS bf16 dense "
                   "(309.7 sparse), 768 GB/s GDDR6, 48 GB; PCIe Gen4 x16 (2-way NVLink bridge not assumed)",
            interconnect="pcie", hourly_price_usd=0.8),
    GPUSpec("a40", 149.7e12, 696e9, 45 * GiB, _PCIE4,
            source="NVIDIA A40 datasheet: 149.7 TFLOPS bf16 dense (299.4 sparse), 696 GB/s GDDR6, 48 GB "
                   "(ECC on by default leaves 45 GiB, nvidia-smi 46068 MiB); PCIe Gen4 x16 "
                   "(2-way NVLink bridge not assumed)",
            interconnect="pcie", hourly_price_usd=0.7),
    GPUSpec("l40s", 362.05e12, 864e9, 45 * GiB, _PCIE4,
            source="NVIDIA L40S datasheet: 362.05 TFLOPS bf16 dense (733 sparse), 864 GB/s GDDR6, 48 GB "
                   "(ECC on by default leaves 45 GiB); PCIe Gen4 x16, no NVLink",
            interconnect="pcie", hourly_price_usd=1.5),
    GPUSpec("h100-sxm", 989.4e12, 3.35e12, 80 * GiB, 450e9,
            source="NVIDIA H100 Tensor Core GPU datasheet (SXM5): 989 TFLOPS bf16 dense (1979 sparse), "
                   "3.35 TB/s HBM3, NVLink 900 GB/s bidirectional",
            hourly_price_usd=5.0),
    GPUSpec("h100-pcie", 756e12, 2.0e12, 80 * GiB, _PCIE5,
            source="NVIDIA H100 Tensor Core GPU datasheet (PCIe): 756 TFLOPS bf16 dense (1513 sparse), "
                   "2 TB/s HBM2e; PCIe Gen5 x16 128 GB/s bidirectional (pairwise NVLink bridge not assumed)",
            interconnect="pcie", hourly_price_usd=3.5),
    GPUSpec("h200", 989.4e12, 4.8e12, 140 * GiB, 450e9,
            source="NVIDIA H200 Tensor Core GPU datasheet (SXM): 989 TFLOPS bf16 dense (1979 sparse), "
                   "4.8 TB/s HBM3e, 141 GB (about 140 GiB addressable), NVLink 900 GB/s bidirectional",
            hourly_price_usd=6.0),
)}

_ALIASES: dict[str, str] = {
    "a100": "a100-80gb", "a100-sxm-80gb": "a100-80gb", "a100-sxm4-80gb": "a100-80gb",
    "a100-sxm4-40gb": "a100-40gb", "rtx-a6000": "a6000", "h100": "h100-sxm", "h100-80gb": "h100-sxm",
    "h100-sxm5": "h100-sxm", "h200-sxm": "h200",
}


def _norm(name: str) -> str:
    """Catalogue key normalisation: case, '-', '_', ' ' do not matter."""
    return "".join(ch for ch in name.strip().lower() if ch not in "-_ ")


_LOOKUP: dict[str, str] = {_norm(k): k for k in GPUS}
_LOOKUP.update({_norm(a): n for a, n in _ALIASES.items()})


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Look up a GPU by catalogue name (case-insensitive, a few aliases such as 'h100')."""
    if isinstance(name, GPUSpec):
        return name
    key = _LOOKUP.get(_norm(str(name)))
    if key is None:
        raise UnknownGPUError(f"unknown GPU {name!r}; known GPUs: {', '.join(sorted(GPUS))}")
    return GPUS[key]
