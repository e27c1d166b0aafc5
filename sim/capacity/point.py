"""One capacity-search point as an independent, picklable job: one rate and seed, stopped once its verdict is sure."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sim.batch import Batch
from sim.capacity.spec import _METRIC_RE, LATENCIES, STATS, Slo, Workload
from sim.cost.interface import CostModel, DelegatingCost
from sim.request import Request, TraceRequest
from sim.serving.closed_loop import ClosedLoop
from sim.serving.load_verdict import add_load_verdict
from sim.serving.simulator import SimConfig

# ---- one simulation point -------------------------------------------------------------------------

def _canonical(x: Any) -> str:
    return json.dumps(x, sort_keys=True, separators=(",", ":"), default=str)


@functools.lru_cache(maxsize=32)
def _profile_digest(path: str) -> str:
    """Content hash of a profile folder's files (so a recalibrated profile never reuses stale points)."""
    h = hashlib.sha1()
    for name in ("profile.json", "measurements.csv"):
        f = Path(path) / name
        h.update(name.encode() + b"\0" + (f.read_bytes() if f.is_file() else b""))
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=16)
def _profiled_cost(path: str, gpu: str | None, model: str, tp: int, pp: int) -> tuple[str | None, CostModel]:
    """``sim.cost.profiled.for_simulation``, once per process for each profile and deployment shape.

    Returns the GPU it sets in the config (None: unchanged) and the cost model.
    """
    from sim.cost.profiled import for_simulation
    base = SimConfig(model=model, tp=tp, pp=pp)
    config, cost = for_simulation(path, base, gpu)
    return (config.gpu if config != base else None), cost


@dataclass(frozen=True)
class ProfileRef:
    """A calibration profile to price points with: picklable, so each worker process builds the cost model itself.

    ``path`` is the profile folder (made absolute); ``gpu`` the catalogue GPU to price for (None: the
    profile's own device, as ``servesim simulate --profile`` without ``--gpu``; another GPU than the
    profile's gives a roofline-scaled estimate).
    """

    path: str
    gpu: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", os.path.abspath(os.fspath(self.path)))

    def ident(self) -> dict[str, Any]:
        """What identifies the prices: the folder, its content and the target GPU."""
        return {"profile": self.path, "digest": _profile_digest(self.path), "gpu": self.gpu}

    def apply(self, config: SimConfig) -> SimConfig:
        """``config`` as the profile prices it (a catalogue-GPU profile sets its GPU); ProfileError if it cannot."""
        gpu = _profiled_cost(self.path, self.gpu, config.model, config.tp, config.pp)[0]
        return dataclasses.replace(config, gpu=gpu) if gpu is not None else config

    def cost_model(self, config: SimConfig) -> CostModel:
        """The profiled cost model of ``config`` (cached per process)."""
        return _profiled_cost(self.path, self.gpu, config.model, config.tp, config.pp)[1]

    def record(self, described: dict[str, Any]) -> dict[str, Any]:
        """What a point's results record says of these prices (``described``: the cost model's describe())."""
        return {"profile": self.path, "digest": _profile_digest(self.path),
                "profile_device": described.get("profile_device"), "estimate": bool(described.get("estimate"))}

    def fallback(self, config: SimConfig) -> str | None:
        """Why this profile cannot price ``config`` in a plan (its GPU, a TP it measured, its model), or None.

        A plan compares GPUs, so a profile prices only configurations on its own catalogue GPU; the
        rest fall back to the roofline rather than to a cross-GPU estimate.
        """
        from sim.catalog.hardware import get_gpu
        from sim.cost.profile_format import ProfileError, read_meta

        meta = read_meta(self.path)
        own = meta["device"].get("gpu")
        if not own:
            return f"roofline: the profile was measured on {meta['device'].get('name', '?')}, not a catalogue GPU"
        if get_gpu(own).name != config.gpu:
            return f"roofline: the profile was measured on {get_gpu(own).name}, not {config.gpu}"
        try:
            self.apply(config)
        except ProfileError as exc:
            return f"roofline: {exc}"
        return None

    def describe(self, config: SimConfig) -> str:
        """The prices of ``config``'s points, in words."""
        d = self.cost_model(config).describe()
        return (f"profile {self.path} (measured on {d['profile_device']}, priced for {d['gpu']}"
                + (", an estimate" if d.get("estimate") else "") + ")")


