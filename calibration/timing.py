"""Timing one op call: warm-up, repeats, median/p10/p90; CUDA events on a GPU, the wall clock on a CPU.

The caller passes ``call(i)``, which runs repeat ``i`` on input set ``i % copies``; rotating
over several copies of the inputs (sized together past the device's last-level cache, see
``rotation_copies``) keeps memory-bound ops from being served out of L2.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch


@dataclass(frozen=True)
class TimingSettings:
    """How hard to time one point: warm-up calls, repeat bounds and the time to aim for per point."""

    warmup: int = 3
    min_repeats: int = 5
    max_repeats: int = 50
    target_s: float = 0.02  # aim for this much timed work per point (repeats adapt to the op's speed)


@dataclass(frozen=True)
class Timing:
    """Seconds of one call: median and spread over ``repeats`` timed calls."""

    median_s: float
    p10_s: float
    p90_s: float
    repeats: int


def cache_bytes(device: torch.device) -> int:
    """Size of the cache that rotation must defeat: the GPU's L2, or a CPU core's L2 (sysfs; 2 MiB if unknown)."""
    if device.type == "cuda":
        return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 << 20))
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index2/size").read_text().strip()
        mult = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        return int(text.rstrip("KM")) * mult
    except (OSError, ValueError):
        return 2 << 20


def rotation_copies(set_bytes: int, device: torch.device, max_copies: int = 8) -> int:
    """Input copies to rotate so that together they are at least twice the cache (1 when one set already is)."""
    if set_bytes <= 0:
        return 1
    return max(1, min(max_copies, math.ceil(2 * cache_bytes(device) / set_bytes)))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_stats(times: list[float]) -> Timing:
    """Median, p10, p90 and count of measured durations (seconds)."""
    return _stats(times)


def _stats(times: list[float]) -> Timing:
    a = np.asarray(times, dtype=float)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return Timing(float(med), float(min(p10, med)), float(max(p90, med)), int(a.size))


@torch.inference_mode()
def time_call(call: Callable[[int], Any], device: torch.device, settings: TimingSettings = TimingSettings(),
              copies: int = 1) -> Timing:
    """Time ``call(i)``: warm up (at least once per input copy), pick repeats from the warm-up speed, measure."""
    device = torch.device(device)
    warm = max(settings.warmup, copies)
    synchronize(device)
    t0 = time.perf_counter()
    for i in range(warm):
        call(i)
    synchronize(device)
    per_call = max((time.perf_counter() - t0) / warm, 1e-7)
    repeats = int(min(settings.max_repeats, max(settings.min_repeats, settings.target_s / per_call)))
    times: list[float] = []
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
        for i in range(repeats):
            starts[i].record()
            call(warm + i)
            ends[i].record()
        torch.cuda.synchronize(device)
        times = [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]
    else:
        clock = time.perf_counter
        for i in range(repeats):
            a = clock()
            call(warm + i)
            times.append(clock() - a)
    return _stats(times)


def time_host(call: Callable[[int], float], repeats: int, warmup: int = 2) -> Timing:
    """Statistics of host-side durations that ``call(i)`` measures itself and returns (seconds)."""
    for i in range(warmup):
        call(i)
    return _stats([call(warmup + i) for i in range(repeats)])
