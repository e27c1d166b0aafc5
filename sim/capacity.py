"""Capacity search: the highest Poisson request rate one deployment sustains within its latency SLOs.

Sarathi-Serve's definition: capacity is the highest rate (QPS) whose P99 time between tokens stays
within the SLO and whose median scheduling delay stays under 2 s; both bounds, and extra ones such
as P99 TTFT or P90 TPOT, are configurable (:class:`Slo`).

How it is found (:class:`CapacitySearch`):

1. a *probe*: the workload's N requests all at t=0 give the deployment's saturated throughput T;
2. the first seed *brackets* the rate (:class:`RateSearch`): start at T, multiply by 1.5 while it
   passes or divide while it fails (galloping: 1.5, 1.5, 1.5^2, 1.5^4, ...) until one passing rate
   ``lo`` and one failing rate ``hi`` are known, then *bisects* [lo, hi] until
   ``hi - lo <= rel_tol * lo``; the seed's capacity is ``lo``;
3. every other seed does the same starting at the first seed's capacity with steps of
   1 + 2 rel_tol (seeds rarely differ by more than a few tens of percent).

Each seed draws its own request lengths and arrival pattern; within a seed a rate change only
rescales the same arrival pattern (and a longer run extends it), so the verdict is (nearly)
monotone in the rate. The reported capacity aggregates the per-seed capacities by ``pass_rule``:
``median`` (default; a rate counts as sustained when at least half of the seeds sustain it) or
``all`` (every seed must: the minimum). The spread is the min and max over seeds. The same
seeds and settings give the same answer, whatever the order in which parallel points finish.

A point at rate Q simulates ``max(N, Q x duration)`` requests (:class:`Workload`): a short run
hides a growing queue (a 300-request run at 100 req/s lasts 3 s, too short for a 2-s median
delay to appear), so capacity needs runs long against the delay bound. A point stops as soon as
its verdict is certain (an SLO bound is surely broken), which makes overloaded points cheap.

Simulation points are independent jobs (:func:`evaluate_point`), so :func:`run_searches` can run
many searches' points in parallel and record every finished point in a :class:`ResultsFile`
(JSON Lines, appended and fsynced as each completes) from which a rerun resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from sim.batch import Batch
from sim.cost.base import CostModel, StageCost
from sim.models import get_model
from sim.request import Request, TraceRequest
from sim.simulator import SimConfig

LATENCIES = ("ttft", "tbt", "tpot", "e2e", "scheduling_delay")
STATS = ("p50", "p90", "p99", "mean", "max")
_METRIC_RE = re.compile(rf"^({'|'.join(LATENCIES)})_({'|'.join(STATS)})$")
PASS_RULES = ("median", "all")

# The first seed's bracketing starts at the saturated (all-at-once) throughput of the probe and
# moves by GROWTH_FACTOR (then its square, ...); the other seeds start at the first seed's capacity
# and move by 1 + 2 x rel_tol, since seeds rarely differ by more than a few tens of percent.
START_FRACTION = 1.0
GROWTH_FACTOR = 1.5
# Give up below/above these multiples of the probe's throughput (capacity 0 / unbounded).
MIN_RATE_FRACTION = 1.0 / 1024
MAX_RATE_FACTOR = 16.0


# ---- SLOs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Slo:
    """Upper bounds (seconds) on latency statistics, named ``<latency>_<stat>`` (e.g. ``tbt_p99``).

    ``<latency>`` is one of ttft, tbt, tpot, e2e, scheduling_delay; ``<stat>`` one of p50, p90,
    p99, mean, max (as in ``summary.json``'s ``latency_s``). A rate passes when every bound holds
    and at least one request completed.
    """

    bounds: tuple[tuple[str, float], ...] = (("tbt_p99", 0.1), ("scheduling_delay_p50", 2.0))

    def __post_init__(self) -> None:
        seen = set()
        for name, bound in self.bounds:
            if not _METRIC_RE.match(name):
                raise ValueError(f"unknown SLO metric {name!r}: expected <latency>_<stat> with latency in "
                                 f"{', '.join(LATENCIES)} and stat in {', '.join(STATS)} (e.g. tbt_p99)")
            if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
                raise ValueError(f"SLO bound for {name} must be a finite number of seconds > 0, got {bound!r}")
            if name in seen:
                raise ValueError(f"SLO metric {name} given twice")
            seen.add(name)

    @classmethod
    def make(cls, tbt_p99: float | None = 0.1, scheduling_delay_p50: float | None = 2.0,
             **extra: float | None) -> "Slo":
        """Sarathi-Serve's two bounds (None drops one) plus any ``<latency>_<stat>=seconds``."""
        items = {"tbt_p99": tbt_p99, "scheduling_delay_p50": scheduling_delay_p50, **extra}
        return cls(tuple((k, float(v)) for k, v in items.items() if v is not None))

    def as_dict(self) -> dict[str, float]:
        return dict(self.bounds)

    def violations(self, metrics: dict[str, Any]) -> list[str]:
        """Human-readable list of the bounds ``metrics`` break (empty: the rate passes)."""
        if not metrics.get("completed"):
            return ["no request completed"]
        out = []
        for name, bound in self.bounds:
            v = metrics.get(name)
            if v is not None and v > bound:
                out.append(f"{name} {v:.4g} s > {bound:g} s")
        return out

    def describe(self) -> str:
        return ", ".join(f"{k} <= {v:g} s" for k, v in self.bounds) or "none"


# ---- workload -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Workload:
    """How to make the requests of one simulation point: lengths and an arrival process at a rate.

    A point at rate ``qps`` has ``max(num_requests, ceil(qps x duration))`` requests: a run must be
    long against the scheduling-delay bound, or a queue that grows without limit still shows a
    small median delay (a 300-request run at 100 req/s lasts 3 s). The probe (all requests at
    t=0) has ``num_requests``. Lengths come from ``lengths_from`` (a JSONL trace or a CSV length
    table, pairs drawn jointly with replacement) or from the generator's ``prompt_len``/``output_len``
    specs (default ``sharegpt``); ``max_total_tokens`` scales longer requests down (keeping their
    prompt:output ratio). ``arrival`` is ``poisson`` or ``gamma`` (with ``cv``); see ``sim.tracegen``.
    The same seed draws the same lengths and arrival pattern at every rate (longer runs extend it).
    """

    num_requests: int = 500
    duration: float = 60.0
    prompt_len: str | None = None
    output_len: str | None = None
    lengths_from: str | None = None
    max_total_tokens: int | None = None
    arrival: str = "poisson"
    cv: float = 1.0

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {self.duration}")
        if self.arrival not in ("poisson", "gamma"):
            raise ValueError(f"arrival must be poisson or gamma for a capacity search, got {self.arrival!r}")
        if self.lengths_from is not None and (self.prompt_len or self.output_len):
            raise ValueError("give either lengths_from or prompt_len/output_len, not both")

    def for_model(self, model: str) -> "Workload":
        """This workload with ``max_total_tokens`` defaulting to the model's context length."""
        if self.max_total_tokens is not None:
            return self
        return dataclasses.replace(self, max_total_tokens=get_model(model).max_context)

    def size(self, qps: float | None) -> int:
        """Requests in a point at rate ``qps`` (None: the probe)."""
        if qps is None:
            return self.num_requests
        return max(self.num_requests, math.ceil(qps * self.duration))

    def trace(self, seed: int, qps: float | None) -> list[TraceRequest]:
        """The requests of seed ``seed`` at rate ``qps`` (None: all at t=0, for the probe)."""
        from sim.tracegen import generate_trace
        return generate_trace(self.size(qps), arrival="static" if qps is None else self.arrival,
                              qps=qps or 1.0, cv=self.cv, prompt_len=self.prompt_len, output_len=self.output_len,
                              lengths_from=self.lengths_from, max_total_tokens=self.max_total_tokens, seed=seed)


# ---- one simulation point -------------------------------------------------------------------------

def _canonical(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), default=str)


