"""Which shapes calibration times: token counts dense where kernels change behaviour, geometric above.

Token-count ops get every small size, every tile multiple *and the token after it* up to
``dense_max`` (a GEMM of ``k * tile + 1`` rows pays for a whole extra tile, so both sides of
each step are measured), then a geometric ladder of tile multiples. Prefill attention is a
grid of chunk size x cached context (``chunk + context <= max_context``), decode attention a
grid of batch size x context per request (``batch * context <= max_kv_tokens``), plus a few
decode batches with mixed contexts that check the uniform-context table. ``plan`` turns a
``GridSpec`` into the ordered list of ``Point`` rows a profile holds.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

import numpy as np

from sim.catalog.models import ModelSpec
from sim.cost.profile_format import MIXED, SEQ_AXIS_OPS, TP_INDEPENDENT_OPS, model_ops
from sim.ops import ALL_OPS, COMMUNICATION_OPS, GRAPH_TIMINGS, UNIT_TIMINGS

#: ops timed directly from ``engine.ops.OPS`` with 1-D token or sequence grids
TABLE_1D_OPS: tuple[str, ...] = tuple(op for op in ALL_OPS
                                      if op not in ("attn_prefill", "attn_decode") + COMMUNICATION_OPS)


class Point(NamedTuple):
    """One measurement: op, TP degree (0: independent of TP), tokens, sequences, context per sequence, variant."""

    op: str
    tp: int
    tokens: int
    seqs: int
    context: int
    variant: str = ""


@dataclass(frozen=True)
class GridSpec:
    """The knobs of a calibration grid (recorded in profile.json)."""

    tile: int = 64                  # matmul tile the dense part steps through
    small: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    dense_max: int = 512            # every tile multiple (and +1) up to here
    growth: float = 2 ** 0.5        # geometric factor above dense_max
    max_tokens: int = 8192
    max_seqs: int = 512             # rows of lm head / sampling / final norm
    prefill_chunks: tuple[int, ...] = (1, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    prefill_context_start: int = 128  # contexts 0, start, 2 start, ... and the row's end (max_context - chunk)
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    decode_contexts: tuple[int, ...] = (16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
    max_kv_tokens: int = 1 << 19    # cap on batch x context of one decode point (memory)
    mixed_batches: tuple[int, ...] = (8, 32, 128)
    host_batches: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
    # whole layers / forward passes on the real engine (calibration.iteration): the overhead terms' grid
    unit_decode_batches: tuple[int, ...] = (1, 4, 16, 64, 128)
    unit_decode_contexts: tuple[int, ...] = (32, 256, 1024)
    unit_prefill_chunks: tuple[int, ...] = (16, 64, 256, 1024)
    unit_mixed: tuple[tuple[int, int], ...] = ((4, 64), (32, 64), (4, 256), (32, 256))  # (decodes, chunk)
    seed: int = 0                   # mixed-context draws
    name: str = "full"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GridSpec":
        known = {f for f in cls.__dataclass_fields__}
        def tup(v: object) -> object:
            return tuple(tup(x) for x in v) if isinstance(v, list) else v
        return cls(**{k: tup(v) for k, v in d.items() if k in known})


QUICK = GridSpec(small=(1, 4, 16), dense_max=256, growth=2.0, max_tokens=2048, max_seqs=128,
                 prefill_chunks=(1, 16, 64, 256, 1024), prefill_context_start=256,
                 decode_batches=(1, 4, 16, 64), decode_contexts=(16, 128, 512, 1024, 4096),
                 max_kv_tokens=1 << 16, mixed_batches=(8, 32), host_batches=(1, 4, 16, 64),
                 unit_decode_batches=(1, 16), unit_decode_contexts=(32, 512), unit_prefill_chunks=(16, 256),
                 unit_mixed=((4, 64),), name="quick")
FULL = GridSpec()
#: a CPU's decode attention slows down steeply once a batch's keys leave the caches: contexts every
#: factor 1.5 to follow the cliff, and a lower cap on batch x context (the roofline extrapolates above)
FULL_CPU = dataclasses.replace(
    FULL, max_kv_tokens=1 << 17, name="full-cpu",
    decode_contexts=(16, 32, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192))


def default_grid(device_type: str, quick: bool = False) -> GridSpec:
    """QUICK for smoke runs, else FULL on CUDA and FULL_CPU on a CPU."""
    if quick:
        return QUICK
    return FULL if device_type == "cuda" else FULL_CPU


def token_grid(spec: GridSpec, limit: int | None = None) -> list[int]:
    """Sorted token counts: small sizes, k*tile and k*tile+1 up to dense_max, geometric tile multiples above."""
    top = spec.max_tokens if limit is None else min(limit, spec.max_tokens)
    pts = {n for n in spec.small if n <= top}
    k = spec.tile
    while k <= min(spec.dense_max, top):
        pts.update((k, k + 1) if k + 1 <= top else (k,))
        k += spec.tile
    x = float(spec.dense_max)
    while True:
        x *= spec.growth
        n = int(round(x / spec.tile)) * spec.tile
        if n > top:
            break
        pts.add(n)
    pts.add(top)
    return sorted(pts)


def prefill_points(spec: GridSpec, max_context: int) -> list[tuple[int, int]]:
    """(chunk, cached context) pairs with chunk + context <= max_context; each row ends at the context limit."""
    out: list[tuple[int, int]] = []
    for c in spec.prefill_chunks:
        if c > max_context:
            continue
        ctxs = [0]
        p = spec.prefill_context_start
        while c + p <= max_context:
            ctxs.append(p)
            p *= 2
        if max_context - c > ctxs[-1]:
            ctxs.append(max_context - c)
        out.extend((c, p) for p in ctxs)
    return out


def decode_points(spec: GridSpec, max_context: int) -> list[tuple[int, int]]:
    """(batch, context per request) pairs with context <= max_context and batch x context <= max_kv_tokens."""
    ctxs = sorted({L for L in spec.decode_contexts if L <= max_context} | {max_context})
    return [(b, L) for b in spec.decode_batches for L in ctxs if b * L <= spec.max_kv_tokens]


def mixed_contexts(batch: int, max_context: int, seed: int = 0, max_kv_tokens: int | None = None) -> list[int]:
    """Deterministic, log-uniformly spread contexts (16 .. max_context) of one mixed decode batch."""
    rng = np.random.default_rng([seed, batch])
    hi = max_context if max_kv_tokens is None else min(max_context, max(16, max_kv_tokens // batch))
    lo = min(16, hi)
    ctx = np.exp(rng.uniform(math.log(lo), math.log(hi), size=batch))
    return [int(c) for c in np.clip(np.round(ctx), lo, hi)]


def plan(model: ModelSpec, tps: list[int], spec: GridSpec = FULL, ops: tuple[str, ...] | None = None,
         graphs: bool = False) -> list[Point]:
    """Every point to measure, in order: host overhead, TP-independent ops, then each TP's ops; with ``graphs``
    (the engine replays decodes from CUDA graphs) also the decode forward passes through that path.

    Only the ops ``model`` runs are planned (``profile_format.model_ops``: a mixture of experts times its
    MoE ops, and the dense MLP's only if a layer is dense). Communication ops are not planned here (the
    profiler measures TP and PP ones with torch.distributed when several devices exist, otherwise the cost
    model takes them from the roofline, as it always does the expert-parallel all-to-alls).
    """
    if model.mla is not None:  # its attention ops would time grouped-query shapes it does not have
        raise ValueError(f"{model.name}: the engine does not implement multi-head latent attention (MLA), so it "
                         f"cannot be calibrated; price it with the roofline or the kernel databases")
    known = ALL_OPS + UNIT_TIMINGS + GRAPH_TIMINGS
    runs = model_ops(model, known)
    want = set(ops) if ops is not None else set(runs) - (set() if graphs else set(GRAPH_TIMINGS))
    unknown = want - set(known)
    if unknown:
        raise ValueError(f"unknown op(s) {', '.join(sorted(unknown))}; ops are: {', '.join(known)}")
    idle = want - set(runs)
    if idle:
        raise ValueError(f"{model.name} does not run op(s) {', '.join(sorted(idle))}; its ops are: {', '.join(runs)}")
    for tp in tps:
        model.check_tp(tp)
    tokens = token_grid(spec)
    seqs = token_grid(spec, spec.max_seqs)
    pts: list[Point] = []

    def one_d(op: str, tp: int) -> None:
        if op in SEQ_AXIS_OPS:
            pts.extend(Point(op, tp, n, n, 0) for n in seqs)
        else:
            pts.extend(Point(op, tp, n, 0, 0) for n in tokens)

    if "host_overhead" in want:
        pts.extend(Point("host_overhead", 0, b, b, 0) for b in spec.host_batches)
    if want & set(UNIT_TIMINGS):  # one engine run per shape times both units; both rows are planned
        from calibration.iteration import unit_shapes
        for t, s, c, v in unit_shapes(model.max_context, spec.unit_decode_batches, spec.unit_decode_contexts,
                                      spec.unit_prefill_chunks, spec.unit_mixed):
            pts.extend(Point(op, 0, t, s, c, v) for op in UNIT_TIMINGS)
    if "forward_graph" in want:  # decode shapes of the unit grid, through the engine's CUDA-graph path
        from calibration.iteration import unit_shapes
        for t, s, c, v in unit_shapes(model.max_context, spec.unit_decode_batches, spec.unit_decode_contexts,
                                      (), ()):
            pts.append(Point("forward_graph", 0, t, s, c, v))
    for op in TABLE_1D_OPS:
        if op in want and op in TP_INDEPENDENT_OPS and op != "host_overhead":
            one_d(op, 0)
    for tp in tps:
        for op in TABLE_1D_OPS:
            if op in want and op not in TP_INDEPENDENT_OPS:
                one_d(op, tp)
        if "attn_prefill" in want:
            pts.extend(Point("attn_prefill", tp, c, 1, p) for c, p in prefill_points(spec, model.max_context))
        if "attn_decode" in want:
            pts.extend(Point("attn_decode", tp, b, b, L) for b, L in decode_points(spec, model.max_context))
            for b in spec.mixed_batches:
                ctx = mixed_contexts(b, model.max_context, spec.seed, spec.max_kv_tokens)
                pts.append(Point("attn_decode", tp, b, b, int(round(sum(ctx) / b)), MIXED))
    return pts


@dataclass
class PlanSummary:
    """Point counts per op for printing."""

    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, points: list[Point]) -> "PlanSummary":
        c: dict[str, int] = {}
        for p in points:
            c[p.op] = c.get(p.op, 0) + 1
        return cls(c)

    def __str__(self) -> str:
        return ", ".join(f"{op} {n}" for op, n in self.counts.items())


# ---- time estimate --------------------------------------------------------------------------------

#: per-call launch/dispatch cost and per-point setup seconds assumed by the estimate, per device type
CALL_OVERHEAD_S = {"cuda": 30e-6, "cpu": 15e-6}
POINT_SETUP_S = {"cuda": 5e-3, "cpu": 2e-3}
#: one-off seconds per TP degree on CUDA (compiling FlexAttention kernels for new head counts)
COMPILE_S_PER_TP = 30.0
#: a host-overhead point runs the tiny model for ~40 iterations
HOST_POINT_S = {"cuda": 0.3, "cpu": 0.5}
#: a unit-timing row (half of one engine shape run: layer and forward rows come from the same runs)
UNIT_POINT_S = {"cuda": 0.05, "cpu": 0.1}


def estimate_seconds(points: list[Point], model: ModelSpec, gpu: str | None, device_type: str,
                     timing: tuple[int, int, int, float] = (3, 5, 50, 0.02)) -> float:
    """Rough wall seconds to measure ``points``: roofline time of each call on ``gpu`` (a nominal CPU when
    None) plus per-call and per-point overheads, with repeats chosen as the timer will choose them.

    ``timing`` is (warm-up, min repeats, max repeats, target seconds per point).
    """
    from sim.catalog.hardware import GPUSpec, get_gpu
    from sim.cost.op_roofline import OpRoofline
    from sim.cost.roofline import RooflineCostModel

    spec = get_gpu(gpu) if gpu else GPUSpec("nominal-cpu", 2e11, 2e10, 64 << 30, 32e9, interconnect="pcie")
    warmup, lo, hi, target = timing
    call = CALL_OVERHEAD_S.get(device_type, 30e-6)
    setup = POINT_SETUP_S.get(device_type, 5e-3)
    refs: dict[int, OpRoofline] = {}
    total = 0.0
    for p in points:
        if p.op == "host_overhead":
            total += HOST_POINT_S.get(device_type, 0.5)
            continue
        if p.op in UNIT_TIMINGS + GRAPH_TIMINGS:
            total += UNIT_POINT_S.get(device_type, 0.1)
            continue
        tp = max(p.tp, 1)
        ref = refs.get(tp)
        if ref is None:
            dtype_bytes = 2 if device_type == "cuda" else 4
            ref = refs[tp] = OpRoofline(RooflineCostModel(model, spec, tp=tp, dtype_bytes=dtype_bytes))
        t = ref.time(p.op, p.tokens, p.seqs, p.context) + call
        reps = min(hi, max(lo, int(target / t)))
        total += (warmup + reps) * t + setup
    if device_type == "cuda":
        total += COMPILE_S_PER_TP * len({p.tp for p in points if p.op in ("attn_prefill", "attn_decode")})
    return total


#: seconds of measuring after which the plan's estimate is scaled by the speed seen so far
RE_ESTIMATE_AFTER_S = 20.0


def re_estimate(elapsed: float, planned_done: float, planned_rest: float, rounds: int, budget: float | None,
                log: Callable[[str], None]) -> float:
    """The whole run's seconds, re-estimated from how long the points measured so far took against their
    plan (the planner's per-point and compile constants are guesses; this machine's speed is not)."""
    ratio = elapsed / planned_done if planned_done > 0 else 1.0
    total = rounds * (elapsed + ratio * planned_rest)
    tail = ""
    if budget is not None and total > budget:
        tail = f"; the {budget:.0f} s budget stops it first (rerun the same command to resume)"
    log(f"re-estimated from the first {elapsed:.0f} s ({ratio:.1f}x the plan's pace): about {total:.0f} s{tail}")
    return total
