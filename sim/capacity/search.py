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

A rate passes only while the deployment sustains it: a rate above the probe's throughput T fails unsimulated, and
a point whose waiting queue keeps growing (``sim.serving.load_verdict``) fails whatever its latencies. So capacity
is never above what the deployment serves; the bound that stopped the search is reported with the knob at its limit.

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

This module holds the search; the SLO and workload live in :mod:`sim.capacity.spec`, one
point's simulation in :mod:`sim.capacity.point`, the results file in :mod:`sim.capacity.results`
(all re-exported here).
"""


from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.capacity.outcome import CapacityResult, clients_note, deployment_label
from sim.capacity.point import KernelsRef, PointSpec, PriceRef, ProfileRef, evaluate_point, point_passes
from sim.capacity.results import ResultsFile
from sim.capacity.spec import LATENCIES, STATS, Slo, Workload
from sim.cost.interface import CostModel
from sim.serving.simulator import SimConfig

__all__ = [
    "LATENCIES",
    "PASS_RULES",
    "STATS",
    "CapacityResult",
    "CapacitySearch",
    "InlineExecutor",
    "KernelsRef",
    "PointSpec",
    "PriceRef",
    "ProfileRef",
    "RateSearch",
    "ResultsFile",
    "RunStats",
    "Slo",
    "Workload",
    "evaluate_point",
    "find_capacity",
    "point_passes",
    "run_searches",
]

PASS_RULES = ("median", "all")


# The first seed's bracketing starts at the saturated (all-at-once) throughput of the probe and
# moves by GROWTH_FACTOR (then its square, ...); the other seeds start at the first seed's capacity
# and move by 1 + 2 x rel_tol, since seeds rarely differ by more than a few tens of percent.
START_FRACTION = 1.0
GROWTH_FACTOR = 1.5
# Give up below/above these multiples of the probe's throughput (capacity 0 / unbounded).
MIN_RATE_FRACTION = 1.0 / 1024
MAX_RATE_FACTOR = 16.0


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


class CapacitySearch:
    """The capacity search of one configuration as a state machine the driver feeds with points.

    ``wants()`` returns the points needed next (each once); ``feed(spec, record)`` gives a finished
    one back. Which points are asked for depends only on earlier verdicts, so a rerun asks for
    the same points and can take them from a results file.
    """

    def __init__(self, config: SimConfig, workload: Workload, slo: Slo | None = None, *,
                 seeds: Iterable[int] = (0, 1, 2), rel_tol: float = 0.05, pass_rule: str = "median",
                 cost_model: CostModel | None = None, early_stop: bool = True, start_qps: float | None = None,
                 label: str | None = None, profile: PriceRef | str | os.PathLike[str] | None = None,
                 goodput: dict[str, float] | None = None, clients: tuple[int, float] | None = None) -> None:
        if pass_rule not in PASS_RULES:
            raise ValueError(f"pass_rule must be one of {', '.join(PASS_RULES)}, got {pass_rule!r}")
        if profile is not None and cost_model is not None:
            raise ValueError("give a cost_model or a profile, not both")
        self.profile = (profile if isinstance(profile, (ProfileRef, KernelsRef)) or profile is None
                        else ProfileRef(os.fspath(profile)))
        if self.profile is not None:  # validated here (ProfileError if it cannot price config), built per worker
            config = self.profile.apply(config)
        self.config, self.workload = config, workload.for_model(config.model_spec())
        self.slo = slo or Slo()
        self.seeds = list(dict.fromkeys(int(s) for s in seeds))
        if not self.seeds:
            raise ValueError("at least one seed is needed")
        self.rel_tol, self.pass_rule, self.cost_model, self.early_stop = rel_tol, pass_rule, cost_model, early_stop
        self.goodput = tuple(sorted(goodput.items())) if goodput else None
        self.clients = clients
        priced = "" if self.profile is None else " (profiled)" if isinstance(self.profile, ProfileRef) else " (kernels)"
        if isinstance(config, SimConfig):
            label = label or f"{config.model} {deployment_label(config)}{priced}{clients_note(clients)}"
        self.label = label or f"{config.model_spec().name} disaggregated {config.label}"
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

    def point_spec(self, seed: int, qps: float | None) -> PointSpec:
        """The simulation of seed ``seed`` at rate ``qps`` (None: the probe) of this search."""
        slo = self.slo if self.early_stop else None
        return PointSpec(dataclasses.replace(self.config, seed=seed), self.workload, seed, qps, slo, self.cost_model,
                         self.profile, self.goodput, self.clients)

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
            specs = [self.point_spec(self.seeds[0], None)]
        else:
            specs = [self.point_spec(s, r) for s, r in self._rates()]
        fresh = [sp for sp in specs if sp.key not in self._outstanding]
        self._outstanding.update(sp.key for sp in fresh)
        return fresh

    def _rates(self) -> list[tuple[int, float]]:
        """(seed, rate) to simulate next. A rate above the probe's saturated throughput (every request queued at
        once: the most the deployment serves) fails unsimulated: no capacity above what the deployment sustains."""
        cap = _round_rate(self.saturated_rps) if self.saturated_rps is not None else None  # (rates are rounded)
        while True:
            out, moved = [], False
            for s, rs in list(self.searches.items()):
                r = rs.next_rate()
                if r is not None and cap is not None and r > cap:
                    rs.record(r, False)
                    stop = {"metric": "saturation", "bound": cap}
                    self.records[(s, r)] = {"metrics": None, "stopped": stop}
                    self.points.append({"seed": s, "qps": r, "passed": False, "metrics": None, "stopped": stop})
                    moved = True
                elif r is not None:
                    out.append((s, r))
            first = self.searches[self.seeds[0]]
            if len(self.searches) < len(self.seeds) and first.next_rate() is None:
                self._start_other_seeds()
                moved = True
            if not moved:
                return out

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
                              f"{self.workload.size(None)} skipped: too long for the context, the KV cache or "
                              f"the token budget)")
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
        from sim.serving.load_verdict import binding_knob
        full = {k[5:]: v for k, v in metrics.items() if k.startswith("full_") and v is not None}
        return CapacityResult(self.label, self.config, agg, caps, float(min(caps)), float(max(caps)),
                              all(self.searches[s].bounded for s in self.seeds), self.num_simulations, metrics,
                              self.points, None, self.saturated_rps, self._binding(), self.slo.headroom(metrics),
                              binding_knob(full) if full else None)

    def _binding(self) -> list[str]:
        """The bounds broken at each seed's lowest failing rate (an early stop names its bound), most common first."""
        counts: dict[str, int] = {}
        for s in self.seeds:
            hi = self.searches[s].hi
            rec = self.records.get((s, hi)) if hi is not None else None
            if rec is None:
                continue
            names = ([rec["stopped"]["metric"]] if rec.get("stopped") else
                     self.slo.binding(rec["metrics"]) if rec.get("metrics") else [])
            for n in names:
                counts[n] = counts.get(n, 0) + 1
        return sorted(counts, key=lambda n: -counts[n])


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
                  progress: bool | None = None,
                  profile: PriceRef | str | os.PathLike[str] | None = None) -> CapacityResult:
    """Capacity of one deployment: the highest QPS within ``slo`` (see the module docstring).

    ``jobs`` > 1 runs the seeds' points in parallel processes; ``results`` names a JSONL file to
    record points in and resume from. ``profile`` (a calibration profile folder, or a
    :class:`ProfileRef` naming the GPU to price for) prices every point with the profiled cost
    model instead of the roofline; each worker process builds it once.
    """
    search = CapacitySearch(config, workload or Workload(), slo, seeds=seeds, rel_tol=rel_tol,
                            pass_rule=pass_rule, cost_model=cost_model, early_stop=early_stop, start_qps=start_qps,
                            profile=profile)
    store = ResultsFile(results)
    executor: cf.Executor = InlineExecutor() if jobs <= 1 else cf.ProcessPoolExecutor(jobs)
    try:
        run_searches([search], executor=executor, results=store, progress=progress)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
        store.close()
    return search.result()
