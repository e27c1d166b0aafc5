"""What calibration records of the machine it measures: device name, memory, catalogue GPU, driver, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from engine.model import default_dtype

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

_GPU_PATTERNS = (  # (substring in the device name, extra condition, catalogue name), first match wins
    ("h200", None, "h200"),
    ("h100", "pcie", "h100-pcie"),
    ("h100", None, "h100-sxm"),
    ("a100", "40gb", "a100-40gb"),
    ("a100", None, "a100-80gb"),
    ("l40s", None, "l40s"),
    ("a6000", None, "a6000"),
    ("a40", None, "a40"),
)


def catalogue_gpu(device_name: str, memory_bytes: float | None = None) -> str | None:
    """The ``sim.catalog.hardware`` catalogue entry for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), or None."""
    n = device_name.lower().replace(" ", "").replace("-", "")
    for key, extra, name in _GPU_PATTERNS:
        if key in n and (extra is None or extra in n):
            if name == "a100-80gb" and memory_bytes and memory_bytes < 60e9:
                return "a100-40gb"
            return name
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory, catalogue GPU, driver/CUDA versions and device count of ``device``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                "gpu": catalogue_gpu(props.name, props.total_memory), "count": torch.cuda.device_count(),
                "driver": _driver_version(), "cuda": torch.version.cuda,
                "capability": f"{props.major}.{props.minor}"}
    return {"type": device.type, "name": _cpu_name(), "memory_bytes": ram_bytes(), "gpu": None, "count": 1,
            "driver": None, "cuda": None, "threads": torch.get_num_threads()}


def git_commit() -> str | None:
    """HEAD of the servesim checkout (``+dirty`` with uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when visible, else CPU) or the named torch device; refuses CUDA where none is visible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` (the engine's default for ``device``) or a name of ``DTYPES``."""
    if name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]
