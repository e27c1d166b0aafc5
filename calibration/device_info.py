"""What calibration records of the machine it measures: device name, memory, catalogue GPU, driver, commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from engine.device import parse_dtype
from engine.device import resolve_device as engine_device
from sim.catalog.hardware import gpu_for_device_name


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
                "gpu": gpu_for_device_name(props.name, props.total_memory), "count": torch.cuda.device_count(),
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
    """``auto`` (CUDA when visible, else CPU) or a named device, checked as the engine checks it."""
    return engine_device(None if name == "auto" else name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` (the engine's default for ``device``) or a dtype name the engine accepts."""
    return parse_dtype(None if name == "auto" else name, device)
