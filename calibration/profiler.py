"""The profiler: times every op of ``sim.ops`` for one layer of a model's TP shards, writing a profile as it goes.

Each op is called through ``engine.ops.OPS`` (looked up at call time, exactly what the
engine's layers run) on inputs of one TP shard's shapes (heads, intermediate size and vocab
divided by TP), so TP 2/4/8 shapes are measured on one device. Attention runs through the
engine's metadata builder and backend on a paged cache. Host overhead is the engine's host part
of real decode iterations (scheduler, input preparation, output processing, ``on_batch_done``)
with the tiny model. Whole decoder layers and forward passes of real ``ModelRunner.execute``
iterations (``calibration.iteration``) give the framework overhead the op sum misses. Communication is timed
with torch.distributed when enough GPUs exist, otherwise left to the roofline (and marked so).

Every measurement is appended to measurements.csv at once; a rerun with the same ``out``
skips what is there, and ``budget_s`` stops a run cleanly (status ``partial``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from calibration import profile_io
from calibration.grid import FULL, MIXED, GridSpec, Point, estimate_seconds, mixed_contexts, plan
from calibration.iteration import IterationBench, blocks_needed, unit_shapes
from calibration.timing import (Timing, TimingSettings, rotation_copies, synchronize, time_call, time_host,
                                time_stats)
from engine.attention import build_metadata, select_backend
from engine.model import default_dtype
from engine.ops import OPS
from sim.models import ModelSpec, get_model
from sim.ops import UNIT_TIMINGS

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
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
    host_model: str = "tiny"
    host_scheduler: str = "sarathi"
    block_size: int = 16
    seed: int = 0
    fresh: bool = False
    measure_comm: bool = True        # with >= 2 GPUs; never on CPU
    memory_fraction: float = 0.5     # of free device memory (CPU: of RAM) one point may use
    threads: int | None = None       # CPU intra-op threads while timing (default 1: see calibrate())
    rounds: int | None = None        # sweeps over the points, best kept per point (default: CPU 3, CUDA 1)
    progress: bool = True


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


# ---- device description -----------------------------------------------------------------------

_GPU_PATTERNS = (  # (substring in the device name, extra condition, catalogue name), first match wins
    ("h200", None, "h200"),
    ("h100", "pcie", "h100-pcie"),
    ("h100", None, "h100-sxm"),
    ("a100", "40gb", "a100-40gb"),
    ("a100", None, "a100-80gb"),
    ("l40s", None, "l40s"),
    ("a6000", None, "a6000"),
    ("a40", None, "a40"),
)


def catalogue_gpu(device_name: str, memory_bytes: float | None = None) -> str | None:
    """The ``sim.hardware`` catalogue entry for a CUDA device name (e.g. 'NVIDIA H100 80GB HBM3'), or None."""
    n = device_name.lower().replace(" ", "").replace("-", "")
    for key, extra, name in _GPU_PATTERNS:
        if key in n and (extra is None or extra in n):
            if name == "a100-80gb" and memory_bytes and memory_bytes < 60e9:
                return "a100-40gb"
            return name
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_bytes() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def device_info(device: torch.device) -> dict[str, Any]:
    """Name, memory, catalogue GPU, driver/CUDA versions and device count of ``device``."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "memory_bytes": int(props.total_memory),
                "gpu": catalogue_gpu(props.name, props.total_memory), "count": torch.cuda.device_count(),
                "driver": _driver_version(), "cuda": torch.version.cuda,
                "capability": f"{props.major}.{props.minor}"}
    return {"type": device.type, "name": _cpu_name(), "memory_bytes": _ram_bytes(), "gpu": None, "count": 1,
            "driver": None, "cuda": None, "threads": torch.get_num_threads()}