@dataclass
class PointSpec:
    """One simulation: a deployment, a workload at one rate (None: the probe) and one seed."""

    config: SimConfig
    workload: Workload
    seed: int
    qps: float | None
    slo: Slo | None = None              # enables stopping early once a bound is surely broken
    cost_model: CostModel | None = None  # default: the roofline model of config.gpu

    @property
    def key(self) -> str:
        """Identity of the simulation (not of the SLO): equal keys give equal metrics."""
        ident = {"config": dataclasses.asdict(self.config), "workload": dataclasses.asdict(self.workload),
                 "cost": self.cost_model.describe() if self.cost_model is not None else "roofline",
                 "seed": self.seed, "qps": self.qps}
        return hashlib.sha1(_canonical(ident).encode()).hexdigest()[:20]


class _Stop(Exception):
    """Raised inside the simulation once an SLO bound is certainly broken."""

    def __init__(self, metric: str, bound: float) -> None:
        super().__init__(metric, bound)
        self.metric, self.bound = metric, bound


def _needed(stat: str, g: int) -> int:
    """Values above a bound, out of at most ``g``, that force the final ``stat`` above it.

    numpy's linear-interpolated q-quantile of G values is at least the value at sorted index
    floor(q (G-1)), so it exceeds the bound once k >= G - floor(q (G-1)) values do. The threshold
    grows with G, so an upper bound on G is conservative; one extra value covers float rounding.
    """
    if stat == "max":
        return 1
    return g - math.floor(int(stat[1:]) / 100 * (g - 1)) + 1


