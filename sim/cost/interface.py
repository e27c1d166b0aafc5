"""Cost model interface: how long one pipeline stage takes to run one batch.

Implementations: ``RooflineCostModel`` (analytical, the embedded default),
``ConstantCostModel`` (fixed times, for hand-derived tests) and, from a
calibration profile, the profiled model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import NamedTuple

from sim.batch import Batch


class StageCost(NamedTuple):
    """Price of one stage execution: seconds, and one GPU's work (FLOPs, device-memory bytes) for MFU / bandwidth use."""

    time: float
    flops: float = 0.0
    bytes: float = 0.0


class CostModel(ABC):
    """Prices batches. ``num_stages`` is the pipeline depth the model was built for."""

    num_stages: int = 1
    name: str = "abstract"

    @abstractmethod
    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        """Device time (plus communication) of ``batch`` on pipeline ``stage``; excludes host overhead."""

    @abstractmethod
    def host_time(self, batch: Batch) -> float:
        """CPU time to schedule and prepare ``batch`` before it is launched on stage 0."""

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        """Seconds per op (names from ``sim.ops``) for ``batch`` on ``stage``; sums to ``stage_cost().time``."""
        return {"total": self.stage_cost(batch, stage).time}

    def describe(self) -> dict:
        """JSON-able description for ``summary.json``."""
        return {"name": self.name}
