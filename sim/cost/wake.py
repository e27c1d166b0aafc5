"""The cold start of an engine that sat idle, as a calibration profile measured it (its ``wake`` table).

After ``idle`` seconds without work the engine wakes late (its sleep oversleeps) and its first
iteration runs slower (caches and TLBs refilled, the CPU leaving a power state). The profile holds,
per measured idle gap, the late wake-up and the extra host and device seconds
(``calibration/wake_bench.py``); between gaps they are interpolated, monotone in the idle time,
from zero at no idle, and held beyond the longest gap.
"""

from __future__ import annotations

from typing import Any

from sim.cost.tables import Table1D

COLUMNS: tuple[str, ...] = ("latency_s", "host_extra_s", "device_extra_s")


class WakeTable:
    """(late wake-up, extra host, extra device) seconds of the first iteration after an idle gap."""

    def __init__(self, wake: dict[str, Any]) -> None:
        idle = [0.0, *wake["idle_s"]]
        self._tables = tuple(Table1D(idle, [0.0, *wake.get(c, [0.0] * len(wake["idle_s"]))]) for c in COLUMNS)

    def __call__(self, idle_s: float) -> tuple[float, float, float]:
        late, host, device = self._tables
        return late(idle_s), host(idle_s), device(idle_s)