class _Watch:
    """Stops a run as soon as its verdict is certain, so overloaded points cost less; same verdict as a full run.

    Per-request latencies are counted as requests finish (``on_finish``). Scheduling delay is
    counted as batches are formed (``on_batch``, through the cost model's ``host_time``): a request
    that is still unscheduled ``bound`` seconds after its arrival will certainly exceed the bound.
    """

    def __init__(self, slo: Slo, trace: list[TraceRequest], simulated: list[int]) -> None:
        outputs = np.array([trace[i].output_tokens for i in simulated], dtype=np.int64)
        sizes = {"tbt": int((outputs - 1).sum()), "tpot": int((outputs > 1).sum())}
        self.finish_rules: list[tuple[str, str, float, int]] = []
        self.delay_rule: tuple[str, float, int] | None = None
        for name, bound in slo.bounds:
            lat, stat = _METRIC_RE.match(name).groups()  # type: ignore[union-attr]
            g = sizes.get(lat, len(simulated))
            if stat == "mean" or g == 0:
                continue
            if lat == "scheduling_delay":
                self.delay_rule = (name, bound, _needed(stat, g))
            else:
                self.finish_rules.append((name, lat, bound, _needed(stat, g)))
        self.counts = [0] * len(self.finish_rules)
        # scheduling-delay bookkeeping, by trace index
        order = sorted(simulated, key=lambda i: trace[i].arrival_time)
        self._order = order
        self._arrivals = [trace[i].arrival_time for i in order]
        self._seen = bytearray(len(trace))
        self._late = bytearray(len(trace))
        self._next = 0
        self._now = 0.0
        self._delay_count = 0

    def on_finish(self, r: Request) -> None:
        tt = r.token_times
        for i, (name, lat, bound, need) in enumerate(self.finish_rules):
            if lat == "tbt":
                k = sum(1 for a, b in zip(tt, tt[1:]) if b - a > bound)
            elif lat == "tpot":
                k = int(len(tt) > 1 and (r.completion_time - tt[0]) / (len(tt) - 1) > bound)
            elif lat == "ttft":
                k = int(tt[0] - r.arrival_time > bound)
            else:
                k = int(r.completion_time - r.arrival_time > bound)
            if k:
                self.counts[i] += k
                if self.counts[i] >= need:
                    raise _Stop(name, bound)

    def on_batch(self, batch: Batch) -> None:
        if self.delay_rule is None:
            return
        name, bound, need = self.delay_rule
        seen, late = self._seen, self._late
        for it in batch.prefill_items:
            r = it.request
            if not seen[r.index]:
                seen[r.index] = 1
                t = r.first_scheduled_time
                if t > self._now:
                    self._now = t
                if t - r.arrival_time > bound and not late[r.index]:
                    self._delay_count += 1
        limit = self._now - bound
        arrivals, order, j = self._arrivals, self._order, self._next
        while j < len(arrivals) and arrivals[j] < limit:
            i = order[j]
            if not seen[i]:
                late[i] = 1
                self._delay_count += 1
            j += 1
        self._next = j
        if self._delay_count >= need:
            raise _Stop(name, bound)


