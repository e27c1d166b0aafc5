"""What to validate (``ValidateConfig``) and at which loads (``LoadLevel``): the trace as given, offline, a rate,
or a fraction of the simulator's predicted capacity."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from sim.catalog.models import ModelSpec, with_max_model_len
from sim.request import TraceRequest

DEFAULT_SCHEDULERS = ("orca", "vllm", "sarathi")


@dataclass
class ValidateConfig:
    """What to validate: model, device, schedulers, their settings, and the load levels (see ``servesim validate``)."""

    model: str = "tiny"
    max_model_len: int | None = None    # override the model's context length (vLLM's --max-model-len)
    schedulers: tuple[str, ...] = DEFAULT_SCHEDULERS
    token_budgets: dict[str, int | None] = field(default_factory=dict)  # per scheduler; "*" for all
    max_batch_size: int = 128
    chunk_align: int = 0
    block_size: int = 16
    watermark: float = 0.01
    enable_prefix_caching: bool | None = None  # None: each policy's default (on for vllm_v1), for engine and simulator
    gpu_memory_utilization: float = 0.9
    kv_blocks: int | None = None
    device: str | None = None
    dtype: str | None = None
    backend: str = "auto"
    warmup: int = 10
    cuda_graphs: bool | None = None
    threads: int | None = None          # CPU intra-op threads while the engine runs (None: the profile's)
    seed: int = 0
    strict: bool = False
    offline: bool = False
    qps: tuple[float, ...] = ()
    loads: tuple[float, ...] = ()
    arrival: str = "poisson"            # arrivals generated when the trace has none (or no trace is given)
    cv: float = 1.0
    slo_tbt_p99: float = 0.1            # capacity bounds for --load
    slo_delay_p50: float = 2.0
    capacity_duration: float = 30.0
    capacity_seeds: int = 1
    plots: bool = True
    timeline: bool = True
    op_check: int = 24                  # engine batches re-run with per-op timers (0: no op check)
    repeats: int = 1                    # engine runs per scheduler and load (the median one is reported)
    max_concurrency: int | None = None  # closed-loop clients on both sides (sim.serving.closed_loop); None: open loop
    think_time_s: float = 0.0           # a client's pause between a completion and its next request
    speculative_config: str | None = None  # vLLM's JSON, method ngram: measured on the engine, fed to the simulator

    def __post_init__(self) -> None:
        from sim.schedulers import scheduler_class
        if not self.schedulers:
            raise ValueError("give at least one scheduler")
        for s in self.schedulers:
            scheduler_class(s)  # raises on an unknown name
        if self.qps and self.loads:
            raise ValueError("give either qps or loads (fractions of the predicted capacity), not both")
        if self.offline and (self.qps or self.loads):
            raise ValueError("offline runs put every request at t=0: they take no qps or loads")
        for q in self.qps:
            if not (math.isfinite(q) and q > 0):
                raise ValueError(f"qps must be finite numbers > 0, got {q}")
        for x in self.loads:
            if not (math.isfinite(x) and x > 0):
                raise ValueError(f"loads must be finite fractions > 0 of the predicted capacity, got {x}")
        for name in ("cv", "slo_tbt_p99", "slo_delay_p50"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        if not (math.isfinite(self.capacity_duration) and self.capacity_duration >= 0):
            raise ValueError(f"capacity_duration must be a finite number of seconds >= 0, got {self.capacity_duration}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.op_check < 0:
            raise ValueError(f"op_check must be >= 0, got {self.op_check}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.capacity_seeds < 1:
            raise ValueError(f"capacity_seeds must be >= 1, got {self.capacity_seeds}")
        for s in set(self.token_budgets) - {"*"}:  # budgets for policies not validated now are ignored
            scheduler_class(s)
        if self.speculative_config is not None:
            from engine.speculative import engine_spec_config, prompt_lookup
            engine_spec_config(self.speculative_config)  # n-gram only: the engine measures its acceptance
            prompt_lookup(self.speculative_config)
            if any(not scheduler_class(s).supports_speculation for s in self.schedulers):
                raise ValueError("--speculative-config is modelled for vLLM V1 only: validate with --schedulers "
                                 "vllm_v1")

    def model_spec(self) -> ModelSpec:
        """The model's shape, with ``max_model_len`` applied."""
        return with_max_model_len(self.model, self.max_model_len)

    def budget(self, scheduler: str) -> int | None:
        """This scheduler's token budget (None: the policy's default)."""
        return self.token_budgets.get(scheduler, self.token_budgets.get("*"))


# ---- load levels ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadLevel:
    """One load point: the trace as given, offline, a rate, or a fraction of the predicted capacity."""

    kind: str                      # "trace", "offline", "qps" or "load"
    qps: float | None = None       # target mean arrival rate (req/s)
    load: float | None = None      # fraction of the capacity for kind "load"
    capacity: float | None = None  # the simulator's predicted capacity (req/s) for kind "load"

    @property
    def name(self) -> str:
        """Short folder-safe name: trace, offline, qps12.5, load0.9."""
        if self.kind == "qps":
            return f"qps{self.qps:g}"
        if self.kind == "load":
            return f"load{self.load:g}"
        return self.kind

    def describe(self) -> str:
        if self.kind == "qps":
            return f"{self.qps:g} req/s"
        if self.kind == "load":
            return f"{self.load:g} x predicted capacity {self.capacity:.4g} req/s = {self.qps:.4g} req/s"
        return "offline (all requests at t=0)" if self.kind == "offline" else "the trace's own arrival times"


def trace_at_rate(trace: Sequence[TraceRequest], qps: float, *, arrival: str = "poisson", cv: float = 1.0,
                  seed: int = 0) -> list[TraceRequest]:
    """``trace`` with its mean arrival rate set to ``qps``: rescaled when it has arrival times, else generated.

    A trace whose arrivals all coincide (lengths only, or offline) gets ``arrival`` gaps
    (poisson, or gamma with ``cv``) drawn from ``seed`` at ``qps``, in trace order.
    """
    from sim.workload.transforms import mean_rate, rescale_rate
    if not math.isnan(mean_rate(trace)):
        return rescale_rate(trace, qps)
    from sim.workload.generator import generate_arrivals
    times = generate_arrivals(np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0]), len(trace),
                              arrival, qps, cv)
    return [dataclasses.replace(r, arrival_time=float(t)) for r, t in zip(trace, times.tolist())]


def offline_trace(trace: Sequence[TraceRequest]) -> list[TraceRequest]:
    """Every request at t=0 (the order of the trace kept)."""
    return [dataclasses.replace(r, arrival_time=0.0) for r in trace]
