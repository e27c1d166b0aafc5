"""GPU catalogue: dense bf16 FLOP/s, memory bandwidth, memory size and interconnect, from datasheets.

The entries, each with its datasheet source, are in ``gpus.toml`` beside this file.

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

import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from sim.inputs import brief

GiB = 1 << 30


class UnknownGPUError(ValueError):
    """A GPU name that is not in the catalogue."""


@dataclass(frozen=True)
class RooflineFit:
    """Roofline parameters fitted to published measurements of one GPU (``calibration/roofline_fit.py``).

    GEMMs: compute efficiency e_max * m / (m + half_rows) of the tile-padded rows, weight-read
    efficiency, a floor per kernel; elementwise kinds: (kind, memory efficiency, floor seconds).
    """

    gemm_peak_efficiency: float | None = None
    gemm_half_rows: float = 0.0
    gemm_memory_efficiency: float = 1.0
    gemm_floor_s: float = 0.0
    tile: int | None = None
    elementwise: tuple[tuple[str, float, float], ...] = ()
    source: str = ""

    @classmethod
    def from_toml(cls, d: dict) -> RooflineFit:
        kinds = tuple((k, float(v["memory_efficiency"]), float(v["floor_s"]))
                      for k, v in sorted(d.get("elementwise", {}).items()))
        return cls(d.get("gemm_peak_efficiency"), float(d.get("gemm_half_rows", 0.0)),
                   float(d.get("gemm_memory_efficiency", 1.0)), float(d.get("gemm_floor_s", 0.0)), d.get("tile"),
                   kinds, str(d.get("source", "")))


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
    kernel_db: str = ""      # AIConfigurator system with measured kernel tables for this GPU ("": none)
    roofline: RooflineFit | None = None  # fitted roofline parameters (None: the datasheet defaults)
    fp8_flops: float = 0.0   # dense FP8 tensor-core FLOP/s (0: no FP8 tensor cores, e.g. Ampere)
    fp8_source: str = ""
    network_bw: float = 12.5e9  # per-GPU bytes/s across nodes (InfiniBand/RoCE NIC per GPU), for KV transfers
    network_source: str = ""

    @property
    def has_fp8(self) -> bool:
        """Whether the GPU has FP8 tensor cores (Hopper, Ada, Blackwell; not Ampere)."""
        return self.fp8_flops > 0


CATALOGUE_FILE = Path(__file__).with_name("gpus.toml")


def _load_catalogue(path: Path = CATALOGUE_FILE) -> dict[str, GPUSpec]:
    """The GPU table of ``gpus.toml``: one section per GPU, memory in GiB."""
    with open(path, "rb") as fh:
        table = tomllib.load(fh)
    return {name: GPUSpec(name, float(e["bf16_flops"]), float(e["mem_bandwidth"]), e["mem_gib"] * GiB,
                          float(e["interconnect_bw"]), source=e["source"], interconnect=e["interconnect"],
                          hourly_price_usd=float(e["hourly_price_usd"]), kernel_db=e.get("kernel_db", ""),
                          roofline=RooflineFit.from_toml(e["roofline"]) if "roofline" in e else None,
                          fp8_flops=float(e.get("fp8_flops", 0.0)), fp8_source=e.get("fp8_source", ""),
                          network_bw=float(e["network_bw"]), network_source=e["network_source"])
            for name, e in table.items()}


GPUS: dict[str, GPUSpec] = _load_catalogue()

_ALIASES: dict[str, str] = {
    "a100": "a100-80gb", "a100-sxm-80gb": "a100-80gb", "a100-sxm4-80gb": "a100-80gb",
    "a100-sxm4-40gb": "a100-40gb", "rtx-a6000": "a6000", "h100": "h100-sxm", "h100-80gb": "h100-sxm",
    "h100-sxm5": "h100-sxm", "h200-sxm": "h200", "b200-sxm": "b200",
}


def _norm(name: str) -> str:
    """Catalogue key normalisation: case, '-', '_', ' ' do not matter."""
    return "".join(ch for ch in name.strip().lower() if ch not in "-_ ")


_LOOKUP: dict[str, str] = {_norm(k): k for k in GPUS}
_LOOKUP.update({_norm(a): n for a, n in _ALIASES.items()})


#: measured devices this process priced a profile for (a CPU, an unlisted GPU): found by name, never listed
_MEASURED: dict[str, GPUSpec] = {}


def register_device(spec: GPUSpec) -> str:
    """Make a measured device (a profile's CPU or unlisted GPU) findable by ``get_gpu``; returns its name."""
    _MEASURED[spec.name] = spec
    return spec.name


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Look up a GPU by catalogue name (case-insensitive, a few aliases such as 'h100'), or a registered device."""
    if isinstance(name, GPUSpec):
        return name
    if name in _MEASURED:
        return _MEASURED[name]
    key = _LOOKUP.get(_norm(str(name)))
    if key is None:
        raise UnknownGPUError(f"unknown GPU {brief(str(name))}; known GPUs: {', '.join(sorted(GPUS))}")
    return GPUS[key]


# CUDA device names (torch.cuda.get_device_name) -> catalogue entries; first match wins
_DEVICE_NAME_PATTERNS: tuple[tuple[str, str], ...] = (
    (r"B200", "b200"),
    (r"H200", "h200"),
    (r"H100.*PCIE", "h100-pcie"),
    (r"H100", "h100-sxm"),
    (r"A100.*40\s*GB", "a100-40gb"),
    (r"A100", "a100-80gb"),
    (r"L40S", "l40s"),
    (r"\bA40\b", "a40"),
    (r"A6000", "a6000"),
)


def gpu_for_device_name(device_name: str, memory_bytes: float | None = None) -> str | None:
    """The catalogue entry of a CUDA device name such as 'NVIDIA H100 80GB HBM3' (an A100 named without its size
    is told apart by ``memory_bytes``), or None for a device the catalogue does not hold."""
    upper = device_name.upper()
    for pattern, gpu in _DEVICE_NAME_PATTERNS:
        if re.search(pattern, upper):
            if gpu == "a100-80gb" and memory_bytes and memory_bytes < 60e9:
                return "a100-40gb"
            return gpu
    return None
