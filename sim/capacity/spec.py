"""What a capacity search measures against: the latency SLO (:class:`Slo`) and each point's :class:`Workload`."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from sim.catalog.models import ModelSpec, get_model
from sim.request import TraceRequest

LATENCIES = ("ttft", "tbt", "tpot", "e2e", "scheduling_delay")
STATS = ("p50", "p90", "p99", "mean", "max")
_METRIC_RE = re.compile(rf"^({'|'.join(LATENCIES)})_({'|'.join(STATS)})$")


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
             **extra: float | None) -> Slo:
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
        if metrics.get("saturated"):  # a growing queue: no rate above what the deployment sustains passes
            out.append(f"saturated (the waiting queue grows at {metrics.get('queue_growth_rps') or 0:.3g} req/s)")
        return out

    def binding(self, metrics: dict[str, Any]) -> list[str]:
        """The names of the bounds ``metrics`` break ("saturation" for a growing queue), in the SLO's order."""
        out = [name for name, bound in self.bounds if (metrics.get(name) or 0) > bound]
        return out + (["saturation"] if metrics.get("saturated") else [])

    def headroom(self, metrics: dict[str, Any]) -> dict[str, float]:
        """Each bound's use at ``metrics``: value / bound (1 is at the bound), for the bounds with a value."""
        return {name: metrics[name] / bound for name, bound in self.bounds if metrics.get(name) is not None}

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
    prompt:output ratio). ``arrival`` is ``poisson`` or ``gamma`` (with ``cv``); see ``sim.workload.generator``.
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
    turns: int = 1                                 # conversations of this many turns (sim.workload.reuse)
    think_time_s: float = 0.0
    system_prompt: tuple[int, float] | None = None  # (tokens, fraction) of a shared system prompt
    replay: str | None = None  # a trace whose requests (lengths and prefix reuse) are replayed in order

    def __post_init__(self) -> None:
        if self.num_requests < 1:
            raise ValueError(f"num_requests must be >= 1, got {self.num_requests}")
        if not (math.isfinite(self.duration) and self.duration >= 0):
            raise ValueError(f"duration must be a finite number of seconds >= 0, got {self.duration}")
        if self.arrival not in ("poisson", "gamma"):
            raise ValueError(f"arrival must be poisson or gamma for a capacity search, got {self.arrival!r}")
        if self.lengths_from is not None and (self.prompt_len or self.output_len):
            raise ValueError("give either lengths_from or prompt_len/output_len, not both")
        if self.replay is not None and (self.lengths_from or self.prompt_len or self.output_len or self.turns > 1
                                        or self.system_prompt):
            raise ValueError("a replayed trace gives the lengths and the reuse; give no other length or reuse flag")

    def for_model(self, model: str | ModelSpec) -> Workload:
        """This workload with ``max_total_tokens`` defaulting to the model's context length."""
        if self.max_total_tokens is not None:
            return self
        return dataclasses.replace(self, max_total_tokens=get_model(model).max_context)

    def size(self, qps: float | None) -> int:
        """Requests in a point at rate ``qps`` (None: the probe); a replayed trace has at most its own."""
        n = self.num_requests if qps is None else max(self.num_requests, math.ceil(qps * self.duration))
        return min(n, len(_replayed(self.replay))) if self.replay else n

    def trace(self, seed: int, qps: float | None) -> list[TraceRequest]:
        """The requests of seed ``seed`` at rate ``qps`` (None: all at t=0, for the probe)."""
        from sim.workload.generator import generate_trace
        if self.replay:
            return self._replay(seed, qps)
        return generate_trace(self.size(qps), arrival="static" if qps is None else self.arrival,
                              qps=qps or 1.0, cv=self.cv, prompt_len=self.prompt_len, output_len=self.output_len,
                              lengths_from=self.lengths_from, max_total_tokens=self.max_total_tokens, seed=seed,
                              turns=self.turns, think_time_s=self.think_time_s, system_prompt=self.system_prompt)

    def _replay(self, seed: int, qps: float | None) -> list[TraceRequest]:
        """The trace's first requests in arrival order, with their reuse fields, at arrivals generated for ``qps``.

        Drawing lengths with replacement would repeat requests, and a repeated request hits its own copy in a
        prefix cache: replaying in order keeps the trace's reuse as it is.
        """
        import numpy as np

        from sim.workload.generator import generate_arrivals
        from sim.workload.transforms import clip_total
        reqs = _replayed(self.replay)[:self.size(qps)]
        times = (np.zeros(len(reqs)) if qps is None else
                 generate_arrivals(np.random.default_rng(np.random.SeedSequence(seed).spawn(1)[0]), len(reqs),
                                   self.arrival, qps, self.cv))
        out = [TraceRequest(r.request_id, float(t), r.prompt_tokens, r.output_tokens, r.extra, r.line)
               for r, t in zip(reqs, times.tolist())]
        return clip_total(out, self.max_total_tokens) if self.max_total_tokens is not None else out


@functools.lru_cache(maxsize=4)
def _replayed(path: str) -> list[TraceRequest]:
    """A replayed trace's requests in arrival order, read once per process."""
    from sim.workload.importers import read_any
    return sorted(read_any(path).requests, key=lambda r: r.arrival_time)