class _WatchedCost(CostModel):
    """Delegates to ``inner``; shows every formed batch to the watch (``host_time`` is priced once per batch)."""

    def __init__(self, inner: CostModel, watch: _Watch) -> None:
        self.inner, self.watch = inner, watch
        self.num_stages, self.name = inner.num_stages, inner.name

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        return self.inner.stage_cost(batch, stage)

    def host_time(self, batch: Batch) -> float:
        self.watch.on_batch(batch)
        return self.inner.host_time(batch)

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        return self.inner.breakdown(batch, stage)

    def describe(self) -> dict:
        return self.inner.describe()


def _simulated_indices(config: SimConfig, trace: list[TraceRequest]) -> list[int]:
    """Trace indices that ``simulate`` will run (it skips requests that can never be served)."""
    from sim.hardware import get_gpu
    from sim.kv_cache import BlockManager
    from sim.memory import kv_cache_blocks
    from sim.schedulers import scheduler_class
    from sim.workload import prepare_requests

    model = get_model(config.model)
    blocks = config.kv_blocks if config.kv_blocks is not None else kv_cache_blocks(
        model, get_gpu(config.gpu), tp=config.tp, pp=config.pp, block_size=config.block_size,
        gpu_memory_utilization=config.gpu_memory_utilization)
    policy = scheduler_class(config.scheduler)
    budget = config.token_budget if config.token_budget is not None else policy.default_token_budget
    accepted, _ = prepare_requests(trace, model=model, block_manager=BlockManager(blocks, config.block_size,
                                                                                  config.watermark),
                                   token_budget=budget, chunks_prefills=policy.chunks_prefills)
    return [r.index for r in accepted]


def _flatten(summary: dict) -> dict[str, Any]:
    lat = summary["latency_s"]
    m: dict[str, Any] = {f"{a}_{s}": lat[a][s] for a in LATENCIES for s in STATS}
    req, thr = summary["requests"], summary["throughput"]
    m.update(completed=req["completed"], skipped=req["skipped"], requests_per_s=thr["requests_per_s"],
             output_tokens_per_s=thr["output_tokens_per_s"], output_tokens=thr["output_tokens"],
             makespan_s=thr["makespan_s"], preemptions=summary["kv_cache"]["preemptions"],
             iterations=summary["batches"]["iterations"])
    return m


def evaluate_point(spec: PointSpec) -> dict[str, Any]:
    """Run one simulation point; returns the JSON-able record stored in the results file.

    ``metrics`` holds the ``<latency>_<stat>`` statistics and throughput; when ``spec.slo`` is
    set and a bound is certainly broken the run stops early: ``metrics`` is None and
    ``stopped`` names the metric and bound. An exception becomes ``error`` (not stored).
    """
    from sim.simulator import simulate

    t0 = time.perf_counter()
    rec: dict[str, Any] = {"key": spec.key, "seed": spec.seed, "qps": spec.qps, "probe": spec.qps is None,
                           "config": dataclasses.asdict(spec.config), "metrics": None, "stopped": None}
    try:
        trace = spec.workload.trace(spec.seed, spec.qps)
        cost, watch = spec.cost_model, None
        if spec.slo is not None and spec.qps is not None:
            simulated = _simulated_indices(spec.config, trace)
            watch = _Watch(spec.slo, trace, simulated)
            if cost is None:  # the model simulate() would build
                from sim.cost.roofline import RooflineCostModel
                cost = RooflineCostModel(spec.config.model, spec.config.gpu, tp=spec.config.tp, pp=spec.config.pp)
            cost = _WatchedCost(cost, watch)
        try:
            res = simulate(trace, spec.config, cost_model=cost, source="capacity",
                           on_finish=watch.on_finish if watch is not None else None)
            rec["metrics"] = _flatten(res.summary)
            if watch is not None and res.summary["requests"]["simulated"] != len(simulated):
                raise RuntimeError(f"capacity: expected {len(simulated)} simulated requests, the simulator ran "
                                   f"{res.summary['requests']['simulated']}")
        except _Stop as stop:
            rec["stopped"] = {"metric": stop.metric, "bound": stop.bound}
    except Exception as exc:  # reported per point; the search of this configuration ends with it
        rec["error"] = f"{type(exc).__name__}: {exc}"
    rec["wall_s"] = round(time.perf_counter() - t0, 4)
    return rec