_SHAPE_FIELDS = ("model", "max_model_len", "gpu", "tp", "pp", "ep", "dtype", "kv_cache_dtype", "router_skew")


@functools.lru_cache(maxsize=16)
def _kernels_cost(shape: tuple, kernel_db: str | None) -> CostModel:
    """The kernel-database cost model, once per process for each deployment shape (``_SHAPE_FIELDS`` values)."""
    from sim.cost.kernels.model import for_simulation
    return for_simulation(SimConfig(**dict(zip(_SHAPE_FIELDS, shape))), kernel_db)


@dataclass(frozen=True)
class KernelsRef:
    """Prices points with the kernel-database cost model (``--cost-model kernels``); picklable, built per worker."""

    kernel_db: str | None = None

    def ident(self) -> dict[str, Any]:
        """What identifies the prices: the database package version and the framework asked for."""
        from sim.cost.kernels.database import package_version
        return {"cost_model": "kernels", "kernel_db": self.kernel_db, "package": package_version()}

    def apply(self, config: SimConfig) -> SimConfig:
        """``config`` unchanged; KernelDatabaseError (a ValueError) if no database prices its GPU."""
        self.cost_model(config)
        return config

    def cost_model(self, config: SimConfig) -> CostModel:
        return _kernels_cost(tuple(getattr(config, f) for f in _SHAPE_FIELDS), self.kernel_db)

    def record(self, described: dict[str, Any]) -> dict[str, Any]:
        return {"system": described.get("system"), "framework": described.get("framework"),
                "version": described.get("version")}

    def fallback(self, config: SimConfig) -> str | None:
        """Why the databases cannot price ``config`` (no tables for its GPU), or None."""
        try:
            self.apply(config)
        except ValueError as exc:
            return f"roofline: {exc}"
        return None

    def describe(self, config: SimConfig) -> str:
        d = self.cost_model(config).describe()
        return f"kernels (AIConfigurator's {d['system']} {d['framework']} {d['version']} tables, roofline elsewhere)"


#: what prices a capacity search's points other than the roofline: a calibration profile or the kernel databases
PriceRef = ProfileRef | KernelsRef


@dataclass
class PointSpec:
    """One simulation: a deployment, a workload at one rate (None: the probe) and one seed."""

    config: SimConfig
    workload: Workload
    seed: int
    qps: float | None
    slo: Slo | None = None              # enables stopping early once a bound is surely broken
    cost_model: CostModel | None = None  # default: the roofline model of config.gpu
    profile: PriceRef | None = None      # a calibration profile or the kernel databases (built in the worker)
    goodput: tuple[tuple[str, float], ...] | None = None  # goodput's per-request bounds (None: the default)
    clients: tuple[int, float] | None = None  # closed-loop clients and their think time (None: open loop)

    def __post_init__(self) -> None:
        if self.cost_model is not None and self.profile is not None:
            raise ValueError("give a cost_model or a profile, not both")

    @property
    def key(self) -> str:
        """Identity of the simulation (not of the SLO): equal keys give equal metrics."""
        cost: Any = "roofline"
        if self.cost_model is not None:
            cost = self.cost_model.describe()
        elif self.profile is not None:
            cost = self.profile.ident()
        ident = {"config": dataclasses.asdict(self.config), "workload": dataclasses.asdict(self.workload),
                 "cost": cost, "seed": self.seed, "qps": self.qps}
        if self.clients is not None:  # (absent otherwise: open-loop points keep their keys)
            ident["clients"] = list(self.clients)
        return hashlib.sha1(_canonical(ident).encode()).hexdigest()[:20]


def _cost_record(spec: PointSpec, cost: CostModel | None) -> dict[str, Any]:
    """Which cost model priced a point, for its results record."""
    if cost is None:
        return {"name": "roofline", "gpu": spec.config.gpu if isinstance(spec.config, SimConfig)
                else spec.config.prefill.gpu}
    d = cost.describe()
    out = {"name": d.get("name", getattr(cost, "name", type(cost).__name__)), "gpu": d.get("gpu", spec.config.gpu)}
    if spec.profile is not None:
        out.update(spec.profile.record(d))
    return out


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
        n, first = r.num_generated, r.first_token_time
        for i, (name, lat, bound, need) in enumerate(self.finish_rules):
            if lat == "tbt":  # times folded away (a very large run): at least its largest gap counts
                k = sum(1 for a, b in zip(tt, tt[1:]) if b - a > bound) if tt is not None else int(
                    (r.tbt_max or 0.0) > bound)
            elif lat == "tpot":
                k = int(n > 1 and (r.completion_time - first) / (n - 1) > bound)
            elif lat == "ttft":
                k = int(first - r.arrival_time > bound)
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
                self._now = max(self._now, t)
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


