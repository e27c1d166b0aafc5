"""Validation: one trace through the real engine (measured) and the simulator with a profile (predicted), compared.

For each scheduler and load level the trace is replayed on the engine in real time and
simulated with the profiled cost model under the same scheduler configuration and the same
KV capacity (the engine's block count). Two kinds of error come out:

- **batch level**: every batch the engine executed is rebuilt exactly (same items, same
  cached contexts) and priced by the cost model (``stage_cost`` summed over stages plus
  ``host_time``); the relative error ``predicted / measured - 1`` is summarised overall, by
  batch kind and by size, for the whole iteration and for its host and device parts;
- **request level**: TTFT, TBT, TPOT, E2E and scheduling delay at P50/P90/P99 and throughput
  of the engine run against the simulated run.

Offline runs (every request at t=0) also check that the engine and the simulator formed
the very same sequence of batches: one policy code drives both. Torch is imported only when
the engine runs, so this module loads without it.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from sim.batch import Batch
from sim.cost.base import CostModel
from sim.request import TraceRequest
from sim.validate_errors import (ExecutedBatch, RecordingCost, batch_errors, composition_match, price_batches,
                                 request_errors)

DEFAULT_SCHEDULERS = ("orca", "vllm", "sarathi")


@dataclass
class ValidateConfig:
    """What to validate: model, device, schedulers, their settings, and the load levels (see ``servesim validate``)."""

    model: str = "tiny"
    schedulers: tuple[str, ...] = DEFAULT_SCHEDULERS
    token_budgets: dict[str, int | None] = field(default_factory=dict)  # per scheduler; "*" for all
    max_batch_size: int = 128
    chunk_align: int = 0
    block_size: int = 16
    watermark: float = 0.01
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
    from sim.transforms import mean_rate, rescale_rate
    if not math.isnan(mean_rate(trace)):
        return rescale_rate(trace, qps)
    from sim.tracegen import generate_arrivals
    times = generate_arrivals(np.random.default_rng(np.random.SeedSequence(seed).spawn(3)[0]), len(trace),
                              arrival, qps, cv)
    return [dataclasses.replace(r, arrival_time=float(t)) for r, t in zip(trace, times.tolist())]


def offline_trace(trace: Sequence[TraceRequest]) -> list[TraceRequest]:
    """Every request at t=0 (the order of the trace kept)."""
    return [dataclasses.replace(r, arrival_time=0.0) for r in trace]


# ---- one run --------------------------------------------------------------------------------------

@dataclass
class RunResult:
    """One scheduler at one load level: both runs, the priced batches and the comparison."""

    name: str
    scheduler: str
    level: LoadLevel
    token_budget: int | None
    engine: Any                   # engine.replay.EngineResult
    simulated: Any                # sim.simulator.SimResult
    batches: pd.DataFrame         # price_batches() frame
    batch_error: dict[str, Any]
    request_error: dict[str, Any]
    composition: dict[str, Any]
    trace_len: int
    executed: list[ExecutedBatch] = field(default_factory=list, repr=False)
    repeats: list[dict[str, Any]] = field(default_factory=list)  # every engine run of this pair (median_run)

    def to_dict(self) -> dict[str, Any]:
        """The run's entry in report.json."""
        eng, sim = self.engine.summary, self.simulated.summary
        return {
            "name": self.name, "scheduler": self.scheduler, "token_budget": self.token_budget,
            "level": dataclasses.asdict(self.level) | {"name": self.level.name, "description": self.level.describe()},
            "requests": {"in_trace": self.trace_len, "completed_measured": eng["requests"]["completed"],
                         "completed_predicted": sim["requests"]["completed"], "skipped": eng["requests"]["skipped"]},
            "iterations": {"measured": eng["batches"]["iterations"], "predicted": sim["batches"]["iterations"]},
            "preemptions": {"measured": eng["kv_cache"]["preemptions"], "predicted": sim["kv_cache"]["preemptions"]},
            "batch_error": self.batch_error,
            "repeats": self.repeats,
            "request_level": self.request_error,
            "composition_match": self.composition | {"offline": self.level.kind == "offline"},
            "files": {"engine": f"{self.name}/engine", "simulator": f"{self.name}/simulator",
                      "batches": f"{self.name}/batch_errors.csv"},
        }