def point_passes(rec: dict[str, Any], slo: Slo) -> bool | None:
    """Verdict of a stored point under ``slo``; None when the record cannot decide (stopped early on a
    bound that ``slo`` no longer has, or has looser)."""
    if rec.get("metrics") is not None:
        return not slo.violations(rec["metrics"])
    stopped = rec.get("stopped")
    if stopped:
        bound = slo.as_dict().get(stopped["metric"])
        if bound is not None and bound <= stopped["bound"]:
            return False
    return None


# ---- results file -----------------------------------------------------------------------------------

class ResultsFile:
    """Append-only JSON Lines store of finished points, keyed by ``PointSpec.key``.

    Each record is written as one line with a single write, then flushed and fsynced, so an
    interruption loses at most the point being written. On open, a partial last line (no newline,
    or not valid JSON) is ignored and cut off before anything new is appended; a bad line elsewhere
    is an error naming the file and line. A key may have several records (points stopped early
    under different SLOs); :meth:`find` picks one that can judge a point under a given SLO.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: dict[str, list[dict]] = {}
        self._fh = None
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        keep = len(data) - len(lines[-1])  # bytes up to and including the last newline
        for lineno, raw in enumerate(lines[:-1], start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if lineno == len(lines) - 1 and not lines[-1]:  # the last complete line: a torn write
                    keep -= len(raw) + 1
                    break
                raise ValueError(f"{self.path}:{lineno}: not a valid results record ({exc}); "
                                 f"move the file away to start afresh") from None
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError(f"{self.path}:{lineno}: field 'key': missing (not a servesim results file?)")
            self.records.setdefault(rec["key"], []).append(rec)
        if keep != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)

    def find(self, key: str, slo: Slo | None = None) -> dict | None:
        """A stored record of ``key`` that decides its verdict under ``slo`` (any one when None), full runs first."""
        recs = sorted(self.records.get(key, ()), key=lambda r: r.get("metrics") is None)
        return next((r for r in recs if slo is None or point_passes(r, slo) is not None), None)

    def append(self, rec: dict) -> None:
        """Record a finished point durably (errors are kept in memory only, so a rerun retries them)."""
        if rec.get("error"):
            return
        self.records.setdefault(rec["key"], []).append(rec)
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps(rec, sort_keys=True, allow_nan=False, default=_jsonable) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        """Number of stored records."""
        return sum(len(v) for v in self.records.values())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")


# ---- the search -------------------------------------------------------------------------------------

def _round_rate(r: float) -> float:
    return float(f"{r:.6g}")


class RateSearch:
    """Bracketing then bisection on a pass/fail verdict that holds below some unknown rate.

    Bracketing multiplies (or divides) the rate by ``factor`` twice, then by ``factor**2``, ``factor**4``,
    ... until the verdict flips; bisection then halves [lo, hi]. ``next_rate()`` gives the rate to try
    (None when done); ``record(rate, passed)`` feeds the verdict. Done when ``hi - lo <= rel_tol * lo``,
    or when no rate passes down to ``min_rate`` (capacity 0), or when ``max_rate`` still passes
    (capacity ``max_rate``, ``bounded`` False).
    """

    def __init__(self, start: float, *, rel_tol: float = 0.05, factor: float = GROWTH_FACTOR,
                 min_rate: float = 0.0, max_rate: float = math.inf) -> None:
        if not (start > 0 and math.isfinite(start)):
            raise ValueError(f"start rate must be a finite number > 0, got {start}")
        if not 0 < rel_tol < 1:
            raise ValueError(f"rel_tol must be in (0, 1), got {rel_tol}")
        if factor <= 1:
            raise ValueError(f"factor must be > 1, got {factor}")
        self.start, self.rel_tol, self.factor = _round_rate(start), rel_tol, factor
        self.min_rate = _round_rate(min_rate)
        self.max_rate = _round_rate(max_rate) if math.isfinite(max_rate) else max_rate
        self.lo: float | None = None
        self.hi: float | None = None
        self.history: list[tuple[float, bool]] = []

    def next_rate(self) -> float | None:
        lo, hi = self.lo, self.hi
        if lo is None and hi is None:
            return self.start
        # galloping: bracketing steps move by factor, factor, factor**2, factor**4, ...
        step = self.factor ** (2 ** min(max(len(self.history) - 2, 0), 6))
        if hi is None:  # the last step tries max_rate itself
            r = _round_rate(lo * step)
            return r if r <= self.max_rate else (self.max_rate if lo < self.max_rate else None)
        if lo is None:
            r = _round_rate(hi / step)
            return r if r >= self.min_rate else (self.min_rate if hi > self.min_rate else None)
        if hi - lo <= self.rel_tol * lo:
            return None
        r = _round_rate((lo + hi) / 2)
        return r if lo < r < hi else None

    def record(self, rate: float, passed: bool) -> None:
        self.history.append((rate, passed))
        if passed:
            self.lo = rate if self.lo is None else max(self.lo, rate)
        else:
            self.hi = rate if self.hi is None else min(self.hi, rate)

    @property
    def capacity(self) -> float:
        return self.lo or 0.0

    @property
    def bounded(self) -> bool:
        return self.hi is not None


@dataclass
class CapacityResult:
    """Outcome of one configuration's search."""

    label: str
    config: SimConfig
    capacity: float | None            # aggregated over seeds by pass_rule (None on error)
    per_seed: list[float]
    capacity_min: float | None
    capacity_max: float | None
    bounded: bool                     # False: some seed still passed at the highest rate tried
    num_simulations: int              # probe included, cached points included
    metrics: dict[str, Any]           # median over seeds of each metric at each seed's capacity point
    points: list[dict] = field(default_factory=list)  # seed, qps, passed, metrics of every point
    error: str | None = None
    saturated_rps: float | None = None

    def describe(self) -> str:
        if self.error:
            return f"{self.label}: error: {self.error}"
        spread = f"seeds {self.capacity_min:.3g}-{self.capacity_max:.3g}" if len(self.per_seed) > 1 else "1 seed"
        more = "" if self.bounded else " (still passing at the highest rate tried: a lower bound)"
        return (f"{self.label}: capacity {self.capacity:.3g} req/s ({spread}){more}, "
                f"{self.num_simulations} simulations")


