"""Replay a trace through the real engine, driven by the simulator's own scheduler objects, and record the run.

The loop is the simulator's, with a wall clock instead of simpy: a request enters the
scheduler's queue when the clock reaches its arrival time (or all at t=0 with
``offline``); then ``schedule(now)`` -> ``runner.execute(batch)`` -> ``on_batch_done(batch,
now)``. Policies, block manager and request preparation are imported from ``sim``
unchanged, and the outputs use the simulator's schema (``summary.json``,
``requests.csv``, ``batches.csv`` plus measured ``host_s`` and ``device_s``), so a
measured run and a simulated one join on ``batch_id`` and ``request_id``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import pandas as pd
import torch

from engine.device import (
    EngineOutOfMemoryError,
    check_host_memory,
    detect_gpu,
    device_name,
    dtype_bytes,
    is_out_of_memory,
    kv_blocks_for_device,
    oom_message,
    parse_dtype,
    resolve_device,
)
from engine.gc_pause import frozen_heap
from engine.runner import ModelRunner
from engine.speculative import speculate, speculation_outputs
from sim import metrics
from sim.batch import Batch
from sim.catalog.models import ModelSpec
from sim.kv.block_manager import blocks_for
from sim.kv.cache_stats import cache_summary
from sim.kv.memory import DEFAULT_MAX_BATCHED_TOKENS
from sim.request import Request, TraceRequest
from sim.serving.recorder import STAGE_FIELDS
from sim.serving.frontend import PRESETS
from sim.serving.load_verdict import add_load_verdict
from sim.serving.simulator import ServingConfig, SimConfig, _versions, _with_cache_columns
from sim.workload.servable import SkippedRequest, rebase_arrivals

#: batches.csv columns: the simulator's, then the measured split of each iteration's wall time
BATCH_FIELDS: tuple[str, ...] = STAGE_FIELDS + ("host_s", "device_s", "cuda_graph", "graph_captured")
#: KV cache on the CPU when --kv-blocks is not given: twice what every request needs at once, at most this many bytes
CPU_KV_BYTES = 1 << 30


@dataclass
class EngineConfig(ServingConfig):
    """What defines a measured run; ``sim_config()`` gives the matching simulator configuration.

    ``kv_blocks`` None: from device memory (CUDA) or enough for the trace (CPU); ``seed`` also seeds the
    random weights and prompt token ids.
    """

    model: str = "tiny"
    device: str | None = None         # None: cuda when available, else cpu
    dtype: str | None = None          # None: bfloat16 on CUDA, float32 on CPU
    backend: str = "auto"             # attention: auto, sdpa, flex, flash
    offline: bool = False             # every request arrives at t=0
    warmup: int = 3                   # iterations run (and discarded) before measuring
    cuda_graphs: bool | None = None   # None: on for CUDA
    gpu: str | None = None            # catalogue GPU for roofline FLOPs/bytes; None: detected from the device
    checkpoint: str | None = None     # local safetensors directory; None: seeded random weights
    speculative_config: str | None = None  # vLLM's JSON; the engine runs method ngram (engine.speculative)
    spec_acceptance: str | None = None     # unused by the engine (it measures acceptance); kept for the simulator

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")

    def sim_config(self, *, gpu: str, kv_blocks: int) -> SimConfig:
        """The simulator configuration of the same deployment (one replica, TP1, PP1, these KV blocks, and the
        engine's serial loop: it schedules, then runs, as the v0-era engines did, with requests handed to it
        directly, no API server in between)."""
        shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(ServingConfig)}
        shared.update(kv_blocks=kv_blocks, max_batch_size=self.effective_max_batch_size(),  # the engine's limits,
                      token_budget=self.effective_token_budget())  # not the defaults of the simulated GPU
        return SimConfig(**shared, gpu=gpu, async_scheduling=False, frontend="none")  # no API server either


@dataclass
class EngineResult:
    """A measured run: the simulator's summary and tables, plus what only an engine has (the generated ids)."""

    summary: dict[str, Any]
    requests: pd.DataFrame
    batches: pd.DataFrame
    stages: pd.DataFrame
    skipped: list[SkippedRequest] = field(default_factory=list)
    # request id -> output ids (sampled; in a block the trace shares, the key's id fed instead: ModelRunner.execute)
    token_ids: dict[str, list[int]] = field(default_factory=dict)
    speculation: Any = None  # engine.speculative.EngineSpeculation of a speculative run: its lookups

    def table(self, name: str) -> pd.DataFrame:
        """A table by name, as ``SimResult.table`` gives it (the run-folder writer reads either result)."""
        return getattr(self, name)


