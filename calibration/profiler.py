"""The profiler: times every op of ``sim.ops`` for one layer of a model's TP shards, writing a profile as it goes.

Each op the model runs (``profile_format.model_ops``: a mixture of experts' MoE ops, dense MLP ops where a
layer is dense) is called through ``engine.ops.OPS`` (looked up at call time, exactly what the engine's
layers run) on inputs of one TP shard's shapes (``calibration.op_bench``), so TP 2/4/8 shapes are measured
on one device. Host overhead is the engine's host part of real decode iterations (``calibration.host_bench``).
Whole decoder layers and forward passes of real ``ModelRunner.execute`` iterations (``calibration.iteration``)
give the framework overhead the op sum misses, and iterations after idle gaps (``calibration.wake_bench``)
the cold-start extra. Communication is timed with torch.distributed when enough GPUs exist, otherwise (and
always for the expert-parallel all-to-alls, which the engine never runs) left to the roofline (marked so).

Every measurement is appended to measurements.csv at once; a rerun with the same ``out``
skips what is there, and ``budget_s`` stops a run cleanly (status ``partial``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from calibration import profile_writer
from calibration.device_info import device_info, git_commit, resolve_device, resolve_dtype
from calibration.grid import (
    FULL,
    RE_ESTIMATE_AFTER_S,
    GridSpec,
    Point,
    estimate_seconds,
    mixed_contexts,
    plan,
    re_estimate,
)
from calibration.host_bench import HostBench, host_model_for, host_model_name
from calibration.iteration import IterationBench, blocks_needed, check_bench_memory, unit_shapes
from calibration.op_bench import OpBench
from calibration.timing import Timing, TimingSettings, synchronize, time_call, time_stats
from engine.cuda_graphs import use_cuda_graphs
from engine.gc_pause import frozen_heap
from sim.catalog.models import ModelSpec, get_model
from sim.cost import profile_format
from sim.ops import GRAPH_TIMINGS, UNIT_TIMINGS

GEMM_OPS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "lm_head")
STREAM_OPS = ("input_norm", "post_attn_norm", "residual_add", "residual_add_mlp", "act")
ROUNDS_ONLY_BELOW_S = 20e-3  # a point whose median is longer is robust to interference: one round is enough
QUICK_TIMING = TimingSettings(warmup=2, min_repeats=5, max_repeats=15, target_s=0.004)
FULL_TIMING = TimingSettings()


@dataclass
class CalibrationConfig:
    """What to calibrate and how (see ``servesim calibrate --help``)."""

    model: ModelSpec
    tps: list[int]
    out: Path
    device: str = "auto"
    dtype: str = "auto"
    grid: GridSpec = FULL
    timing: TimingSettings = FULL_TIMING
    backend: str = "auto"
    budget_s: float | None = None
    ops: tuple[str, ...] | None = None
    host_model: str | None = None    # None: tiny on a GPU, the profiled model on a CPU (host_model_for)
    host_scheduler: str = "sarathi"
    block_size: int = 16
    seed: int = 0
    fresh: bool = False
    measure_comm: bool = True        # with >= 2 GPUs; never on CPU
    memory_fraction: float = 0.5     # of free device memory (CPU: of RAM) one point may use
    threads: int | None = None       # CPU intra-op threads while timing (default 1: see calibrate())
    rounds: int | None = None        # sweeps over the points, best kept per point (default: CPU 3, CUDA 1)
    progress: bool = True
    cuda_graphs: bool | None = None  # time decode forwards through CUDA graphs (None: as the engine would)


@dataclass
class CalibrationResult:
    """What a run did: rows measured now, points skipped (with why), points left for a rerun."""

    path: Path
    measured: int
    remaining: int
    wall_s: float
    complete: bool
    estimate_s: float
    skipped: list[tuple[Point, str]] = field(default_factory=list)


# ---- the run ----------------------------------------------------------------------------------

def _earlier_timings(table: Any, points: list[Point]) -> dict[Point, Timing]:
    """Timings already in the table for ``points`` (a resumed run's earlier measurements)."""
    by_key = {_key(p): p for p in points}
    out: dict[Point, Timing] = {}
    for row in table.itertuples(index=False):
        key = tuple(getattr(row, c) for c in profile_writer.KEY_COLUMNS)
        if key in by_key:
            out[by_key[key]] = Timing(float(row.median_s), float(row.p10_s), float(row.p90_s), int(row.repeats))
    return out


def _median_round(ts: list[Timing]) -> Timing:
    """The round whose median is the median of the rounds' (the lower middle one for an even count)."""
    return sorted(ts, key=lambda t: t.median_s)[(len(ts) - 1) // 2]


def _key(p: Point) -> tuple:
    return (p.op, p.tp, p.tokens, p.seqs, p.context, p.variant)


def _row(p: Point, t: Timing) -> dict[str, Any]:
    return {"op": p.op, "tp": p.tp, "tokens": p.tokens, "seqs": p.seqs, "context": p.context, "variant": p.variant,
            "median_s": t.median_s, "p10_s": t.p10_s, "p90_s": t.p90_s, "repeats": t.repeats}


def _replace_rows(out: Path, best: dict[Point, Timing]) -> None:
    """Rewrite measurements.csv with ``best`` replacing the rows of the same points (atomically)."""
    table = profile_format.read_measurements(out)
    keys = {_key(p): _row(p, t) for p, t in best.items()}
    rows = [keys.get(tuple(r[c] for c in profile_format.KEY_COLUMNS), r) for r in table.to_dict("records")]
    tmp = out / (profile_format.MEASUREMENTS_CSV + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(profile_format.COLUMNS)
        for r in rows:
            w.writerow(profile_writer.format_row(r))
    os.replace(tmp, out / profile_format.MEASUREMENTS_CSV)


def fit_device_rates(table: Any, model: ModelSpec, dtype_bytes: int) -> dict[str, float]:
    """Effective FLOP/s (best GEMM), bytes/s (best streaming op) and per-call floor (fastest op) of the device."""
    from sim.cost.op_roofline import OpRoofline
    from sim.cost.roofline import RooflineCostModel

    refs: dict[int, OpRoofline] = {}
    best_f = best_b = 0.0
    floor = float("inf")
    for r in table.itertuples(index=False):
        if r.op in ("host_overhead",) + UNIT_TIMINGS + GRAPH_TIMINGS or r.op.startswith("tp_") or r.op == "pp_send_recv":
            continue
        floor = min(floor, float(r.median_s))
        if r.op not in GEMM_OPS + STREAM_OPS:
            continue
        tp = max(int(r.tp), 1)
        ref = refs.get(tp)
        if ref is None:
            ref = refs[tp] = OpRoofline(RooflineCostModel(model, "a100-80gb", tp=tp, dtype_bytes=dtype_bytes))
        n = int(r.seqs) if r.op == "lm_head" else int(r.tokens)
        _, f, b = ref.token_ops(n, n)[r.op]
        if r.op in GEMM_OPS:
            best_f = max(best_f, f / r.median_s)
        else:
            best_b = max(best_b, b / r.median_s)
    out: dict[str, float] = {}
    if best_f > 0:
        out["flops"] = best_f
    if best_b > 0:
        out["mem_bandwidth"] = best_b
    if floor < float("inf"):
        out["launch_s"] = floor
    return out


def _meta(cfg: CalibrationConfig, dev: dict[str, Any], dtype: torch.dtype, backend_name: str,
          old: dict[str, Any] | None) -> dict[str, Any]:
    from sim.version import __version__

    tps = sorted(set(cfg.tps) | set(old["tp"] if old else []))
    return {
        "format": profile_format.FORMAT, "version": profile_format.VERSION, "status": "partial",
        "device": dev, "dtype": str(dtype).removeprefix("torch."),
        "dtype_bytes": torch.empty((), dtype=dtype).element_size(),
        "torch": torch.__version__, "python": platform.python_version(), "servesim": __version__,
        "model": profile_format.model_shape(cfg.model), "tp": tps, "grid": cfg.grid.to_dict(),
        "timing": {"warmup": cfg.timing.warmup, "min_repeats": cfg.timing.min_repeats,
                   "max_repeats": cfg.timing.max_repeats, "target_s": cfg.timing.target_s,
                   "clock": "cuda events" if dev["type"] == "cuda" else "time.perf_counter",
                   "rotation": "input sets rotated to twice the last-level cache (at most 8)",
                   "rounds": cfg.rounds or (3 if dev["type"] == "cpu" else 1)},
        "attention_backend": backend_name, "block_size": cfg.block_size,
        "decode_path": "cuda_graphs" if use_cuda_graphs(dev["type"], cfg.model, cfg.cuda_graphs) else "eager",
        "host_overhead": {"model": host_model_name(host_model_for(cfg.host_model, cfg.model, dev["type"])), "scheduler": cfg.host_scheduler,
                          "measures": "engine host part per decode iteration: schedule() + execute() + "
                                      "on_batch_done() wall time less forward_s"},
        "communication": (old or {}).get("communication", {"measured_tp": [], "pp": "roofline",
                                                           "note": "from the roofline interconnect model"}),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "wall_time_s": float((old or {}).get("wall_time_s", 0.0)),
        "skipped": (old or {}).get("skipped", []),
        "command": " ".join(["servesim"] + sys.argv[1:]) if sys.argv and "servesim" in sys.argv[0] else None,
    }


def _check_resumable(old: dict[str, Any], cfg: CalibrationConfig, here: str, dtype: torch.dtype) -> None:
    problems = []
    if old.get("version") != profile_format.VERSION:
        problems.append(f"profile format version {old.get('version')} vs {profile_format.VERSION} (host overhead and "
                        f"unit timings are measured differently now)")
    if old["model"] != profile_format.model_shape(cfg.model):
        problems.append(f"model {old['model'].get('name')} vs {cfg.model.name}")
    if old["device"].get("name") != here:
        problems.append(f"device {old['device'].get('name')!r} vs {here!r}")
    if old["dtype"] != str(dtype).removeprefix("torch."):
        problems.append(f"dtype {old['dtype']} vs {dtype}")
    if GridSpec.from_dict(old["grid"]) != cfg.grid:
        problems.append(f"grid {old['grid'].get('name')!r} vs {cfg.grid.name!r} (or its settings differ)")
    if problems:
        raise profile_format.ProfileError(f"{cfg.out} already holds a profile that differs ({'; '.join(problems)}); "
                                      f"pass --fresh to replace it or choose another --out")


def calibrate(cfg: CalibrationConfig, log: Callable[[str], None] = print) -> CalibrationResult:
    """Measure every planned point not yet in ``cfg.out`` (within ``cfg.budget_s``) and update the profile.

    On a CPU the timing runs with ``cfg.threads`` intra-op threads (default 1): with several
    threads on a loaded machine an op that parallelises waits for a descheduled worker and a
    20 us norm reads as 10 ms; one thread gives stable tables (recorded in profile.json).
    """
    device = resolve_device(cfg.device)
    saved_threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or 1)
    try:
        with frozen_heap():  # timed like the engine serves: no full garbage collection mid-measurement
            return _calibrate(cfg, device, log)
    finally:
        torch.set_num_threads(saved_threads)


def _calibrate(cfg: CalibrationConfig, device: torch.device, log: Callable[[str], None]) -> CalibrationResult:
    from tqdm import tqdm

    t_start = time.perf_counter()
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.out)
    if cfg.fresh:
        for name in (profile_format.PROFILE_JSON, profile_format.MEASUREMENTS_CSV, profile_format.REPORT_MD):
            (out / name).unlink(missing_ok=True)
    dev = device_info(device)
    old = profile_format.read_meta(out) if (out / profile_format.PROFILE_JSON).exists() else None
    if old is not None:
        _check_resumable(old, cfg, dev["name"], dtype)
    if profile_writer.repair_torn_tail(out):
        log(f"{out}/measurements.csv: cut a torn last row (an interrupted run); it is measured again")
    table = profile_format.read_measurements(out, allow_missing=True)
    done = profile_writer.measured_keys(table)
    graphs = use_cuda_graphs(device.type, cfg.model, cfg.cuda_graphs)
    points = plan(cfg.model, cfg.tps, cfg.grid, cfg.ops, graphs=graphs)
    todo = [p for p in points if _key(p) not in done]
    # an interrupted run measured its points once: this run's later rounds re-time them too
    earlier = _earlier_timings(table, points) if old is not None and old.get("status") == "partial" else {}
    gpu = dev["gpu"] if device.type == "cuda" else None
    tset = cfg.timing
    rounds = cfg.rounds or (3 if device.type == "cpu" else 1)
    def estimate_of(pts: list[Point]) -> float:
        return estimate_seconds(pts, cfg.model, gpu or ("h100-sxm" if device.type == "cuda" else None),
                                device.type, (tset.warmup, tset.min_repeats, tset.max_repeats, tset.target_s))

    estimate = rounds * estimate_of(todo)
    log(f"calibrating {cfg.model.name} TP {','.join(map(str, cfg.tps))} on {dev['name']} "
        f"({dtype}): {len(points)} points, {len(points) - len(todo)} already measured, {len(todo)} to go; "
        f"estimated {estimate:.0f} s" + (f" (budget {cfg.budget_s:.0f} s)" if cfg.budget_s is not None else ""))

    if device.type == "cpu" and (cfg.ops is None or set(cfg.ops) & set(UNIT_TIMINGS + GRAPH_TIMINGS)):
        check_bench_memory(cfg.model, dtype, cfg.grid, cfg.block_size)
    bench = OpBench(cfg.model, device, dtype, cfg.backend, cfg.block_size, cfg.memory_fraction, cfg.seed)
    meta = _meta(cfg, dev, dtype, bench.backend.name, old)
    meta["command"] = meta["command"] or f"calibrate(model={cfg.model.name}, tp={cfg.tps}, grid={cfg.grid.name})"
    profile_writer.write_meta(out, meta)
    bench.set_mixed({b: mixed_contexts(b, cfg.model.max_context, cfg.grid.seed, cfg.grid.max_kv_tokens)
                     for b in cfg.grid.mixed_batches})
    host: HostBench | None = None
    units: IterationBench | None = None
    graph_units: IterationBench | None = None
    unit_runs: dict[tuple, dict[str, Timing]] = {}  # one engine run per shape per round times both units
    skipped: list[tuple[Point, str]] = []
    measured = 0
    stopped = False
    show = cfg.progress and sys.stderr.isatty()
    with profile_writer.MeasurementWriter(out) as writer, \
            tqdm(total=len(todo), desc="calibrating", unit="pt", disable=not show, mininterval=0.5) as bar:
        def measure(p: Point) -> Timing:
            nonlocal host, units, graph_units
            if p.op == "host_overhead":
                if host is None:
                    host = HostBench(device, dtype, cfg.backend, host_model_for(cfg.host_model, cfg.model, device.type), cfg.host_scheduler,
                                     max(cfg.grid.host_batches), cfg.block_size,
                                     max(tset.min_repeats, min(tset.max_repeats, 20)))
                return host.measure(p.tokens)
            if p.op in UNIT_TIMINGS:
                shape = (p.tokens, p.seqs, p.context, p.variant)
                if shape not in unit_runs:
                    if units is None:
                        g = cfg.grid
                        shapes = unit_shapes(cfg.model.max_context, g.unit_decode_batches, g.unit_decode_contexts,
                                             g.unit_prefill_chunks, g.unit_mixed)
                        units = IterationBench(cfg.model, device, dtype, cfg.backend, cfg.block_size,
                                               blocks_needed(shapes, cfg.block_size), cfg.seed)
                    layer, fwd = units.measure(*shape, warmup=max(tset.warmup, 2),
                                               repeats=max(tset.min_repeats, min(tset.max_repeats, 15)))
                    unit_runs[shape] = {"layer_forward": time_stats(layer), "forward": time_stats(fwd)}
                return unit_runs[shape][p.op]
            if p.op in GRAPH_TIMINGS:
                if graph_units is None:
                    g = cfg.grid
                    shapes = unit_shapes(cfg.model.max_context, g.unit_decode_batches, g.unit_decode_contexts, (), ())
                    graph_units = IterationBench(cfg.model, device, dtype, cfg.backend, cfg.block_size,
                                                 blocks_needed(shapes, cfg.block_size), cfg.seed, cuda_graphs=True)
                _layer, fwd = graph_units.measure(p.tokens, p.seqs, p.context, p.variant,
                                                  warmup=max(tset.warmup, 2),
                                                  repeats=max(tset.min_repeats, min(tset.max_repeats, 15)))
                return time_stats(fwd)
            call, copies = bench.prepare(p)
            return time_call(call, device, tset, copies)

        def over_budget() -> bool:
            return cfg.budget_s is not None and time.perf_counter() - t_start > cfg.budget_s

        best: dict[Point, Timing] = dict(earlier)
        re_estimated = False
        # Round 1 measures every point and appends its row at once (a stopped run keeps it).
        for i, p in enumerate(todo):
            if over_budget():
                stopped = True
                break
            if not re_estimated and time.perf_counter() - t_start > RE_ESTIMATE_AFTER_S:
                re_estimated = True
                estimate = re_estimate(time.perf_counter() - t_start, estimate_of(todo[:i]),
                                       estimate_of(todo[i:]), rounds, cfg.budget_s, log)
            try:
                best[p] = measure(p)
            except (MemoryError, torch.OutOfMemoryError) as e:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                skipped.append((p, str(e) or "out of memory"))
            else:
                writer.write(_row(p, best[p]))
                measured += 1
            bar.update()
    # Later rounds re-time the short points of this run and keep each point's best (lowest-median) round:
    # the rounds are a whole sweep apart, so a burst of load from other processes spoils one, not the table.
    # Whole iterations (host part, unit timings) predict what the engine meets in a run, load included:
    # they keep the median round, not the best (the op tables' best is a floor the overhead fit sits on).
    typical = {p: [t] for p, t in best.items() if p.op in UNIT_TIMINGS + GRAPH_TIMINGS + ("host_overhead",)}
    order = random.Random(cfg.seed)
    for _ in range(rounds - 1):
        again = [p for p, t in best.items() if t.median_s < ROUNDS_ONLY_BELOW_S]
        unit_runs.clear()  # a new round runs each unit shape again
        order.shuffle(again)  # neighbouring grid points meet a slow spell in different rounds
        changed = False
        for p in again:
            if over_budget():
                break
            t = measure(p)
            if p in typical:
                typical[p].append(t)
                best[p] = _median_round(typical[p])
                changed = True
            elif t.median_s < best[p].median_s:
                best[p] = t
                changed = True
        if changed:
            _replace_rows(out, best)
        if over_budget():
            break
    synchronize(device)
    bench = host = units = graph_units = None  # their weights and KV caches: freed before the next benches allocate theirs
    if device.type == "cuda":
        torch.cuda.empty_cache()

    remaining = len(todo) - measured - len(skipped)
    if not stopped and cfg.measure_comm:
        _measure_communication(cfg, device, dtype, meta, out, log)
    if old is not None and old.get("wake"):
        meta["wake"], meta["host_prefill"] = old["wake"], old.get("host_prefill")
    elif not stopped and cfg.ops is None and not (cfg.budget_s is not None and time.perf_counter() - t_start
                                                   > cfg.budget_s):
        from calibration.host_bench import measure_prefill_host
        from calibration.wake_bench import measure_wake
        log("timing iterations after idle gaps (the cold-start extra) and the host part of prefills")
        stamp = {"date": meta["date"], "command": meta["command"]}
        meta["wake"] = measure_wake(cfg.model, device, dtype, cfg.backend, cfg.block_size, seed=cfg.seed) | stamp
        meta["host_prefill"] = measure_prefill_host(host_model_for(cfg.host_model, cfg.model, device.type), device, dtype, cfg.backend,
                                                    cfg.block_size) | stamp
    table = profile_format.read_measurements(out, allow_missing=True)
    meta["device_rates"] = fit_device_rates(table, cfg.model, meta["dtype_bytes"])
    meta["skipped"] = sorted({*map(tuple, meta.get("skipped", [])),
                              *((p.op, p.tp, p.tokens, p.seqs, p.context, p.variant, why) for p, why in skipped)})
    wall = time.perf_counter() - t_start
    meta["wall_time_s"] = round(float(meta["wall_time_s"]) + wall, 1)
    meta["status"] = "complete" if remaining == 0 else "partial"
    profile_writer.write_meta(out, meta)
    if skipped:
        log(f"skipped {len(skipped)} point(s) that do not fit in memory, e.g. {skipped[0][0]}: {skipped[0][1]}")
    if remaining:
        log(f"stopped at the {cfg.budget_s:.0f} s budget with {remaining} point(s) left; rerun the same command "
            f"to resume")
    return CalibrationResult(out, measured, remaining, wall, remaining == 0, estimate, skipped)


def _measure_communication(cfg: CalibrationConfig, device: torch.device, dtype: torch.dtype, meta: dict[str, Any],
                           out: Path, log: Callable[[str], None]) -> None:
    """All-reduce per TP (and send/recv) with torch.distributed when the GPUs exist; else mark them roofline."""
    comm = meta["communication"]
    count = torch.cuda.device_count() if device.type == "cuda" else 1
    want = [tp for tp in cfg.tps if 1 < tp <= count and tp not in comm.get("measured_tp", [])]
    if device.type != "cuda" or count < 2 or not want:
        if device.type != "cuda" or count < 2:
            comm["note"] = f"only {count} {device.type} device(s): TP all-reduce and PP send/recv come from the " \
                           f"roofline interconnect model"
        return
    from calibration.collectives import measure_collectives
    from calibration.grid import token_grid

    tokens = token_grid(cfg.grid)
    with profile_writer.MeasurementWriter(out) as writer:
        for tp in want:
            log(f"timing all-reduce over {tp} GPUs" + (" and send/recv" if comm.get("pp") != "measured" else ""))
            rows = measure_collectives(tp, tokens, cfg.model.hidden_size, device_type="cuda", dtype=dtype,
                                       warmup=cfg.timing.warmup, repeats=max(cfg.timing.min_repeats, 10),
                                       send_recv=comm.get("pp") != "measured")
            for r in rows:
                writer.write(r)
            comm.setdefault("measured_tp", []).append(tp)
            if any(r["op"] == "pp_send_recv" for r in rows):
                comm["pp"] = "measured"
    comm["note"] = f"measured with torch.distributed (NCCL) on {count} GPUs; other TP degrees from the roofline"


def calibration_config(model: str, tps: list[int], out: str | Path, *, quick: bool = False, device: str = "auto",
                       **kw: Any) -> CalibrationConfig:
    """A ``CalibrationConfig`` with the grid and timing for ``quick`` runs or full ones on ``device``."""
    from calibration.grid import default_grid
    dev = resolve_device(device)
    return CalibrationConfig(model=get_model(model), tps=tps, out=Path(out), device=str(dev),
                             grid=default_grid(dev.type, quick), timing=QUICK_TIMING if quick else FULL_TIMING, **kw)