def git_commit() -> str | None:
    """HEAD of the servesim checkout (``+dirty`` with uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible to torch here; use --device cpu")
    return dev


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return default_dtype(device)
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


# ---- benches: build inputs for one point, return call(i) ---------------------------------------

def _nbytes(*xs: Any) -> int:
    return sum(x.numel() * x.element_size() for x in xs if isinstance(x, torch.Tensor))


class OpBench:
    """Builds rotated input sets of one point's shapes and returns ``call(i)`` running ``OPS[op]`` on set ``i % n``."""

    def __init__(self, model: ModelSpec, device: torch.device, dtype: torch.dtype, backend: str, block_size: int,
                 memory_fraction: float, seed: int = 0) -> None:
        self.m, self.dev, self.dtype, self.bs = model, device, dtype, block_size
        self.backend = select_backend(device, backend, dtype)
        self.scale = model.head_dim ** -0.5
        self.memory_fraction = memory_fraction
        self.seed = seed
        half = model.head_dim // 2
        inv = 1.0 / (model.rope_theta ** (torch.arange(0, model.head_dim, 2, dtype=torch.float64) / model.head_dim))
        ang = torch.outer(torch.arange(model.max_context, dtype=torch.float64), inv)
        self.cos = ang.cos().to(device=device, dtype=dtype)[:, :half]
        self.sin = ang.sin().to(device=device, dtype=dtype)[:, :half]

    def _budget_bytes(self) -> int:
        if self.dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.dev)
            return int(free * self.memory_fraction)
        return int(_ram_bytes() * self.memory_fraction)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.dev, dtype=self.dtype)

    def _one_set(self, p: Point) -> tuple:
        """Positional arguments of ``OPS[p.op]`` for one input copy."""
        m, tp, T = self.m, max(p.tp, 1), p.tokens
        E, D = m.hidden_size, m.head_dim
        qh, kvh = m.q_heads_per_gpu(tp), m.kv_heads_per_gpu(tp)
        inter = m.intermediate_per_gpu(tp)
        op = p.op
        if op in ("input_norm", "post_attn_norm"):
            return (self._randn(T, E), self._randn(E), m.norm_eps)
        if op == "final_norm":
            return (self._randn(p.seqs, E), self._randn(E), m.norm_eps)
        if op == "qkv_proj":
            return (self._randn(T, E), self._randn((qh + 2 * kvh) * D, E) * E ** -0.5, qh, kvh, D)
        if op == "rotary":
            pos = torch.randint(0, m.max_context, (T,), device=self.dev)
            return (self._randn(T, qh, D), self._randn(T, kvh, D), pos, self.cos, self.sin)
        if op == "o_proj":
            return (self._randn(T, qh, D), self._randn(E, qh * D))
        if op in ("residual_add", "residual_add_mlp"):
            return (self._randn(T, E), self._randn(T, E))
        if op == "gate_up_proj":
            return (self._randn(T, E), self._randn((2 if m.gated_mlp else 1) * inter, E))
        if op == "act":
            return (self._randn(T, (2 if m.gated_mlp else 1) * inter), m.gated_mlp)
        if op == "down_proj":
            return (self._randn(T, inter), self._randn(E, inter))
        if op == "embedding":
            vshard = m.vocab_per_gpu(tp)
            return (torch.randint(0, vshard, (T,), device=self.dev), self._randn(vshard, E))
        if op == "lm_head":
            return (self._randn(p.seqs, E), self._randn(m.vocab_per_gpu(tp), E))
        if op == "sampling":
            return (torch.randn(p.seqs, m.vocab_size, device=self.dev, dtype=torch.float32),)
        raise ValueError(f"op {op!r} has no bench")

    def _set_bytes(self, p: Point) -> int:
        """Bytes of one input set, from a meta-device dry build (no allocation)."""
        if p.op in ("attn_prefill", "attn_decode"):
            return self._attn_bytes(p, self._attn_contexts(p))
        saved = self.dev
        try:
            self.dev = torch.device("meta")
            return _nbytes(*self._one_set(p))
        finally:
            self.dev = saved

    def _attn_contexts(self, p: Point) -> list[int]:
        if p.op == "attn_prefill":
            return [p.context + p.tokens]
        if p.variant == MIXED:
            return self._mixed[p.seqs]
        return [p.context] * p.seqs

    def _attn_bytes(self, p: Point, ctx: list[int]) -> int:
        m, tp = self.m, max(p.tp, 1)
        kvh, qh, D = m.kv_heads_per_gpu(tp), m.q_heads_per_gpu(tp), m.head_dim
        blocks = sum(-(-c // self.bs) for c in ctx)
        elt = torch.empty((), dtype=self.dtype).element_size()
        new = p.tokens if p.op == "attn_prefill" else p.seqs
        return elt * (2 * blocks * self.bs * kvh * D + new * (2 * qh + 2 * kvh) * D)

    def prepare(self, p: Point) -> tuple[Callable[[int], Any], int]:
        """``(call, copies)`` for point ``p``; raises MemoryError when one input set does not fit."""
        set_bytes = self._set_bytes(p)
        budget = self._budget_bytes()
        if set_bytes > budget:
            raise MemoryError(f"needs {set_bytes / 2**30:.2f} GiB, over the {budget / 2**30:.2f} GiB allowed")
        copies = max(1, min(rotation_copies(set_bytes, self.dev), budget // max(set_bytes, 1)))
        torch.manual_seed(self.seed)
        if p.op in ("attn_prefill", "attn_decode"):
            return self._attention(p, copies), copies
        sets = [self._one_set(p) for _ in range(copies)]
        op = p.op

        def call(i: int) -> Any:
            return OPS[op](*sets[i % copies])  # looked up per call: what the engine runs now

        return call, copies

    def set_mixed(self, mixed: dict[int, list[int]]) -> None:
        self._mixed = mixed

    def _attention(self, p: Point, copies: int) -> Callable[[int], Any]:
        m, tp, bs = self.m, max(p.tp, 1), self.bs
        kvh, qh, D = m.kv_heads_per_gpu(tp), m.q_heads_per_gpu(tp), m.head_dim
        ctx = self._attn_contexts(p)
        per_copy = sum(-(-c // bs) for c in ctx)
        k_cache = self._randn(copies * per_copy, bs, kvh, D)
        v_cache = self._randn(copies * per_copy, bs, kvh, D)
        sets = []
        nxt = 0
        for _ in range(copies):
            seqs = []
            for c in ctx:
                nb = -(-c // bs)
                table = list(range(nxt, nxt + nb))
                nxt += nb
                seqs.append((table, p.context, p.tokens) if p.op == "attn_prefill" else (table, c - 1, 1))
            pre, dec = (seqs, []) if p.op == "attn_prefill" else ([], seqs)
            attn = build_metadata(pre, dec, bs, self.dev, self.backend, self.scale)
            n = attn.num_tokens
            q = self._randn(n, qh, D)
            sets.append((q, self._randn(n, kvh, D), self._randn(n, kvh, D), k_cache, v_cache, attn,
                         torch.empty_like(q)))
        op = p.op

        def call(i: int) -> Any:
            return OPS[op](*sets[i % copies])

        return call


class HostBench:
    """Per-iteration host time on the real engine: everything but the forward pass (``schedule``, input
    preparation, output processing, ``on_batch_done``), the engine's ``host_s``."""

    def __init__(self, device: torch.device, dtype: torch.dtype, backend: str, host_model: str, scheduler: str,
                 max_batch: int, block_size: int, repeats: int) -> None:
        from engine.runner import ModelRunner

        self.spec = get_model(host_model)
        self.scheduler = scheduler
        self.repeats = repeats
        self.prompt = 16
        per_req = -(-(self.prompt + repeats + 16) // block_size)
        self.runner = ModelRunner(self.spec, device=device, dtype=dtype, kv_blocks=max_batch * per_req + 16,
                                  block_size=block_size, backend=backend)

    def measure(self, batch_size: int) -> Timing:
        """Decode-only iterations of ``batch_size`` requests: wall time of schedule, execute and on_batch_done,
        less the runner's ``forward_s``."""
        from sim.kv_cache import BlockManager
        from sim.request import Request
        from sim.schedulers import SchedulerConfig, make_scheduler

        runner = self.runner
        sched = make_scheduler(self.scheduler, SchedulerConfig(max_batch_size=batch_size,
                                                               token_budget=max(512, batch_size)),
                               BlockManager(runner.num_blocks, runner.block_size, 0.0))
        reqs = [Request(f"host{batch_size}-{i}", 0.0, self.prompt, 10**9, index=i) for i in range(batch_size)]
        for r in reqs:
            sched.add_request(r)
        while any(r.num_generated == 0 for r in reqs):  # prefill everything first
            b = sched.schedule(0.0)
            if b is None:
                raise RuntimeError(f"host-overhead bench: scheduler {self.scheduler} formed no batch")
            runner.execute(b)
            sched.on_batch_done(b, 0.0)

        def one(i: int) -> float:  # the engine's host part, as engine.replay books it: iteration minus forward_s
            t0 = time.perf_counter()
            b = sched.schedule(float(i))
            runner.execute(b)
            sched.on_batch_done(b, float(i))
            return time.perf_counter() - t0 - float(runner.last_timing["forward_s"])

        try:
            return time_host(one, self.repeats)
        finally:
            for r in reqs:
                runner.release(r)


# ---- the run ----------------------------------------------------------------------------------

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
    table = profile_io.read_measurements(out)
    keys = {_key(p): _row(p, t) for p, t in best.items()}
    rows = [keys.get(tuple(r[c] for c in profile_io.KEY_COLUMNS), r) for r in table.to_dict("records")]
    tmp = out / (profile_io.MEASUREMENTS_CSV + ".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(profile_io.COLUMNS)
        for r in rows:
            w.writerow(profile_io.format_row(r))
    os.replace(tmp, out / profile_io.MEASUREMENTS_CSV)


def fit_device_rates(table: Any, model: ModelSpec, dtype_bytes: int) -> dict[str, float]:
    """Effective FLOP/s (best GEMM), bytes/s (best streaming op) and per-call floor (fastest op) of the device."""
    from sim.cost.profiled import OpRoofline
    from sim.cost.roofline import RooflineCostModel

    refs: dict[int, OpRoofline] = {}
    best_f = best_b = 0.0
    floor = float("inf")
    for r in table.itertuples(index=False):
        if r.op in ("host_overhead",) + UNIT_TIMINGS or r.op.startswith("tp_") or r.op == "pp_send_recv":
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
    import sim

    tps = sorted(set(cfg.tps) | set(old["tp"] if old else []))
    return {
        "format": profile_io.FORMAT, "version": profile_io.VERSION, "status": "partial",
        "device": dev, "dtype": str(dtype).removeprefix("torch."),
        "dtype_bytes": torch.empty((), dtype=dtype).element_size(),
        "torch": torch.__version__, "python": platform.python_version(), "servesim": sim.__version__,
        "model": profile_io.model_shape(cfg.model), "tp": tps, "grid": cfg.grid.to_dict(),
        "timing": {"warmup": cfg.timing.warmup, "min_repeats": cfg.timing.min_repeats,
                   "max_repeats": cfg.timing.max_repeats, "target_s": cfg.timing.target_s,
                   "clock": "cuda events" if dev["type"] == "cuda" else "time.perf_counter",
                   "rotation": "input sets rotated to twice the last-level cache (at most 8)",
                   "rounds": cfg.rounds or (3 if dev["type"] == "cpu" else 1)},
        "attention_backend": backend_name, "block_size": cfg.block_size,
        "host_overhead": {"model": cfg.host_model, "scheduler": cfg.host_scheduler,
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
    if old.get("version") != profile_io.VERSION:
        problems.append(f"profile format version {old.get('version')} vs {profile_io.VERSION} (host overhead and "
                        f"unit timings are measured differently now)")
    if old["model"] != profile_io.model_shape(cfg.model):
        problems.append(f"model {old['model'].get('name')} vs {cfg.model.name}")
    if old["device"].get("name") != here:
        problems.append(f"device {old['device'].get('name')!r} vs {here!r}")
    if old["dtype"] != str(dtype).removeprefix("torch."):
        problems.append(f"dtype {old['dtype']} vs {dtype}")
    if GridSpec.from_dict(old["grid"]) != cfg.grid:
        problems.append(f"grid {old['grid'].get('name')!r} vs {cfg.grid.name!r} (or its settings differ)")
    if problems:
        raise profile_io.ProfileError(f"{cfg.out} already holds a profile that differs ({'; '.join(problems)}); "
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
        return _calibrate(cfg, device, log)
    finally:
        torch.set_num_threads(saved_threads)


def _calibrate(cfg: CalibrationConfig, device: torch.device, log: Callable[[str], None]) -> CalibrationResult:
    from tqdm import tqdm

    t_start = time.perf_counter()
    dtype = resolve_dtype(cfg.dtype, device)
    out = Path(cfg.out)
    if cfg.fresh:
        for name in (profile_io.PROFILE_JSON, profile_io.MEASUREMENTS_CSV, profile_io.REPORT_MD):
            (out / name).unlink(missing_ok=True)
    dev = device_info(device)
    old = profile_io.read_meta(out) if (out / profile_io.PROFILE_JSON).exists() else None
    if old is not None:
        _check_resumable(old, cfg, dev["name"], dtype)
    done = profile_io.measured_keys(profile_io.read_measurements(out, allow_missing=True))
    points = plan(cfg.model, cfg.tps, cfg.grid, cfg.ops)
    todo = [p for p in points if _key(p) not in done]
    gpu = dev["gpu"] if device.type == "cuda" else None
    tset = cfg.timing
    rounds = cfg.rounds or (3 if device.type == "cpu" else 1)
    estimate = rounds * estimate_seconds(todo, cfg.model, gpu or ("h100-sxm" if device.type == "cuda" else None),
                                         device.type, (tset.warmup, tset.min_repeats, tset.max_repeats, tset.target_s))
    log(f"calibrating {cfg.model.name} TP {','.join(map(str, cfg.tps))} on {dev['name']} "
        f"({dtype}): {len(points)} points, {len(points) - len(todo)} already measured, {len(todo)} to go; "
        f"estimated {estimate:.0f} s" + (f" (budget {cfg.budget_s:.0f} s)" if cfg.budget_s is not None else ""))

    bench = OpBench(cfg.model, device, dtype, cfg.backend, cfg.block_size, cfg.memory_fraction, cfg.seed)
    meta = _meta(cfg, dev, dtype, bench.backend.name, old)
    meta["command"] = meta["command"] or f"calibrate(model={cfg.model.name}, tp={cfg.tps}, grid={cfg.grid.name})"
    profile_io.write_meta(out, meta)
    bench.set_mixed({b: mixed_contexts(b, cfg.model.max_context, cfg.grid.seed, cfg.grid.max_kv_tokens)
                     for b in cfg.grid.mixed_batches})
    host: HostBench | None = None
    units: IterationBench | None = None
    unit_runs: dict[tuple, dict[str, Timing]] = {}  # one engine run per shape per round times both units
    skipped: list[tuple[Point, str]] = []
    measured = 0
    stopped = False
    show = cfg.progress and sys.stderr.isatty()
    with profile_io.MeasurementWriter(out) as writer, \
            tqdm(total=len(todo), desc="calibrating", unit="pt", disable=not show, mininterval=0.5) as bar:
        def measure(p: Point) -> Timing:
            nonlocal host, units
            if p.op == "host_overhead":
                if host is None:
                    host = HostBench(device, dtype, cfg.backend, cfg.host_model, cfg.host_scheduler,
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
            call, copies = bench.prepare(p)
            return time_call(call, device, tset, copies)

        def over_budget() -> bool:
            return cfg.budget_s is not None and time.perf_counter() - t_start > cfg.budget_s

        best: dict[Point, Timing] = {}
        # Round 1 measures every point and appends its row at once (a stopped run keeps it).
        for p in todo:
            if over_budget():
                stopped = True
                break
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
    typical = {p: [t] for p, t in best.items() if p.op in UNIT_TIMINGS + ("host_overhead",)}
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

    remaining = len(todo) - measured - len(skipped)
    if not stopped and cfg.measure_comm:
        _measure_communication(cfg, device, dtype, meta, out, log)
    table = profile_io.read_measurements(out, allow_missing=True)
    meta["device_rates"] = fit_device_rates(table, cfg.model, meta["dtype_bytes"])
    meta["skipped"] = sorted({*map(tuple, meta.get("skipped", [])),
                              *((p.op, p.tp, p.tokens, p.seqs, p.context, p.variant, why) for p, why in skipped)})
    wall = time.perf_counter() - t_start
    meta["wall_time_s"] = round(float(meta["wall_time_s"]) + wall, 1)
    meta["status"] = "complete" if remaining == 0 else "partial"
    profile_io.write_meta(out, meta)
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
    with profile_io.MeasurementWriter(out) as writer:
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
