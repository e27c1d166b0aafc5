"""``simulate()``: the Python API behind ``servesim simulate``; builds the deployment, runs it, summarises it."""

from __future__ import annotations

import dataclasses
import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sim import metrics
from sim.catalog.hardware import get_gpu
from sim.catalog.models import ModelSpec, check_weight_dtype, kv_dtype_bytes, with_max_model_len
from sim.cost.interface import CostModel
from sim.gap_log import EXACT_LIMIT, GapLog
from sim.kv.block_manager import BlockManager
from sim.kv.memory import InfeasibleConfigError, MemoryPlan, plan_memory
from sim.kv.cache_stats import cache_summary
from sim.kv.prefix_cache import CachingBlockManager
from sim.request import Request, TraceRequest
from sim.schedulers import Scheduler, SchedulerConfig, make_scheduler, scheduler_class
from sim.schedulers.base import FOLD_EVERY_TOKENS, KV_RESERVATIONS
from sim.schedulers.virtual_engines import VirtualEngines, num_virtual_engines
from sim.schedulers.vllm_v1 import USAGE_CONTEXTS
from sim.serving.async_loop import AsyncReplica
from sim.serving.closed_loop import ClosedLoop
from sim.serving.cluster import run_cluster
from sim.serving.frontend import PRESETS, Frontend, client_latency, client_view, parse_frontend, to_engine
from sim.serving.load_verdict import add_load_verdict
from sim.spec.run import add_spec_outputs, blocks_with_drafter, spec_cost, spec_of
from sim.spec.run import enable as enable_speculation
from sim.table import Table, column
from sim.workload.servable import SkippedRequest, prepare_requests, rebase_arrivals

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class ServingConfig:
    """What the simulator and the engine share: the model, the scheduler and its KV cache."""

    model: str = "llama-2-7b"
    scheduler: str = "sarathi"
    token_budget: int | None = None
    max_batch_size: int | None = None  # vLLM's max_num_seqs; None: the policy's default (vllm_v1: vLLM's, by GPU)
    chunk_align: int = 0
    block_size: int = 16
    watermark: float = 0.01
    gpu_memory_utilization: float = 0.9
    kv_blocks: int | None = None  # override the computed KV capacity (blocks per replica)
    strict: bool = False
    seed: int = 0
    max_model_len: int | None = None  # override the model's context length (vLLM's --max-model-len)
    enable_prefix_caching: bool | None = None  # None: the policy's default (on for vllm_v1, as vLLM)
    usage_context: str = "api-server"  # vLLM's defaults differ for its API server and its offline LLM class
    kv_reservation: str = "max-model-len"  # Orca/FT reserve max_model_len per request; "oracle": a what-if

    def __post_init__(self) -> None:
        for name in ("block_size", "max_batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_reservation not in KV_RESERVATIONS:
            raise ValueError(f"kv_reservation must be one of {', '.join(KV_RESERVATIONS)}, got {self.kv_reservation!r}")
        if self.usage_context not in USAGE_CONTEXTS:
            raise ValueError(f"usage_context must be one of {', '.join(USAGE_CONTEXTS)}, got {self.usage_context!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be in [0, 1), got {self.watermark}")
        if self.kv_blocks is not None and self.kv_blocks < 1:
            raise ValueError(f"kv_blocks must be >= 1, got {self.kv_blocks}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")

    def model_spec(self) -> ModelSpec:
        """The model's shape, with its context length set to ``max_model_len`` when given."""
        return with_max_model_len(self.model, self.max_model_len)

    def servable(self, trace: list[TraceRequest], model: ModelSpec, num_blocks: int,
                 source: str) -> tuple[list[Request], list[SkippedRequest]]:
        """The requests this deployment can ever serve, in arrival order, and the others with the reason."""
        if self.block_size > model.max_context:
            raise ValueError(f"block_size {self.block_size} exceeds {model.name}'s maximum context of "
                             f"{model.max_context} tokens (vLLM uses 16)")
        policy = scheduler_class(self.scheduler)
        budget = self.effective_token_budget(model)
        requests, skipped = prepare_requests(
            trace, model=model, block_manager=BlockManager(num_blocks, self.block_size, self.watermark),
            token_budget=budget, chunks_prefills=policy.chunks_prefills, strict=self.strict, source=source)
        requests.sort(key=lambda r: r.arrival_time)  # replayed in time order (stable: trace order on ties)
        return requests, skipped

    def defaults_device(self) -> tuple[float | None, str]:
        """(memory in bytes, name) of the device vLLM's defaults depend on; (None, "") when not a catalogue GPU."""
        return None, ""

    def batch_defaults(self, model: ModelSpec | None = None) -> tuple[int | None, int]:
        """The policy's (token budget, max running requests) for this model, device and usage context."""
        max_context = (model or self.model_spec()).max_context
        return scheduler_class(self.scheduler).batch_defaults(max_context, *self.defaults_device(), self.usage_context)

    def effective_token_budget(self, model: ModelSpec | None = None) -> int | None:
        """The per-iteration token budget: the one given, else the policy's default (vLLM's for vllm_v1)."""
        return self.token_budget if self.token_budget is not None else self.batch_defaults(model)[0]

    def effective_max_batch_size(self, model: ModelSpec | None = None) -> int:
        """Requests running at once: the one given, else the policy's default (vLLM's for vllm_v1)."""
        return self.max_batch_size if self.max_batch_size is not None else self.batch_defaults(model)[1]

    @property
    def prefix_caching(self) -> bool:
        """Whether the KV cache shares prompt prefixes: as given, else the policy's default."""
        if self.enable_prefix_caching is not None:
            return self.enable_prefix_caching
        return scheduler_class(self.scheduler).default_prefix_caching

    def make_block_manager(self, num_blocks: int) -> BlockManager:
        """The KV block manager of one replica: with automatic prefix caching or without."""
        cls = CachingBlockManager if self.prefix_caching else BlockManager
        return cls(num_blocks, self.block_size, self.watermark)

    def make_scheduler(self, num_blocks: int) -> Scheduler:
        """A fresh policy object of this configuration over its own block manager of ``num_blocks`` blocks."""
        cfg = SchedulerConfig(self.effective_max_batch_size(), self.effective_token_budget(), self.chunk_align,
                              self.model_spec().max_context, self.kv_reservation)
        return make_scheduler(self.scheduler, cfg, self.make_block_manager(num_blocks))


@dataclass
class SimConfig(ServingConfig):
    """Everything that defines a simulated deployment (recorded in summary.json)."""

    gpu: str = "a100-80gb"
    tp: int = 1
    pp: int = 1
    replicas: int = 1
    router: str = "round_robin"
    router_cache_weight: float = 1024.0  # cache_aware: tokens of prefill one outstanding request is worth
    ep: int = 1                   # expert-parallel degree: 1, or tp (the EP group is the TP group, as vLLM's)
    dtype: str = "auto"           # weights: auto (the checkpoint's), bf16, fp16 or fp8
    kv_cache_dtype: str = "auto"  # vLLM's --kv-cache-dtype: auto (the activation dtype) or fp8
    router_skew: float = 0.0      # MoE routing popularity skew (0: uniform; Zipf exponent otherwise)
    async_scheduling: bool | None = None  # vLLM V1's async engine loop; None: on for vllm_v1 with one stage
    virtual_engines: bool | None = None  # vLLM v0 with PP: a scheduler per virtual engine (None: on for vllm)
    frontend: str | None = None   # vllm, none or custom:...; None: vLLM's API server for vllm_v1 as an API server
    speculative_config: str | None = None  # vLLM's --speculative-config JSON (sim.spec); None: off
    spec_acceptance: str | None = None     # per-position acceptance rates, or one geometric rate (sim.spec)

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("tp", "pp", "replicas", "ep"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.frontend is not None:
            parse_frontend(self.frontend)
        for name in ("router_skew", "router_cache_weight"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")

    def defaults_device(self) -> tuple[float | None, str]:
        gpu = get_gpu(self.gpu)
        return gpu.mem_bytes, gpu.name

    @property
    def num_virtual_engines(self) -> int:
        """Schedulers per replica: pp for vLLM v0 (one per virtual engine, each with num_blocks // pp) unless
        ``virtual_engines`` is False (one shared scheduler, as Sarathi-Serve's vLLM baseline), else 1."""
        policy = scheduler_class(self.scheduler)
        if self.virtual_engines and num_virtual_engines(policy, 2) == 1:
            raise ValueError(f"--virtual-engines is vLLM v0's pipeline-parallel engine: use --scheduler vllm "
                             f"(not {self.scheduler}) or drop the flag")
        return 1 if self.virtual_engines is False else num_virtual_engines(policy, self.pp)

    def servable(self, trace: list[TraceRequest], model: ModelSpec, num_blocks: int,
                 source: str) -> tuple[list[Request], list[SkippedRequest]]:
        """As ServingConfig's, against one virtual engine's share of the blocks (a request never spans two)."""
        return super().servable(trace, model, num_blocks // self.num_virtual_engines, source)

    def make_scheduler(self, num_blocks: int) -> Scheduler:
        """One replica's scheduler; vLLM v0 with PP: one per virtual engine behind VirtualEngines."""
        n = self.num_virtual_engines
        if n == 1:
            return super().make_scheduler(num_blocks)
        return VirtualEngines([super(SimConfig, self).make_scheduler(num_blocks // n) for _ in range(n)])

    def effective_frontend(self) -> Frontend:
        """The frontend between clients and the engine: the one given, else vLLM's API server for vllm_v1 serving
        as an API server (the v0-era policies and offline runs: none, their timings are the engine's)."""
        if self.frontend is not None:
            return parse_frontend(self.frontend)
        served = self.scheduler == "vllm_v1" and self.usage_context == "api-server"
        return PRESETS["vllm" if served else "none"]

    @property
    def engine_loop(self) -> str:
        """"async" (vLLM V1's async scheduling, sim.serving.async_loop) or "serial" (schedule, then run)."""
        policy = scheduler_class(self.scheduler)
        if self.async_scheduling is None:
            return "async" if policy.default_async_scheduling and self.pp == 1 else "serial"
        if self.async_scheduling and not policy.default_async_scheduling:
            raise ValueError(f"--async-scheduling is vLLM V1's engine loop; {self.scheduler} ran serially "
                             "(schedule, then run): use --scheduler vllm_v1 or drop the flag")
        if self.async_scheduling and self.pp > 1:
            raise ValueError("--async-scheduling with --pp > 1: vLLM V1 overlaps pipeline stages with its batch "
                             "queue instead; drop the flag")
        return "async" if self.async_scheduling else "serial"

    def weight_dtype(self, model: ModelSpec | None = None) -> str:
        """The weights' dtype: the one given, else the checkpoint's."""
        return (model or self.model_spec()).dtype if self.dtype == "auto" else self.dtype

    def roofline_kwargs(self, model: ModelSpec | None = None) -> dict[str, Any]:
        """The deployment's keyword arguments of RooflineCostModel (parallelism, dtypes, routing)."""
        return {"tp": self.tp, "pp": self.pp, "ep": self.ep, "weight_dtype": self.weight_dtype(model),
                "kv_cache_dtype": self.kv_cache_dtype, "router_skew": self.router_skew}

    def plan_memory(self, model: ModelSpec | None = None) -> MemoryPlan:
        """One replica's memory plan (weights in their dtype, sharded by TP, EP and PP; KV in its dtype)."""
        model = model or self.model_spec()
        model.check_ep(self.tp, self.ep)
        return plan_memory(model, get_gpu(self.gpu), tp=self.tp, pp=self.pp, block_size=self.block_size,
                           gpu_memory_utilization=self.gpu_memory_utilization, ep=self.ep,
                           dtype_bytes=check_weight_dtype(self.weight_dtype(model)),
                           kv_dtype_bytes=kv_dtype_bytes(self.kv_cache_dtype))

    def memory(self, model: ModelSpec | None = None) -> tuple[dict[str, Any], int]:
        """(summary.json's memory section, KV blocks per replica): the plan, or ``kv_blocks`` where given (then an
        infeasible plan is only reported: the user fixed the capacity)."""
        try:
            memory = self.plan_memory(model).to_dict()
        except InfeasibleConfigError as e:
            if self.kv_blocks is None:
                raise
            memory = {"infeasible": str(e)}
        if self.kv_blocks is not None:
            memory["kv_blocks_override"] = self.kv_blocks
        return memory, memory["num_blocks"] if self.kv_blocks is None else self.kv_blocks

    def check_router(self) -> None:
        """Refuse routing by cached prefixes without prefix caching."""
        if self.router == "cache_aware" and not self.prefix_caching:
            raise ValueError("--router cache_aware routes by cached prefixes: enable them (--enable-prefix-caching)")

    def peak_flops(self, model: ModelSpec | None = None) -> float:
        """The GPU's dense peak for the weights' dtype (FP8 where the GPU computes in it), for MFU."""
        gpu = get_gpu(self.gpu)
        return gpu.fp8_flops if self.weight_dtype(model) == "fp8" and gpu.has_fp8 else gpu.bf16_flops

    def check(self) -> None:
        """Raise the error simulate() would (unknown model or GPU, weights that do not fit) without simulating."""
        model = self.model_spec()
        get_gpu(self.gpu)
        model.check_ep(self.tp, self.ep)
        check_weight_dtype(self.weight_dtype(model))
        kv_dtype_bytes(self.kv_cache_dtype)
        _ = self.engine_loop  # refuses async scheduling where it is not modelled
        spec_of(self)  # refuses speculative decoding where it is not modelled
        self.make_scheduler(self.memory(model)[1])  # weights and KV fit (or kv_blocks given); Orca's reservation too


def _frame_property(name: str, doc: str) -> property:
    """A ``SimResult`` table read as a DataFrame (built once, on first read) and set as one."""
    return property(lambda self: self._frame(name), lambda self, value: self._tables.__setitem__(name, value),
                    doc=doc)


class SimResult:
    """What a run produced: the summary dict and the per-request / per-batch tables (DataFrames, built on first use
    from the ``Table``s the run made: ``servesim simulate`` writes those without importing pandas)."""

    _NAMES = ("requests", "batches", "microbatches", "stages")

    def __init__(self, summary: dict[str, Any], requests: Any, batches: Any, microbatches: Any, stages: Any,
                 skipped: list[SkippedRequest] | None = None) -> None:
        self.summary = summary
        self._tables = dict(zip(self._NAMES, (requests, batches, microbatches, stages)))
        self.skipped = skipped if skipped is not None else []

    def table(self, name: str) -> Any:
        """The table ``name`` as the run made it (a ``Table`` or a DataFrame), not converted."""
        return self._tables[name]

    def _frame(self, name: str) -> pd.DataFrame:
        t = self._tables[name]
        if isinstance(t, Table):
            t = self._tables[name] = t.to_pandas()
        return t

    requests = _frame_property("requests", "one row per simulated request (requests.csv)")
    batches = _frame_property("batches", "one row per stage execution (batches.csv)")
    microbatches = _frame_property("microbatches", "one row per micro-batch: scheduled, host time, completed")
    stages = _frame_property("stages", "busy and bubble time per (replica, stage)")


#: output tokens up to which finished requests keep every token time (32 bytes each in a Python list)
KEEP_TOKEN_TIMES_UP_TO = 2_000_000


def bound_memory(schedulers: list[Scheduler], requests: list[Request]) -> None:
    """Bound the run's memory (issue 16): past a limit a finished request keeps its figures, not its token times;
    the exact gap log and the token times awaiting a fold are bounded for the run, not per replica."""
    keep = sum(r.output_tokens for r in requests) <= KEEP_TOKEN_TIMES_UP_TO
    for s in schedulers:
        s.keep_token_times = keep
        s.gap_log = GapLog(EXACT_LIMIT // len(schedulers))
        s.fold_every_tokens = max(16384, FOLD_EVERY_TOKENS // len(schedulers))  # (a fold's NumPy calls cost ~30 us)


def add_cache_outputs(summary: dict, batches: Any, req_df: Any, requests: list[Request],
                      schedulers: list[Scheduler], replicas: range | None = None) -> tuple[Any, Any]:
    """With prefix caching: summary.json's ``prefix_cache`` and the cache columns (``replicas``: the schedulers'
    replica indices in ``batches``, default 0..n-1); ``Table``s or DataFrames, returned as they came."""
    batches, req_df = _with_cache_columns(batches, req_df, requests, schedulers, replicas)
    summary["prefix_cache"] = cache_summary([s.bm for s in schedulers], [s.cached_free_log for s in schedulers])
    return batches, req_df


def _with_cache_columns(batches: Any, req_df: Any, requests: list[Request], schedulers: list[Scheduler],
                        replicas: range | None = None) -> tuple[Any, Any]:
    """Prefix caching's columns: each request's cached prompt tokens, each batch's cached free blocks."""
    by_index = {r.index: r.cached_tokens for r in requests}
    req_df = req_df.assign(cached_tokens=[by_index[i] for i in sorted(by_index)])
    if len(batches):
        occ = np.zeros(len(batches), dtype=np.int64)
        for i, s in zip(replicas or range(len(schedulers)), schedulers):
            log = np.asarray(s.cached_free_log, dtype=np.int64)
            rows = column(batches, "replica") == i
            occ[rows] = log[column(batches, "batch_id")[rows]]
        batches = batches.assign(kv_cached_free_blocks=occ)
    return batches, req_df


def _versions() -> dict[str, str]:
    """The versions a run's summary records (pandas' from its installed metadata: a run need not import it)."""
    from importlib.metadata import version

    import simpy

    from sim.version import __version__
    return {"servesim": __version__, "python": platform.python_version(), "simpy": simpy.__version__,
            "numpy": np.__version__, "pandas": version("pandas")}


def simulate(trace: list[TraceRequest], config: SimConfig | None = None, *, cost_model: CostModel | None = None,
             model: ModelSpec | None = None, source: str = "<trace>",
             on_finish: Callable[[Request], None] | None = None, closed_loop: ClosedLoop | None = None,
             spec_proposer: Callable[[Request, int], int] | None = None,
             progress: Callable[[int], None] | None = None, **overrides: Any) -> SimResult:
    """Replay ``trace`` through the configured deployment and return metrics.

    ``cost_model`` defaults to the roofline model of ``config.gpu``; ``model``
    overrides the catalogue lookup (e.g. a Hugging Face config); keyword
    ``overrides`` patch ``config`` fields. ``closed_loop``: send requests as its clients free up
    (``--max-concurrency``) instead of at their arrival times. ``spec_proposer``: drafts found per step
    (``SpecDecoding.proposer``; validate replays the engine's n-gram lookups), else k every step. ``progress``:
    called with counts of finished requests (a progress bar; unlike ``on_finish`` it leaves several round-robin
    replicas free to advance decode stretches apart, ``sim.serving.stretch``).
    """
    config = dataclasses.replace(config or SimConfig(), **overrides)
    model = model or config.model_spec()
    gpu = get_gpu(config.gpu)
    if cost_model is None:
        from sim.cost.roofline import RooflineCostModel
        cost_model = RooflineCostModel(model, gpu, **config.roofline_kwargs(model))
    memory, num_blocks = config.memory(model)
    spec = spec_of(config)  # speculative decoding (sim.spec): the drafter's memory and price
    if spec is not None:
        num_blocks = blocks_with_drafter(num_blocks, memory, spec, model, config.tp,
                                         check_weight_dtype(config.weight_dtype(model)))
        cost_model = spec_cost(cost_model, spec, config, model)
    frontend = config.effective_frontend()
    replica_cls = AsyncReplica if config.engine_loop == "async" else None
    finished = 0

    def count(n: int) -> None:
        nonlocal finished
        finished += n
        if progress is not None:
            progress(n)

    def run(independent: bool) -> tuple:
        requests, skipped = config.servable(trace, model, num_blocks, source)
        origin = rebase_arrivals(requests)
        to_engine(requests, frontend)  # the engine sees a request once the frontend has handled it
        schedulers = [config.make_scheduler(num_blocks) for _ in range(config.replicas)]
        bound_memory(schedulers, requests)
        if spec is not None:
            enable_speculation(schedulers, spec, config.seed, model.max_context)
            for s in schedulers:
                s.spec.proposer = spec_proposer
        config.check_router()
        rec = run_cluster(requests, schedulers, cost_model, config.pp, config.router,
                          closed_loop.chain(on_finish) if closed_loop else on_finish, config.router_cache_weight,
                          replica_cls, closed_loop.arrivals if closed_loop else None, count, independent)
        return requests, skipped, origin, schedulers, rec, rec.take_tables()

    requests, skipped, origin, schedulers, rec, (batches, micro) = run(True)
    if rec.ambiguous:  # two replicas' rows end at the same time after stretches: run it again without them
        if progress is not None:
            progress(-finished)
        requests, skipped, origin, schedulers, rec, (batches, micro) = run(False)
    for s in schedulers:
        s.flush_tokens()
    req_df = metrics.requests_table(requests)
    gaps = GapLog.merged(s.gap_log for s in schedulers)  # finished requests' gaps, every replica
    stages = metrics.stage_bubbles(batches, micro) if len(micro) else Table()
    summary = metrics.summarize(
        requests, skipped, trace_len=len(trace), batches=batches, stages=stages, num_blocks=num_blocks,
        block_size=config.block_size, num_preemptions=sum(s.num_preemptions for s in schedulers),
        num_gpus=config.replicas * config.tp * config.pp,
        peak_flops=config.peak_flops(model),
        mem_bandwidth=gpu.mem_bandwidth, source=source, config=dataclasses.asdict(config),
        cost=cost_model.describe(), versions=_versions(), gpus_per_stage=config.tp, memory=memory, gaps=gaps)
    if config.prefix_caching:
        batches, req_df = add_cache_outputs(summary, batches, req_df, requests, schedulers)
    if spec is not None:
        batches, req_df = add_spec_outputs(summary, batches, req_df, requests, schedulers, gaps)
    if frontend.active:  # requests.csv and latency_s as the client sees them; the engine's own kept beside
        req_df = client_view(req_df, frontend, frontend.inbound(column(req_df, "prompt_tokens")))
    client_latency(summary, req_df, frontend)
    if config.replicas > 1:  # how the router spread the load
        per = [sum(1 for r in requests if r.replica == i) for i in range(config.replicas)]
        mean = sum(per) / len(per)
        summary["routing"] = {"policy": config.router, "requests_per_replica": per,
                              "imbalance_max_over_mean": max(per) / mean if mean else None}
    summary["time_origin_s"] = origin  # arrivals and every time in the outputs count from here
    summary["config"]["effective_token_budget"] = config.effective_token_budget(model)
    summary["config"]["engine_loop"] = config.engine_loop
    summary["config"]["effective_max_num_seqs"] = config.effective_max_batch_size(model)
    add_load_verdict(summary, req_df, batches)  # saturation, goodput (default SLO), the knob at its limit
    if closed_loop is not None:
        summary["closed_loop"] = closed_loop.describe()
    return SimResult(summary, req_df, batches, micro, stages, skipped)
