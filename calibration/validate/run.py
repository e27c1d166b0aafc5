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
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from calibration.validate.config import LoadLevel, ValidateConfig, offline_trace, trace_at_rate
from calibration.validate.errors import (
    ExecutedBatch,
    RecordingCost,
    batch_errors,
    composition_match,
    price_batches,
    request_errors,
    tail_errors,
)
from calibration.validate.results import DRIFT_THRESHOLD, RunResult, ValidationResult
from sim.batch import Batch
from sim.cost.interface import CostModel
from sim.request import TraceRequest


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


def _engine_config(cfg: ValidateConfig, scheduler: str, offline: bool, device: Any = None):
    """The engine configuration of one pair; on ``device`` (CUDA), with the engine's prefill-token cap."""
    from engine.replay import EngineConfig, cap_prefill_tokens
    ecfg = EngineConfig(model=cfg.model, max_model_len=cfg.max_model_len, scheduler=scheduler, token_budget=cfg.budget(scheduler),
                        max_batch_size=cfg.max_batch_size, chunk_align=cfg.chunk_align, block_size=cfg.block_size,
                        watermark=cfg.watermark, enable_prefix_caching=cfg.enable_prefix_caching,
                        gpu_memory_utilization=cfg.gpu_memory_utilization,
                        kv_blocks=cfg.kv_blocks, strict=cfg.strict, seed=cfg.seed, device=cfg.device,
                        dtype=cfg.dtype, backend=cfg.backend, offline=offline, warmup=cfg.warmup,
                        cuda_graphs=cfg.cuda_graphs, speculative_config=cfg.speculative_config)
    return cap_prefill_tokens(ecfg, device) if device is not None else ecfg


def _clients(cfg: ValidateConfig) -> Any:
    """A fresh ClosedLoop of ``cfg``'s clients for one run (engine or simulator), or None (open loop)."""
    if cfg.max_concurrency is None:
        return None
    from sim.serving.closed_loop import ClosedLoop
    return ClosedLoop(cfg.max_concurrency, cfg.think_time_s)


def machine_probe(device: Any, repeats: int = 5) -> float:
    """Seconds of a fixed reference workload on ``device`` (median of ``repeats``): the machine's speed now."""
    import time

    import torch
    a = torch.ones(256, 256, device=device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(20):
            a = torch.tanh(a @ a * 1e-3)
        float(a.sum())  # waits for the device
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def run_pair(trace: list[TraceRequest], cfg: ValidateConfig, scheduler: str, level: LoadLevel, runner: Any,
             cost: CostModel, sim_gpu: Any, *, source: str = "<trace>", progress: bool = False) -> RunResult:
    """Replay ``trace`` on the engine (``runner``) and simulate it with ``cost``; compare the two. A reference
    timing taken before and after the engine run tells whether the machine's speed drifted meanwhile."""
    from engine.replay import replay
    from sim.serving.simulator import simulate

    offline = level.kind == "offline"
    ecfg = _engine_config(cfg, scheduler, offline, runner.device)
    ran: list[tuple[Batch, float]] = []

    def on_batch(batch: Batch) -> None:  # kept cheap: it runs between the engine's iterations
        ran.append((batch, runner.last_timing["forward_s"]))

    before = machine_probe(runner.device)
    eng = replay(trace, ecfg, runner=runner, source=source, on_batch=on_batch, progress=progress,
                 closed_loop=_clients(cfg))
    after = machine_probe(runner.device)
    executed = [ExecutedBatch.capture(b, fwd) for b, fwd in ran]  # items are immutable (request, new, cached)
    comps = [ex.composition() for ex in executed]
    eng.summary["timing"] = "measured"
    sim_cfg = ecfg.sim_config(gpu=sim_gpu, kv_blocks=runner.num_blocks)
    recorder = RecordingCost(cost)
    sim_trace = offline_trace(trace) if offline else trace
    spec_kw, used = {}, None
    if cfg.speculative_config:  # the measured acceptance and lookups fed to the simulator (validate.speculative)
        from calibration.validate.speculative import MeasuredLookups, acceptance_arg, acceptance_used
        used = acceptance_used(eng.summary["speculative"]["per_position_acceptance"])
        sim_cfg = dataclasses.replace(sim_cfg, speculative_config=cfg.speculative_config,
                                      spec_acceptance=acceptance_arg(used[0]))
        spec_kw = {"spec_proposer": MeasuredLookups(eng.speculation.lookups)}
    simulated = simulate(sim_trace, sim_cfg, cost_model=recorder, source=source, closed_loop=_clients(cfg),
                         **spec_kw)
    simulated.summary["timing"] = "predicted"
    simulated.summary["config"]["gpu"] = getattr(sim_gpu, "name", sim_gpu)
    priced = price_batches(executed, eng.batches, cost)
    name = f"{scheduler}-{level.name}"
    res = RunResult(name, scheduler, level, ecfg.token_budget, eng, simulated, priced, batch_errors(priced),
                    request_errors(eng.summary, simulated.summary), composition_match(comps, recorder.ordered()),
                    len(trace), executed)
    res.probe = {"before_s": before, "after_s": after, "drift": max(before, after) / min(before, after) - 1.0}
    if used is not None:
        from calibration.validate.speculative import comparison
        res.speculative = comparison(eng, simulated, priced, *used)
    return res


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
                     "sum_error": r.batch_error["sum_error"],
                     "by_kind": {k: v["total"]["median"] for k, v in r.batch_error.get("by_kind", {}).items()},
                     "tails": ({k: v["error"] for k, v in tail_errors(r.request_error).items()}
                               if getattr(r, "request_error", None) else {}),
                     "probe": getattr(r, "probe", None),
                     "prefix_hit_rate": _hit_rate(r),
                     "drifted": bool(getattr(r, "probe", None) and r.probe["drift"] > DRIFT_THRESHOLD)}
                    for i, r in enumerate(runs)]
    return kept


