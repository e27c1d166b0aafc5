"""``simulate()``: the Python API behind ``servesim simulate``; builds the deployment, runs it, summarises it."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from sim import metrics
from sim.cluster import run_cluster
from sim.cost.base import CostModel
from sim.hardware import get_gpu
from sim.kv_cache import BlockManager
from sim.memory import InfeasibleConfigError, plan_memory
from sim.models import ModelSpec, get_model
from sim.request import Request, TraceRequest
from sim.schedulers import SchedulerConfig, make_scheduler, scheduler_class
from sim.workload import SkippedRequest, prepare_requests


@dataclass
class SimConfig:
    """Everything that defines a simulated deployment (recorded in summary.json)."""

    model: str = "llama-2-7b"
    gpu: str = "a100-80gb"
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    scheduler: str = "sarathi"
    token_budget: int | None = None
    max_batch_size: int = 128
    chunk_align: int = 0
    block_size: int = 16
    watermark: float = 0.01
    gpu_memory_utilization: float = 0.9
    kv_blocks: int | None = None  # override the computed KV capacity (blocks per replica)
    router: str = "round_robin"
    strict: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("tp", "pp", "replicas", "block_size", "max_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")


@dataclass
class SimResult:
    """What a run produced: the summary dict and the per-request / per-batch tables."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    batches: pd.DataFrame
    microbatches: pd.DataFrame
    stages: pd.DataFrame
    skipped: list[SkippedRequest] = field(default_factory=list)


def _versions() -> dict[str, str]:
    import simpy

    from sim import __version__
    return {"servesim": __version__, "python": platform.python_version(), "simpy": simpy.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def simulate(trace: list[TraceRequest], config: SimConfig | None = None, *, cost_model: CostModel | None = None,
             model: ModelSpec | None = None, source: str = "<trace>",
             on_finish: Callable[[Request], None] | None = None, **overrides: Any) -> SimResult:
    """Replay ``trace`` through the configured deployment and return metrics.

    ``cost_model`` defaults to the roofline model of ``config.gpu``; ``model``
    overrides the catalogue lookup (e.g. a Hugging Face config); keyword
    ``overrides`` patch ``config`` fields.
    """
    config = dataclasses.replace(config or SimConfig(), **overrides)
    model = model or get_model(config.model)
    gpu = get_gpu(config.gpu)
    if cost_model is None:
        from sim.cost.roofline import RooflineCostModel
        cost_model = RooflineCostModel(model, gpu, tp=config.tp, pp=config.pp)
    try:
        memory = plan_memory(model, gpu, tp=config.tp, pp=config.pp, block_size=config.block_size,
                             gpu_memory_utilization=config.gpu_memory_utilization).to_dict()
    except InfeasibleConfigError as e:
        if config.kv_blocks is None:
            raise
        memory = {"infeasible": str(e)}  # the user fixed the capacity; say what the catalogue thinks
    num_blocks = memory["num_blocks"] if config.kv_blocks is None else config.kv_blocks
    if config.kv_blocks is not None:
        memory["kv_blocks_override"] = config.kv_blocks
    sched_cfg = SchedulerConfig(config.max_batch_size, config.token_budget, config.chunk_align)
    policy = scheduler_class(config.scheduler)
    budget = config.token_budget if config.token_budget is not None else policy.default_token_budget

    probe = BlockManager(num_blocks, config.block_size, config.watermark)
    requests, skipped = prepare_requests(trace, model=model, block_manager=probe, token_budget=budget,
                                         chunks_prefills=policy.chunks_prefills, strict=config.strict,
                                         source=source)
    requests.sort(key=lambda r: r.arrival_time)  # the arrival process replays in time order (stable)
    schedulers = [make_scheduler(config.scheduler, sched_cfg, BlockManager(num_blocks, config.block_size,
                                                                           config.watermark))
                  for _ in range(config.replicas)]
    rec = run_cluster(requests, schedulers, cost_model, config.pp, config.router, on_finish)

    batches = rec.stage_frame()
    micro = rec.microbatch_frame()
    req_df, gaps = metrics.requests_frame(requests, return_gaps=True)
    if any(r.completion_time is None for r in requests):
        gaps = None  # the summary counts completed requests only
    stages = metrics.stage_bubbles(batches, micro) if len(micro) else pd.DataFrame()
    summary = metrics.summarize(
        requests, skipped, trace_len=len(trace), batches=batches, stages=stages, num_blocks=num_blocks,
        block_size=config.block_size, num_preemptions=sum(s.num_preemptions for s in schedulers),
        num_gpus=config.replicas * config.tp * config.pp, peak_flops=gpu.bf16_flops,
        mem_bandwidth=gpu.mem_bandwidth, source=source, config=dataclasses.asdict(config),
        cost=cost_model.describe(), versions=_versions(), gpus_per_stage=config.tp, memory=memory, gaps=gaps)
    return SimResult(summary, req_df, batches, micro, stages, skipped)