class CapacitySearch:
    """The capacity search of one configuration as a state machine the driver feeds with points.

    ``wants()`` returns the points needed next (each once); ``feed(spec, record)`` gives a finished
    one back. Which points are asked for depends only on earlier verdicts, so a rerun asks for
    the same points and can take them from a results file.
    """

    def __init__(self, config: SimConfig, workload: Workload, slo: Slo | None = None, *,
                 seeds: Iterable[int] = (0, 1, 2), rel_tol: float = 0.05, pass_rule: str = "median",
                 cost_model: CostModel | None = None, early_stop: bool = True, start_qps: float | None = None,
                 label: str | None = None) -> None:
        if pass_rule not in PASS_RULES:
            raise ValueError(f"pass_rule must be one of {', '.join(PASS_RULES)}, got {pass_rule!r}")
        self.config, self.workload = config, workload.for_model(config.model)
        self.slo = slo or Slo()
        self.seeds = list(dict.fromkeys(int(s) for s in seeds))
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        self.rel_tol, self.pass_rule, self.cost_model, self.early_stop = rel_tol, pass_rule, cost_model, early_stop
        budget = f" budget {config.token_budget}" if config.token_budget else ""
        self.label = label or (f"{config.model} {config.replicas}x{config.gpu} TP{config.tp} PP{config.pp} "
                               f"{config.scheduler}{budget}")
        self.searches: dict[int, RateSearch] = {}
        self.points: list[dict] = []
        self.records: dict[tuple[int, float], dict] = {}
        self.num_simulations = 0
        self.error: str | None = None
        self.saturated_rps: float | None = None
        self._outstanding: set[str] = set()
        if start_qps is not None:
            self._start(start_qps, min_rate=start_qps * MIN_RATE_FRACTION, max_rate=math.inf)

    def _start(self, start: float, min_rate: float, max_rate: float) -> None:
        self._limits = (start, min_rate, max_rate)
        self.searches[self.seeds[0]] = RateSearch(start, rel_tol=self.rel_tol, min_rate=min_rate,
                                                  max_rate=max_rate)

    def _start_other_seeds(self) -> None:
        """Once the first seed is done, the others search around its capacity."""
        start, min_rate, max_rate = self._limits
        first = self.searches[self.seeds[0]].capacity
        for s in self.seeds[1:]:
            self.searches[s] = (RateSearch(first, rel_tol=self.rel_tol, factor=1 + 2 * self.rel_tol,
                                           min_rate=min_rate, max_rate=max_rate) if first > 0 else
                                RateSearch(start, rel_tol=self.rel_tol, min_rate=min_rate, max_rate=max_rate))

    def _spec(self, seed: int, qps: float | None) -> PointSpec:
        cfg = dataclasses.replace(self.config, seed=seed)
        return PointSpec(cfg, self.workload, seed, qps, self.slo if self.early_stop else None, self.cost_model)

    @property
    def done(self) -> bool:
        if self.error is not None:
            return True
        return len(self.searches) == len(self.seeds) and all(rs.next_rate() is None
                                                              for rs in self.searches.values())

    def wants(self) -> list[PointSpec]:
        """Points to evaluate now (not already handed out)."""
        if self.error is not None:
            return []
        if not self.searches:
            specs = [self._spec(self.seeds[0], None)]
        else:
            specs = [self._spec(s, r) for s, rs in self.searches.items() if (r := rs.next_rate()) is not None]
        fresh = [sp for sp in specs if sp.key not in self._outstanding]
        self._outstanding.update(sp.key for sp in fresh)
        return fresh

    def feed(self, spec: PointSpec, rec: dict) -> None:
        """Take the finished point ``rec`` (a record from :func:`evaluate_point` or the results file)."""
        self._outstanding.discard(spec.key)
        self.num_simulations += 1
        if rec.get("error"):
            self.error = rec["error"]
            return
        if spec.qps is None:
            m = rec["metrics"]
            if not m or not m["completed"] or not m["requests_per_s"]:
                self.error = (f"no request of the workload can be served ({m['skipped'] if m else '?'} of "
                              f"{self.workload.num_requests} skipped: too long for the context or the KV cache)")
                return
            self.saturated_rps = t = float(m["requests_per_s"])
            self._start(t * START_FRACTION, min_rate=t * MIN_RATE_FRACTION, max_rate=t * MAX_RATE_FACTOR)
            return
        passed = point_passes(rec, self.slo)
        if passed is None:  # cannot happen for records evaluated under this SLO
            raise ValueError(f"point {spec.key} cannot be judged under {self.slo.describe()}")
        self.searches[spec.seed].record(spec.qps, passed)
        if (spec.seed == self.seeds[0] and len(self.searches) < len(self.seeds)
                and self.searches[spec.seed].next_rate() is None):
            self._start_other_seeds()
        self.records[(spec.seed, spec.qps)] = rec
        self.points.append({"seed": spec.seed, "qps": spec.qps, "passed": passed, "metrics": rec.get("metrics"),
                            "stopped": rec.get("stopped")})

    def result(self) -> CapacityResult:
        if self.error is not None:
            return CapacityResult(self.label, self.config, None, [], None, None, False, self.num_simulations, {},
                                  self.points, self.error, self.saturated_rps)
        caps = [self.searches[s].capacity for s in self.seeds]
        agg = float(np.median(caps)) if self.pass_rule == "median" else float(min(caps))
        at_cap = [self.records[(s, self.searches[s].lo)]["metrics"] for s in self.seeds
                  if self.searches[s].lo is not None]
        metrics: dict[str, Any] = {}
        if at_cap:
            for k in at_cap[0]:
                vals = [m[k] for m in at_cap if m.get(k) is not None]
                metrics[k] = float(np.median(vals)) if vals else None
        return CapacityResult(self.label, self.config, agg, caps, float(min(caps)), float(max(caps)),
                              all(self.searches[s].bounded for s in self.seeds), self.num_simulations, metrics,
                              self.points, None, self.saturated_rps)