@dataclass
class ValidationResult:
    """Every run of a validation plus what it was run with."""

    config: ValidateConfig
    runs: list[RunResult]
    profile: dict[str, Any]
    device: dict[str, Any]
    source: str
    out: Path | None = None
    notes: list[str] = field(default_factory=list)
    ops: pd.DataFrame | None = None            # sim.validate_ops.op_check table (None: not run)
    ops_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def all_batches(self) -> pd.DataFrame:
        """Every run's priced batches in one frame (column ``run`` names the run)."""
        frames = [r.batches.assign(run=r.name, scheduler=r.scheduler) for r in self.runs if len(r.batches)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def overall(self) -> dict[str, Any]:
        """Batch-level error over every batch of every run."""
        df = self.all_batches
        return batch_errors(df) if len(df) else {}


@contextmanager
def _torch_threads(device_type: str, threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads on a CPU (as calibration does), restoring the setting after."""
    import torch
    if device_type != "cpu" or threads is None:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _engine_config(cfg: ValidateConfig, scheduler: str, offline: bool):
    from engine.replay import EngineConfig
    return EngineConfig(model=cfg.model, scheduler=scheduler, token_budget=cfg.budget(scheduler),
                        max_batch_size=cfg.max_batch_size, chunk_align=cfg.chunk_align, block_size=cfg.block_size,
                        watermark=cfg.watermark, gpu_memory_utilization=cfg.gpu_memory_utilization,
                        kv_blocks=cfg.kv_blocks, strict=cfg.strict, seed=cfg.seed, device=cfg.device,
                        dtype=cfg.dtype, backend=cfg.backend, offline=offline, warmup=cfg.warmup,
                        cuda_graphs=cfg.cuda_graphs)


def run_pair(trace: list[TraceRequest], cfg: ValidateConfig, scheduler: str, level: LoadLevel, runner: Any,
             cost: CostModel, sim_gpu: Any, *, source: str = "<trace>", progress: bool = False) -> RunResult:
    """Replay ``trace`` on the engine (``runner``) and simulate it with ``cost``; compare the two."""
    from engine.replay import replay
    from sim.simulator import simulate

    offline = level.kind == "offline"
    ecfg = _engine_config(cfg, scheduler, offline)
    ran: list[tuple[Batch, float]] = []

    def on_batch(batch: Batch) -> None:  # kept cheap: it runs between the engine's iterations
        ran.append((batch, runner.last_timing["forward_s"]))

    eng = replay(trace, ecfg, runner=runner, source=source, on_batch=on_batch, progress=progress)
    executed = [ExecutedBatch.capture(b, fwd) for b, fwd in ran]  # items are immutable (request, new, cached)
    comps = [ex.composition() for ex in executed]
    eng.summary["timing"] = "measured"
    sim_cfg = ecfg.sim_config(gpu=sim_gpu, kv_blocks=runner.num_blocks)
    recorder = RecordingCost(cost)
    sim_trace = offline_trace(trace) if offline else trace
    simulated = simulate(sim_trace, sim_cfg, cost_model=recorder, source=source)
    simulated.summary["timing"] = "predicted"
    simulated.summary["config"]["gpu"] = getattr(sim_gpu, "name", sim_gpu)
    priced = price_batches(executed, eng.batches, cost)
    name = f"{scheduler}-{level.name}"
    return RunResult(name, scheduler, level, ecfg.token_budget, eng, simulated, priced, batch_errors(priced),
                     request_errors(eng.summary, simulated.summary), composition_match(comps, recorder.ordered()),
                     len(trace), executed)


def median_run(runs: Sequence[RunResult]) -> RunResult:
    """Of repeated runs of one pair, the one whose median batch-level error is the median (lower middle).

    Repeats measure the measurement's own noise (a shared CPU's speed drifts between seconds):
    every run's figures are kept in ``repeats``, the middle run is reported, never the best.
    """
    ranked = sorted(runs, key=lambda r: r.batch_error["total"]["median"] if r.batch_error["total"]["count"]
                    else math.inf)
    kept = ranked[(len(ranked) - 1) // 2]
    kept.repeats = [{"repeat": i + 1, "kept": r is kept, "batches": len(r.batches),
                     "median_error": r.batch_error["total"]["median"],
                     "abs_median_error": r.batch_error["total"]["abs_median"],
                     "sum_error": r.batch_error["sum_error"]} for i, r in enumerate(runs)]
    return kept


# ---- the whole validation ------------------------------------------------------------------------

def predicted_capacity(trace: Sequence[TraceRequest], cfg: ValidateConfig, scheduler: str, cost: CostModel,
                       sim_gpu: Any, kv_blocks: int, workdir: Path) -> float:
    """The simulator's capacity (req/s) for ``scheduler`` with ``cost`` on the trace's lengths (``sim.capacity``)."""
    from sim.capacity import Slo, Workload, find_capacity
    from sim.trace import write_trace
    from sim.simulator import SimConfig

    workdir.mkdir(parents=True, exist_ok=True)
    lengths = workdir / "lengths.jsonl"
    if not lengths.exists():
        write_trace(lengths, offline_trace(trace))
    sim_cfg = SimConfig(model=cfg.model, gpu=sim_gpu, scheduler=scheduler, token_budget=cfg.budget(scheduler),
                        max_batch_size=cfg.max_batch_size, chunk_align=cfg.chunk_align, block_size=cfg.block_size,
                        watermark=cfg.watermark, kv_blocks=kv_blocks, seed=cfg.seed)
    workload = Workload(num_requests=max(len(trace), 100), duration=cfg.capacity_duration,
                        lengths_from=str(lengths), arrival=cfg.arrival if cfg.arrival != "static" else "poisson",
                        cv=cfg.cv)
    res = find_capacity(sim_cfg, workload, Slo.make(cfg.slo_tbt_p99, cfg.slo_delay_p50),
                        seeds=range(cfg.seed, cfg.seed + cfg.capacity_seeds), cost_model=cost, progress=False)
    if res.error or not res.capacity:
        raise ValueError(f"capacity search for {scheduler} failed: {res.error or 'capacity 0'}")
    return float(res.capacity)


def _levels(cfg: ValidateConfig) -> list[LoadLevel]:
    if cfg.offline:
        return [LoadLevel("offline")]
    if cfg.qps:
        return [LoadLevel("qps", qps=q) for q in cfg.qps]
    if cfg.loads:
        return [LoadLevel("load", load=x) for x in cfg.loads]
    return [LoadLevel("trace")]


def load_cost_model(profile: str | Path, model: str):
    """The profiled cost model of ``profile`` for ``model`` on the profile's own device (no transfer)."""
    from sim.cost.profiled import ProfiledCostModel
    return ProfiledCostModel(profile, model)


def validate(trace: list[TraceRequest], config: ValidateConfig, profile: str | Path, *, out: str | Path | None = None,
             source: str = "<trace>", progress: bool = False, log: Callable[[str], None] | None = None,
             cost_model: CostModel | None = None) -> ValidationResult:
    """Validate the simulator against the engine on ``trace`` for every scheduler and load of ``config``.

    ``profile`` is a calibration profile of the engine's device; ``cost_model`` overrides the
    model built from it. With ``out`` every run folder, ``batch_errors.csv``, ``report.md``,
    ``report.json`` and the plots are written there. Raises ValueError on an unusable setting.
    """
    from engine.device import detect_gpu, device_name, resolve_device
    from engine.replay import build_runner
    from sim.models import get_model
    from tqdm import tqdm

    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not trace:
        raise ValueError("the trace holds no request")
    cost = cost_model or load_cost_model(profile, config.model)
    prof = getattr(cost, "profile", None)
    meta = prof.meta if prof is not None else {}
    device = resolve_device(config.device)
    notes: list[str] = []
    pdev = (meta.get("device") or {})
    if pdev.get("type") and pdev["type"] != device.type:
        raise ValueError(f"profile {profile} was measured on {pdev['type']} ({pdev.get('name')}) but the engine runs "
                         f"on {device.type}: calibrate on the same device (servesim calibrate --device {device.type})")
    engine_gpu = detect_gpu(device, None)
    if device.type == "cuda" and prof is not None and prof.gpu and engine_gpu is not None and engine_gpu.name != prof.gpu:
        notes.append(f"profile measured on {prof.gpu}, engine runs on {engine_gpu.name}: predictions are for the "
                     f"profile's GPU")
    threads = config.threads if config.threads is not None else (pdev.get("threads") if device.type == "cpu" else None)
    if device.type == "cpu" and threads is None:
        threads = 1
    sim_gpu = (prof.gpu if prof is not None and prof.gpu else getattr(cost, "gpu", None)) or "a100-80gb"
    spec = get_model(config.model)
    levels = _levels(config)
    if levels[0].kind == "trace" and len({r.arrival_time for r in trace}) == 1:
        levels = [LoadLevel("offline")]  # a trace without arrival times given as is: every request at once
    base = offline_trace(trace) if levels[0].kind == "offline" else list(trace)
    out_dir = Path(out) if out is not None else None

    with _torch_threads(device.type, threads):
        runner = build_runner(_engine_config(config, config.schedulers[0], levels[0].kind == "offline"), spec, base)
        dev_info = {"type": device.type, "name": device_name(device), "threads": threads,
                    "dtype": str(runner.dtype).removeprefix("torch."), "backend": runner.backend.name,
                    "kv_blocks": runner.num_blocks, "block_size": runner.block_size,
                    "cuda_graphs": bool(runner.cuda_graphs)}
        if prof is not None and meta.get("attention_backend") and meta["attention_backend"] != runner.backend.name:
            notes.append(f"profile timed attention with {meta['attention_backend']}, the engine runs "
                         f"{runner.backend.name}")
        if prof is not None and meta.get("dtype") and meta["dtype"] != dev_info["dtype"]:
            notes.append(f"profile measured in {meta['dtype']}, the engine runs {dev_info['dtype']}")
        jobs = [(s, lv) for s in config.schedulers for lv in levels]
        runs: list[RunResult] = []
        capacities: dict[str, float] = {}
        bar = tqdm(jobs, desc="validate", unit="run", disable=not progress, leave=False)
        for scheduler, level in bar:
            bar.set_postfix_str(f"{scheduler} {level.name}")
            if level.kind == "load":
                if scheduler not in capacities:
                    workdir = out_dir / "capacity" if out_dir is not None else _tmpdir()
                    capacities[scheduler] = predicted_capacity(base, config, scheduler, cost, sim_gpu,
                                                               runner.num_blocks, workdir)
                cap = capacities[scheduler]
                level = dataclasses.replace(level, capacity=cap, qps=level.load * cap)
                log(f"{scheduler}: predicted capacity {cap:.4g} req/s; validating at {level.qps:.4g} req/s")
            tr = base if level.kind in ("trace", "offline") else trace_at_rate(base, level.qps, arrival=config.arrival,
                                                                               cv=config.cv, seed=config.seed)
            runs.append(median_run([run_pair(tr, config, scheduler, level, runner, cost, sim_gpu, source=source)
                                    for _ in range(config.repeats)]))
        bar.close()
        ops, ops_summary = None, {}
        if config.op_check:
            from sim.validate_ops import op_check, sample_batches
            sample = sample_batches([ex for r in runs for ex in r.executed], config.op_check, config.seed)
            ops, ops_summary = op_check(runner, sample, cost)
    result = ValidationResult(config, runs, cost.describe(), dev_info, source, out_dir, notes, ops, ops_summary)
    if out_dir is not None:
        from sim.validate_report import write_report
        write_report(result, out_dir)
    return result


def _tmpdir() -> Path:
    import tempfile
    return Path(tempfile.mkdtemp(prefix="servesim-capacity-"))


def calibrate_profile(model: str, out: str | Path, *, device: str | None = None, dtype: str | None = None,
                      backend: str = "auto", full: bool = False, log: Callable[[str], None] = print) -> Path:
    """Calibrate ``model`` on ``device`` (quick grid unless ``full``) into ``out``; resumes a partial profile there."""
    from calibration.profiler import calibrate, calibration_config
    cfg = calibration_config(model, [1], out, quick=not full, device=device or "auto", dtype=dtype or "auto",
                             backend=backend, progress=sys.stderr.isatty())
    res = calibrate(cfg, log=log)
    if not res.complete:
        raise ValueError(f"calibration into {out} is incomplete ({res.remaining} points left); rerun to resume")
    return Path(out)
