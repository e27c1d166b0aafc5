"""Cost model interface: how long one pipeline stage takes to run one batch.

Implementations: ``RooflineCostModel`` (analytical, the embedded default),
``ConstantCostModel`` (fixed times, for hand-derived tests) and, from a
calibration profile, the profiled model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, NamedTuple

from sim.batch import Batch
from sim.ops import DENSE_MLP_OPS, FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, MOE_OPS, STAGE_OPS

PricedOps = dict[str, tuple[float, str]]  # op -> (seconds, where the price comes from)
OpCost = tuple[float, float, float]  # one op's (seconds, flops, bytes)
ZERO_COST: OpCost = (0.0, 0.0, 0.0)


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

    def wake_time(self, idle_s: float) -> tuple[float, float, float]:
        """After ``idle_s`` without work: (seconds the host wakes late, extra host seconds, extra device seconds)
        of the first iteration (caches gone cold, the CPU in a power state, a late timer). Zero unless
        measured (a calibration profile's ``wake`` table)."""
        return 0.0, 0.0, 0.0

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        """Seconds per op (names from ``sim.ops``) for ``batch`` on ``stage``; sums to ``stage_cost().time``."""
        return {"total": self.stage_cost(batch, stage).time}

    def describe(self) -> dict:
        """JSON-able description for ``summary.json``."""
        return {"name": self.name}


class DelegatingCost(CostModel):
    """Prices with ``inner`` unchanged; subclasses watch what is priced (override a method, call super())."""

    def __init__(self, inner: CostModel) -> None:
        self.inner, self.name, self.num_stages = inner, inner.name, inner.num_stages

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        return self.inner.stage_cost(batch, stage)

    def host_time(self, batch: Batch) -> float:
        return self.inner.host_time(batch)

    def wake_time(self, idle_s: float) -> tuple[float, float, float]:
        return self.inner.wake_time(idle_s)

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        return self.inner.breakdown(batch, stage)

    def describe(self) -> dict:
        return self.inner.describe()


def deployment_fields(cost: Any) -> dict[str, Any]:
    """The head of a table-priced model's ``describe()``: its name, model, GPU, parallelism and stage layers."""
    return {"name": cost.name, "model": cost.model.name, "gpu": cost.gpu.name, "tp": cost.tp, "pp": cost.pp,
            "layers_per_stage": list(cost.layers)}


def op_layers(op: str, layers: int, moe_layers: int, ep: int = 1) -> int:
    """How many of a stage's ``layers`` run layer op ``op``: the dense MLP's ops on its dense layers, the MoE ops on
    its ``moe_layers``, every other layer op on all of them. With expert parallelism a MoE layer's output is
    gathered by its ``ep_combine``, so the MLP all-reduce runs on the dense layers only."""
    if op in DENSE_MLP_OPS or (op == "tp_all_reduce_mlp" and ep > 1):
        return layers - moe_layers
    if op in MOE_OPS:
        return moe_layers
    return layers


def stage_totals(ops: PricedOps, layers: int, first: bool, last: bool, moe_layers: int = 0, ep: int = 1
                 ) -> PricedOps:
    """One stage's totals of per-call op prices: layer ops times the stage's layers that run them (``moe_layers``
    of them sparse), first- and last-stage ops where they run, the stage send/recv except on the last stage; zero
    (source kept) where an op does not run."""
    out = {op: (op_layers(op, layers, moe_layers, ep) * ops[op][0], ops[op][1]) for op in LAYER_OPS + MOE_OPS
           if op in ops}
    for op in FIRST_STAGE_OPS:
        out[op] = ops[op] if first else (0.0, ops[op][1])
    for op in LAST_STAGE_OPS:
        out[op] = ops[op] if last else (0.0, ops[op][1])
    for op in STAGE_OPS:
        out[op] = (0.0, ops[op][1]) if last else ops[op]
    return out