# ---- driving searches --------------------------------------------------------------------------------

class InlineExecutor(cf.Executor):
    """Runs each job in the calling process at submit time (``jobs=1``; tests, debugging)."""

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except Exception as exc:  # handed to the caller through the future
            fut.set_exception(exc)
        return fut


@dataclass
class RunStats:
    """What :func:`run_searches` did: points simulated now, points taken from the results file."""

    simulated: int = 0
    reused: int = 0
    wall_s: float = 0.0
    sim_wall_s: float = 0.0


def run_searches(searches: list[CapacitySearch], *, executor: cf.Executor | None = None,
                 results: ResultsFile | None = None, progress: bool | None = None) -> RunStats:
    """Drive ``searches`` to the end, running their points on ``executor`` (default: inline).

    Points found in ``results`` are reused; every newly finished point is appended to it at once.
    On KeyboardInterrupt pending points are cancelled, the file stays consistent, and the
    interrupt propagates.
    """
    from tqdm import tqdm

    executor = executor if executor is not None else InlineExecutor()
    results = results if results is not None else ResultsFile(None)
    stats = RunStats()
    t0 = time.perf_counter()
    show = sys.stderr.isatty() if progress is None else progress
    bar = tqdm(desc="capacity search", unit="sim", disable=not show, mininterval=0.5, leave=False)
    inflight: dict[cf.Future, tuple[str, list[tuple[CapacitySearch, PointSpec]]]] = {}
    by_key: dict[str, cf.Future] = {}

    def submit(s: CapacitySearch, spec: PointSpec) -> None:
        fut = executor.submit(evaluate_point, spec)
        inflight[fut] = (spec.key, [(s, spec)])
        by_key[spec.key] = fut

    try:
        while True:
            progressed = True
            while progressed:
                progressed = False
                for s in searches:
                    for spec in s.wants():
                        if spec.key in by_key:  # another search asked for the same simulation
                            inflight[by_key[spec.key]][1].append((s, spec))
                            continue
                        rec = results.find(spec.key, None if spec.qps is None else s.slo)
                        if rec is not None:
                            s.feed(spec, rec)
                            stats.reused += 1
                            progressed = True
                            continue
                        submit(s, spec)
            if not inflight:
                break
            finished, _ = cf.wait(list(inflight), return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                key, waiters = inflight.pop(fut)
                del by_key[key]
                rec = fut.result()
                results.append(rec)
                stats.simulated += 1
                stats.sim_wall_s += rec.get("wall_s", 0.0)
                bar.update()
                for s, spec in waiters:
                    if spec.qps is not None and not rec.get("error") and point_passes(rec, s.slo) is None:
                        # stopped early on another search's SLO: run it again under this one's
                        if spec.key in by_key:
                            inflight[by_key[spec.key]][1].append((s, spec))
                        else:
                            submit(s, spec)
                        continue
                    s.feed(spec, rec)
            bar.set_postfix(done=f"{sum(s.done for s in searches)}/{len(searches)} configs", refresh=False)
    except BaseException:
        for fut in inflight:
            fut.cancel()
        raise
    finally:
        bar.close()
        stats.wall_s = time.perf_counter() - t0
    return stats


def find_capacity(config: SimConfig, workload: Workload | None = None, slo: Slo | None = None, *,
                  seeds: Iterable[int] = (0, 1, 2), rel_tol: float = 0.05, pass_rule: str = "median",
                  cost_model: CostModel | None = None, early_stop: bool = True, start_qps: float | None = None,
                  jobs: int = 1, results: str | os.PathLike[str] | None = None,
                  progress: bool | None = None) -> CapacityResult:
    """Capacity of one deployment: the highest QPS within ``slo`` (see the module docstring).

    ``jobs`` > 1 runs the seeds' points in parallel processes; ``results`` names a JSONL file to
    record points in and resume from.
    """
    search = CapacitySearch(config, workload or Workload(), slo, seeds=seeds, rel_tol=rel_tol,
                            pass_rule=pass_rule, cost_model=cost_model, early_stop=early_stop, start_qps=start_qps)
    store = ResultsFile(results)
    executor: cf.Executor = InlineExecutor() if jobs <= 1 else cf.ProcessPoolExecutor(jobs)
    try:
        run_searches([search], executor=executor, results=store, progress=progress)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        store.close()
    return search.result()
