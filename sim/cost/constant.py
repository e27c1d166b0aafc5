"""A cost model with fixed times: hand-derivable TTFT/TBT for tests and for reasoning about policies."""

from __future__ import annotations

from sim.batch import Batch
from sim.cost.interface import CostModel, StageCost


class ConstantCostModel(CostModel):
    """Each stage takes ``iteration_time + per_token x tokens``; host overhead is ``host_time`` per batch."""

    name = "constant"

    def __init__(self, iteration_time: float = 1.0, per_token: float = 0.0, host: float = 0.0,
                 num_stages: int = 1) -> None:
        self.iteration_time = iteration_time
        self.per_token = per_token
        self.host = host
        self.num_stages = num_stages

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        return StageCost(self.iteration_time + self.per_token * (batch.num_prefill_tokens + batch.num_decode_tokens))

    def host_time(self, batch: Batch) -> float:
        return self.host

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        return {"constant": self.stage_cost(batch, stage).time}

    def describe(self) -> dict:
        return {"name": self.name, "iteration_time": self.iteration_time, "per_token": self.per_token,
                "host": self.host}
