"""``simulate()``: the Python API behind ``servesim simulate``; builds the deployment, runs it, summarises it."""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pandas as pd

from sim import metrics
from sim.cluster import MICROBATCH_FIELDS, STAGE_FIELDS, run_cluster
from sim.cost.base import CostModel
from sim.hardware import GPUSpec, get_gpu
from sim.kv_cache import BlockManager
from sim.memory import kv_cache_blocks
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
    if config.kv_blocks is not None:
        num_blocks = config.kv_blocks
    else:
        num_blocks = kv_cache_blocks(model, gpu, tp=config.tp, pp=config.pp, block_size=config.block_size,
                                     gpu_memory_utilization=config.gpu_memory_utilization)
    sched_cfg = SchedulerConfig(config.max_batch_size, config.token_budget, config.chunk_align)
    policy = scheduler_class(config.scheduler)
    budget = config.token_budget if config.token_budget is not None else policy.default_token_budget

    probe = BlockManager(num_blocks, config.block_size, config.watermark)
    requests, skipped = prepare_requests(trace, model=model, block_manager=probe, token_budget=budget,
                                         chunks_prefills=policy.chunks_prefills, strict=config.strict,
                                         source=source)
    schedulers = [make_scheduler(config.scheduler, sched_cfg, BlockManager(num_blocks, config.block_size,
                                                                           config.watermark))
                  for _ in range(config.replicas)]
    rec = run_cluster(requests, schedulers, cost_model, config.pp, config.router, on_finish)

    batches = pd.DataFrame(rec.stage_rows, columns=list(STAGE_FIELDS))
    micro = pd.DataFrame(rec.microbatch_rows, columns=list(MICROBATCH_FIELDS))
    req_df = metrics.requests_frame(requests)
    stages = metrics.stage_bubbles(batches, micro) if len(micro) else pd.DataFrame()
    summary = summarize(requests, skipped, trace_len=len(trace), batches=batches, stages=stages,
                        num_blocks=num_blocks, config=config, gpu=gpu, cost_model=cost_model,
                        num_preemptions=sum(s.num_preemptions for s in schedulers), source=source)
    return SimResult(summary, req_df, batches, micro, stages, skipped)


def summarize(requests: list[Request], skipped: list[SkippedRequest], *, trace_len: int, batches: pd.DataFrame,
              stages: pd.DataFrame, num_blocks: int, config: SimConfig, gpu: GPUSpec, cost_model: CostModel,
              num_preemptions: int, source: str) -> dict[str, Any]:
    """The summary.json dictionary (every metric, the config, versions)."""
    done = [r for r in requests if r.completion_time is not None]
    ttft = [r.token_times[0] - r.arrival_time for r in done]
    e2e = [r.completion_time - r.arrival_time for r in done]
    tpot = [(r.completion_time - r.token_times[0]) / (len(r.token_times) - 1) for r in done if len(r.token_times) > 1]
    delay = [r.first_scheduled_time - r.arrival_time for r in done]
    out_tokens = sum(len(r.token_times) for r in done)
    in_tokens = sum(r.prompt_tokens for r in done)
    start = min((r.arrival_time for r in requests), default=0.0)
    end = max((r.completion_time for r in done), default=start)
    makespan = end - start
    reasons: dict[str, int] = {}
    for s in skipped:
        reasons[s.code] = reasons.get(s.code, 0) + 1
    num_gpus = config.replicas * config.tp * config.pp
    first_stage = batches[batches["stage"] == 0] if len(batches) else batches
    kinds = {"prefill": 0, "decode": 0, "mixed": 0}
    if len(first_stage):
        pre = first_stage["num_prefill_tokens"].to_numpy() > 0
        dec = first_stage["num_decode_tokens"].to_numpy() > 0
        kinds = {"prefill": int((pre & ~dec).sum()), "decode": int((dec & ~pre).sum()), "mixed": int((pre & dec).sum())}
    flops = float(batches["flops"].sum()) if len(batches) else 0.0
    nbytes = float(batches["bytes"].sum()) if len(batches) else 0.0
    denom = makespan * num_gpus
    return {
        "source": source,
        "config": dataclasses.asdict(config),
        "cost_model": cost_model.describe(),
        "requests": {
            "in_trace": trace_len, "simulated": len(requests), "completed": len(done), "skipped": len(skipped),
            "skipped_by_reason": reasons,
            "skipped_examples": [s.where(source) for s in skipped[:20]],
        },
        "latency_s": {
            "ttft": metrics.describe(ttft), "tbt": metrics.describe(metrics.token_gaps(done)),
            "tpot": metrics.describe(tpot), "e2e": metrics.describe(e2e),
            "scheduling_delay": metrics.describe(delay),
        },
        "throughput": {
            "makespan_s": makespan,
            "requests_per_s": len(done) / makespan if makespan > 0 else None,
            "output_tokens_per_s": out_tokens / makespan if makespan > 0 else None,
            "total_tokens_per_s": (out_tokens + in_tokens) / makespan if makespan > 0 else None,
            "input_tokens": in_tokens, "output_tokens": out_tokens,
        },
        "kv_cache": {
            "blocks_per_replica": num_blocks, "block_size": config.block_size,
            "mean_utilization": float(first_stage["kv_blocks_used"].mean() / num_blocks) if len(first_stage) else 0.0,
            "max_utilization": float(first_stage["kv_blocks_used"].max() / num_blocks) if len(first_stage) else 0.0,
            "preemptions": num_preemptions,
            "preempted_requests": sum(1 for r in requests if r.num_preemptions),
        },
        "batches": {
            "iterations": len(first_stage), **{f"{k}_only" if k != "mixed" else k: v for k, v in kinds.items()},
            "mean_size": float(first_stage["batch_size"].mean()) if len(first_stage) else 0.0,
            "mean_tokens": float((first_stage["num_prefill_tokens"] + first_stage["num_decode_tokens"]).mean())
            if len(first_stage) else 0.0,
        },
        "pipeline": {
            "stages": stages.to_dict(orient="records") if len(stages) else [],
            "mean_bubble_fraction": float(stages["bubble_fraction"].mean()) if len(stages) else 0.0,
            "median_bubble_s": float(stages["median_bubble_s"].median()) if len(stages) else 0.0,
        },
        "utilization": {
            "num_gpus": num_gpus,
            "mfu": flops / (denom * gpu.bf16_flops) if denom > 0 else None,
            "memory_bandwidth_utilization": nbytes / (denom * gpu.mem_bandwidth) if denom > 0 else None,
        },
        "versions": _versions(),
    }