class _WatchedCost(DelegatingCost):
    """Delegates to ``inner``; shows every formed batch to the watch (``host_time`` is priced once per batch)."""

    def __init__(self, inner: CostModel, watch: _Watch) -> None:
        super().__init__(inner)
        self.watch = watch

    def host_time(self, batch: Batch) -> float:
        self.watch.on_batch(batch)
        return super().host_time(batch)


def _simulated_indices(config: SimConfig, trace: list[TraceRequest]) -> list[int]:
    """Trace indices that ``simulate`` will run (it skips requests that can never be served)."""
    from sim.kv.block_manager import BlockManager
    from sim.schedulers import scheduler_class
    from sim.workload.servable import prepare_requests

    model = config.model_spec()
    blocks = config.kv_blocks if config.kv_blocks is not None else config.plan_memory(model).num_blocks
    blocks //= config.num_virtual_engines  # vLLM v0 with PP: a request fits one virtual engine's share or never
    policy = scheduler_class(config.scheduler)
    budget = config.effective_token_budget(model)
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
    if "prefix_cache" in summary:
        m["prefix_hit_rate_tokens"] = summary["prefix_cache"]["hit_rate_tokens"]
    sat, good = summary.get("saturation") or {}, summary.get("goodput") or {}
    m.update(saturated=sat.get("saturated"), offered_rps=sat.get("offered_rps"),
             queue_growth_rps=sat.get("queue_growth_rps"), goodput_rps=good.get("requests_per_s"),
             good_fraction=good.get("fraction"))
    for knob, frac in ((summary.get("limits") or {}).get("full_fraction") or {}).items():
        m[f"full_{knob}"] = frac
    return m


def evaluate_point(spec: PointSpec) -> dict[str, Any]:
    """Run one simulation point; returns the JSON-able record stored in the results file.

    ``metrics`` holds the ``<latency>_<stat>`` statistics and throughput; when ``spec.slo`` is
    set and a bound is certainly broken the run stops early: ``metrics`` is None and
    ``stopped`` names the metric and bound. An exception becomes ``error`` (not stored).
    """
    from sim.serving.simulator import simulate

    t0 = time.perf_counter()
    rec: dict[str, Any] = {"key": spec.key, "seed": spec.seed, "qps": spec.qps, "probe": spec.qps is None,
                           "config": dataclasses.asdict(spec.config), "metrics": None, "stopped": None}
    try:
        trace = spec.workload.trace(spec.seed, spec.qps)
        cost, watch = spec.cost_model, None
        if spec.profile is not None:
            cost = spec.profile.cost_model(spec.config)
        rec["cost_model"] = _cost_record(spec, cost)
        if not isinstance(spec.config, SimConfig):  # a disaggregated deployment: no early stop
            from sim.serving.disagg import simulate_disaggregated
            res = simulate_disaggregated(trace, spec.config, source="capacity")
            add_load_verdict(res.summary, res.requests, None, dict(spec.goodput) if spec.goodput else None)
            rec["metrics"] = _flatten(res.summary)
            rec["wall_s"] = round(time.perf_counter() - t0, 4)
            return rec
        if spec.slo is not None and spec.qps is not None and spec.clients is None:  # (sends wait for clients)
            simulated = _simulated_indices(spec.config, trace)
            watch = _Watch(spec.slo, trace, simulated)
            if cost is None:  # the model simulate() would build
                from sim.cost.roofline import RooflineCostModel
                model = spec.config.model_spec()
                cost = RooflineCostModel(model, spec.config.gpu, **spec.config.roofline_kwargs(model))
            cost = _WatchedCost(cost, watch)
        try:
            res = simulate(trace, spec.config, cost_model=cost, source="capacity",
                           on_finish=watch.on_finish if watch is not None else None,
                           closed_loop=ClosedLoop(*spec.clients) if spec.clients else None)
            if spec.goodput:
                add_load_verdict(res.summary, res.requests, res.batches, dict(spec.goodput))
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