def cap_prefill_tokens(config: EngineConfig, device: torch.device) -> EngineConfig:
    """``config`` with a per-iteration token limit on CUDA for a policy that has none (Orca, FasterTransformer;
    vLLM v0 has its own default): max(DEFAULT_MAX_BATCHED_TOKENS, the model's context), the tokens the activation
    reserve was sized for (sim.kv.memory), as vLLM bounds an iteration by max_num_batched_tokens. Without it a
    burst of whole prompts (158K tokens in the first batch of a 300-request trace) runs out of memory."""
    if device.type != "cuda" or config.effective_token_budget() is not None:
        return config
    cap = max(DEFAULT_MAX_BATCHED_TOKENS, config.model_spec().max_context)
    return dataclasses.replace(config, token_budget=cap)


def _cpu_kv_blocks(spec: ModelSpec, requests: list[TraceRequest], block_size: int, dtype: torch.dtype) -> int:
    """Default CPU capacity: twice what all requests need at once (never preempts), and at least one max_model_len
    reservation (Orca and FasterTransformer reserve it per request), capped at ``CPU_KV_BYTES``."""
    per_block = 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * dtype_bytes(dtype)
    need = sum(blocks_for(r.prompt_tokens + r.output_tokens, block_size) for r in requests)
    need = max(2 * need, blocks_for(spec.max_context, block_size))
    return max(1, min(need, CPU_KV_BYTES // per_block))


def build_runner(config: EngineConfig, spec: ModelSpec, trace: list[TraceRequest]) -> ModelRunner:
    """The model runner of ``config``, its KV capacity from --kv-blocks, device memory, or the trace (CPU)."""
    device = resolve_device(config.device)
    dtype = parse_dtype(config.dtype, device)
    if config.kv_blocks is not None:
        blocks = config.kv_blocks
    elif device.type == "cuda":
        blocks = kv_blocks_for_device(spec, device, dtype, config.block_size, config.gpu_memory_utilization)
    else:
        blocks = _cpu_kv_blocks(spec, trace, config.block_size, dtype)
    if device.type == "cpu":
        check_host_memory(spec, dtype, blocks, config.block_size)
    try:
        return ModelRunner(spec, device=device, dtype=dtype, kv_blocks=blocks, block_size=config.block_size,
                           backend=config.backend, seed=config.seed, checkpoint=config.checkpoint,
                           cuda_graphs=config.cuda_graphs)
    except Exception as e:
        if is_out_of_memory(e):
            raise EngineOutOfMemoryError(oom_message("kv", device, e)) from e
        raise


def _execute(runner: ModelRunner, batch: Batch) -> None:
    try:
        runner.execute(batch)
    except Exception as e:
        if is_out_of_memory(e):
            raise EngineOutOfMemoryError(oom_message("batch", runner.device, e)) from e
        raise


def warm_up(runner: ModelRunner, config: EngineConfig, requests: list[Request], iterations: int) -> list[float]:
    """Run up to ``iterations`` batches of copies of the first requests on a throwaway scheduler; wall seconds each.

    The copies have their own ids and block manager, so the measured replay starts from a clean
    scheduler; only the device (allocator, kernels, compiled attention, CUDA graphs) is warm.
    """
    if runner.graphs is not None and requests:  # every decode shape the run can reach, before the clock starts
        longest = max(r.prompt_tokens + r.output_tokens for r in requests)
        runner.model.ensure_rope(longest)  # graphs capture the rotary table: size it for the whole run first
        runner.graphs.capture_ahead(min(config.effective_max_batch_size(), len(requests)), longest)
    if iterations <= 0 or not requests:
        return []
    sched = config.make_scheduler(runner.num_blocks)
    copies = [Request(f"warmup-{i}-{r.request_id}", 0.0, r.prompt_tokens, r.output_tokens, index=i)
              for i, r in enumerate(requests[:config.effective_max_batch_size()])]
    for r in copies:
        sched.add_request(r)
    times: list[float] = []
    while len(times) < iterations:
        t0 = time.perf_counter()
        batch = sched.schedule(0.0)
        if batch is None:
            break
        _execute(runner, batch)
        sched.on_batch_done(batch, 0.0)
        times.append(time.perf_counter() - t0)
    for r in copies:
        runner.release(r)
    return times


def replay(trace: list[TraceRequest], config: EngineConfig | None = None, *, runner: ModelRunner | None = None,
           model: ModelSpec | None = None, source: str = "<trace>",
           on_finish: Callable[[Request], None] | None = None,
           on_batch: Callable[[Batch], None] | None = None, progress: bool = False,
           closed_loop: Any = None, **overrides: Any) -> EngineResult:
    """Serve ``trace`` on the real engine and measure it; the engine-side counterpart of ``sim.simulate``.

    ``runner`` reuses a built ``ModelRunner`` (its block size and KV capacity win over
    ``config``); ``on_batch`` sees every measured batch after it completes; keyword
    ``overrides`` patch ``config`` fields. Raises ``EngineOutOfMemoryError`` with the
    setting to change when the device runs out of memory. ``closed_loop`` (``sim.serving.closed_loop.ClosedLoop``)
    sends each request once one of its clients is free, as the simulator does with it.
    """
    config = dataclasses.replace(config or EngineConfig(), **overrides)
    spec = model or (runner.spec if runner is not None else config.model_spec())
    if config.offline:
        trace = [dataclasses.replace(tr, arrival_time=0.0) for tr in trace]
    if runner is None:
        runner = build_runner(config, spec, trace)
    config = cap_prefill_tokens(config, runner.device)
    config = dataclasses.replace(config, block_size=runner.block_size,
                                 model=spec.name if model is not None else config.model)
    device = runner.device
    gpu = detect_gpu(device, config.gpu)
    requests, skipped = config.servable(trace, spec, runner.num_blocks, source)
    origin = rebase_arrivals(requests)
    sched = config.make_scheduler(runner.num_blocks)
    warm = warm_up(runner, config, requests, config.warmup)
    speculation = speculate(config, sched, runner, spec) if config.speculative_config else None

    try:
        with frozen_heap():  # no full garbage collection inside the measured loop (engine.gc_pause)
            rows, micro, batches, token_ids = _serve(runner, sched, requests, config, on_finish, on_batch,
                                                     progress, closed_loop)
    finally:
        runner.speculation = None  # a reused runner (validate) starts its next run without it

    frame = pd.DataFrame(rows, columns=list(BATCH_FIELDS))
    if gpu is not None and len(batches):  # work done, priced by the roofline of this device after the run
        from sim.cost.roofline import RooflineCostModel
        roof = RooflineCostModel(spec, gpu, dtype_bytes=dtype_bytes(runner.dtype))
        costs = [roof.stage_cost(b, 0) for b in batches]
        frame["flops"] = [c.flops for c in costs]
        frame["bytes"] = [c.bytes for c in costs]
    micro_df = pd.DataFrame(micro, columns=["replica", "batch_id", "scheduled", "host_time", "completed"])
    stages = metrics.stage_bubbles(frame, micro_df).to_pandas() if len(micro_df) else pd.DataFrame()
    sim_cfg = config.sim_config(gpu=gpu.name if gpu else device_name(device), kv_blocks=runner.num_blocks)
    summary = metrics.summarize(
        requests, skipped, trace_len=len(trace), batches=frame, stages=stages, num_blocks=runner.num_blocks,
        block_size=runner.block_size, num_preemptions=sched.num_preemptions, num_gpus=1,
        peak_flops=gpu.bf16_flops if gpu else math.nan, mem_bandwidth=gpu.mem_bandwidth if gpu else math.nan,
        source=source, config=dataclasses.asdict(sim_cfg) | _engine_fields(config, runner),
        cost=_describe(runner, gpu, warm, frame), versions=_versions() | {"torch": torch.__version__},
        memory=_memory(runner, config))
    req_df = metrics.requests_frame(requests)
    if sched.bm.caching:  # the simulator's prefix-cache columns and summary, from the same block manager
        frame, req_df = _with_cache_columns(frame, req_df, requests, [sched])
        summary["prefix_cache"] = cache_summary([sched.bm], [sched.cached_free_log])
    summary["time_origin_s"] = origin
    summary["config"]["effective_token_budget"] = config.effective_token_budget(spec)
    summary["config"]["engine_loop"] = "serial"  # the engine schedules, then runs (no async scheduling)
    summary["config"]["effective_max_num_seqs"] = config.effective_max_batch_size(spec)
    summary["frontend"] = PRESETS["none"].describe()  # requests go to the engine directly: its own times
    add_load_verdict(summary, req_df, frame)  # the saturation verdict, goodput and knob, as the simulator's
    if closed_loop is not None:
        summary["closed_loop"] = closed_loop.describe()
    if speculation is not None:  # the simulator's speculative outputs, from the same scheduler state
        frame, req_df = speculation_outputs(summary, frame, req_df, requests, sched, speculation)
    return EngineResult(summary, req_df, frame, stages, skipped, token_ids, speculation)


def _serve(runner: ModelRunner, sched: Any, requests: list[Request], config: EngineConfig,
           on_finish: Callable[[Request], None] | None, on_batch: Callable[[Batch], None] | None,
           progress: bool, closed_loop: Any = None
           ) -> tuple[list[tuple], list[tuple], list[Batch], dict[str, list[int]]]:
    """The real-time serving loop: admit arrivals (with ``closed_loop``, once a client is free to send them),
    schedule, execute, record each batch's times."""
    from tqdm import tqdm
    bar = tqdm(total=len(requests), unit="req", desc="engine", disable=not progress, mininterval=0.5)
    token_ids: dict[str, list[int]] = {}
    rows: list[tuple] = []
    micro: list[tuple] = []
    batches: list[Batch] = []
    pending = deque(requests)
    clock = time.perf_counter
    t0 = clock()

    def sendable(r: Request) -> float:  # when the next request goes out: its arrival, or a client's turn
        return r.arrival_time if closed_loop is None else closed_loop.next_send(r.arrival_time)

    while True:
        start = clock() - t0
        while pending and sendable(pending[0]) <= start:
            r = pending.popleft()
            if closed_loop is not None:
                closed_loop.send(r)
            r.replica = 0
            sched.add_request(r)
        batch = sched.schedule(start)
        if batch is None:
            if pending and sendable(pending[0]) < math.inf:  # idle: sleep until the next arrival
                wait = sendable(pending[0]) - (clock() - t0)
                if wait > 0:
                    time.sleep(wait)
                continue
            if sched.has_unfinished():
                raise RuntimeError(f"scheduler {config.scheduler} stalled with {len(sched.waiting)} waiting and "
                                   f"{len(sched.running)} running requests and nothing it can schedule")
            break
        _execute(runner, batch)
        done = clock() - t0  # sampled ids are on the host: the tokens' time
        finished = sched.on_batch_done(batch, done)
        for r in finished:
            token_ids[r.request_id] = runner.token_ids(r)[r.prompt_tokens:]
            runner.release(r)
            if closed_loop is not None:
                closed_loop.release(done)
        end = clock() - t0
        tm = runner.last_timing
        launch = done - tm["forward_s"] - (tm["total_s"] - tm["host_s"] - tm["forward_s"])
        host = (end - start) - tm["forward_s"]
        rows.append((0, 0, batch.batch_id, launch, done, batch.num_prefill_tokens, batch.num_decode_tokens,
                     len(batch.items), len(batch.prefill_items), batch.kv_blocks_used, 0.0, 0.0,
                     host, tm["device_s"], bool(tm["cuda_graph"]), bool(tm["graph_captured"])))
        micro.append((0, batch.batch_id, start, launch - start, done))
        batches.append(batch)
        if finished:
            bar.update(len(finished))
            if on_finish is not None:
                for r in finished:
                    on_finish(r)
        if on_batch is not None:
            on_batch(batch)
    bar.close()
    return rows, micro, batches, token_ids


def _engine_fields(config: EngineConfig, runner: ModelRunner) -> dict[str, Any]:
    """Engine settings added to summary.json's config, next to the simulator's fields."""
    return {"device": str(runner.device), "dtype": str(runner.dtype).removeprefix("torch."),
            "backend": runner.backend.name, "offline": config.offline, "warmup": config.warmup,
            "cuda_graphs": bool(runner.cuda_graphs), "checkpoint": config.checkpoint,
            "gc": "frozen after warm-up"}


def _memory(runner: ModelRunner, config: EngineConfig) -> dict[str, Any]:
    """summary.json's memory entry: the engine's real split (the simulator's plan has the same keys where they apply)."""
    spec, elem = runner.spec, dtype_bytes(runner.dtype)
    per_block = runner.kv_cache.num_bytes // runner.kv_cache.num_blocks
    out: dict[str, Any] = {
        "model": spec.name, "gpu": device_name(runner.device), "tp": 1, "pp": 1, "dtype_bytes": elem,
        "weight_bytes": runner.model.num_bytes, "kv_bytes_per_token": per_block // runner.block_size,
        "block_size": runner.block_size, "bytes_per_block": per_block, "num_blocks": runner.num_blocks,
        "kv_cache_bytes": runner.num_blocks * per_block, "max_tokens": runner.num_blocks * runner.block_size,
        "kv_blocks_override": config.kv_blocks,
    }
    if runner.device.type == "cuda":
        out["gpu_memory_bytes"] = torch.cuda.get_device_properties(runner.device).total_memory
        out["gpu_memory_utilization"] = config.gpu_memory_utilization
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(runner.device)
    return out


def _describe(runner: ModelRunner, gpu, warm: list[float], frame: pd.DataFrame) -> dict[str, Any]:
    """summary.json's cost_model entry of a measured run: where, how, and the measured time split."""
    host = float(frame["host_s"].sum()) if len(frame) else 0.0
    dev = float(frame["device_s"].sum()) if len(frame) else 0.0
    return {
        "name": "measured",
        "device": str(runner.device),
        "device_name": device_name(runner.device),
        "dtype": str(runner.dtype).removeprefix("torch."),
        "backend": runner.backend.name,
        "cuda_graphs": bool(runner.cuda_graphs),
        "cuda_graph_captures": runner.graphs.captures if runner.graphs is not None else 0,
        "device_timing": "cuda events" if runner.device.type == "cuda" else "wall clock",
        "roofline_gpu": gpu.name if gpu else None,
        "warmup": {"iterations": len(warm), "wall_s": float(sum(warm)),
                   "mean_s": float(sum(warm) / len(warm)) if warm else None},
        "host_s": host,
        "device_s": dev,
        "host_fraction": host / (host + dev) if host + dev > 0 else None,
    }