def _hit_rate(run: Any) -> float | None:
    """The engine run's prefix-cache hit rate (share of prompt tokens), None without caching."""
    engine = getattr(run, "engine", None)
    return ((getattr(engine, "summary", None) or {}).get("prefix_cache") or {}).get("hit_rate_tokens")


# ---- the whole validation ------------------------------------------------------------------------

def predicted_capacity(trace: Sequence[TraceRequest], cfg: ValidateConfig, scheduler: str, cost: CostModel,
                       sim_gpu: Any, kv_blocks: int, workdir: Path, device: Any = None) -> float:
    """The simulator's capacity (req/s) for ``scheduler`` with ``cost`` on the trace's lengths (``sim.capacity.search``)."""
    from sim.capacity.search import Slo, Workload, find_capacity
    from sim.workload.trace import write_trace

    workdir.mkdir(parents=True, exist_ok=True)
    lengths = workdir / "lengths.jsonl"
    if not lengths.exists():
        write_trace(lengths, offline_trace(trace))
    sim_cfg = _engine_config(cfg, scheduler, True, device).sim_config(gpu=sim_gpu, kv_blocks=kv_blocks)
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


def cpu_profile_warning(profile: str | Path, meta: dict) -> str:
    """Why a CPU profile's predictions may be off here: it times one machine (its CPU, threads and load) at one
    moment; the committed tiny-cpu profile was measured elsewhere (issue 32: -50..-75% against -19..+25% when
    calibrated on the machine itself)."""
    dev = meta.get("device") or {}
    return (f"profile {profile} was measured on a CPU ({dev.get('name', '?')}, {dev.get('threads', '?')} thread(s), "
            f"{meta.get('date', 'date unknown')}): a CPU profile belongs to the machine and the moment it was measured "
            f"on, and another CPU, thread count or load shifts every prediction; leave out --profile to calibrate "
            f"on this machine first")


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
    from tqdm import tqdm

    from engine.device import detect_gpu, device_name, resolve_device
    from engine.replay import build_runner

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
    if device.type == "cpu" and prof is not None and profile is not None:  # issue 32: a CPU profile is a snapshot
        notes.append(cpu_profile_warning(profile, meta))
        log(f"warning: {notes[-1]}")
    threads = config.threads if config.threads is not None else (pdev.get("threads") if device.type == "cpu" else None)
    if device.type == "cpu" and threads is None:
        threads = 1
    sim_gpu = (prof.gpu if prof is not None and prof.gpu else getattr(cost, "gpu", None)) or "a100-80gb"
    spec = config.model_spec()
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
                                                               runner.num_blocks, workdir, runner.device)
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
            from calibration.validate.op_check import op_check, sample_batches
            sample = sample_batches([ex for r in runs for ex in r.executed], config.op_check, config.seed)
            ops, ops_summary = op_check(runner, sample, cost)
    result = ValidationResult(config, runs, cost.describe(), dev_info, source, out_dir, notes, ops, ops_summary)
    if out_dir is not None:
        from calibration.validate.report import write_report
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
