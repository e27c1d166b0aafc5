"""Rebuild a measured run's workload and simulate it: exactly where the client recorded each request's lengths and
send time, otherwise from its load configuration (the report says which, and how)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sim.cli.values import MAX_REQUESTS
from sim.measured.compare import Side
from sim.measured.run import MeasuredRun
from sim.request import TraceRequest


@dataclass
class Workload:
    """The trace replayed and how it was obtained."""

    trace: list[TraceRequest]
    how: str                                   # one sentence for the report
    notes: list[str] = field(default_factory=list)


def _arrivals(n: int, load: dict[str, Any], seed: int) -> tuple[np.ndarray, str]:
    """Send times of ``n`` requests from the client's load settings, and how they were drawn."""
    rate, kind = load.get("request_rate"), str(load.get("arrival") or "").lower()
    if rate is None or not math.isfinite(rate) or rate <= 0:
        return np.zeros(n), "every request sent at t=0 (no finite request rate recorded)"
    rng = np.random.default_rng(seed)
    burst = load.get("burstiness")
    if kind in ("constant", "uniform") or (burst is not None and math.isinf(burst)):
        return np.arange(n) / rate, f"evenly spaced at {rate:g} req/s"
    if burst is not None and burst != 1.0:  # vLLM: gamma gaps of shape burstiness, mean 1/rate, total n/rate
        gaps = rng.gamma(burst, 1.0 / (rate * burst), n)
        how = f"gamma gaps (burstiness {burst:g}) at {rate:g} req/s, seed {seed}"
    else:
        gaps = rng.exponential(1.0 / rate, n)
        how = f"Poisson at {rate:g} req/s, seed {seed}"
    t = np.cumsum(gaps)
    if burst is not None and t[-1] > 0:  # vLLM rescales its delays so that the last is n / rate
        t *= (n / rate) / t[-1]
    return t - t[0], how


def build_workload(run: MeasuredRun, seed: int = 0) -> Workload:
    """The trace of ``run``'s successful requests (ids are their indices in ``run.succeeded``)."""
    ok = run.succeeded
    seed = int(run.load["seed"]) if isinstance(run.load.get("seed"), int) else seed
    notes = []
    if ok:
        usable = [(i, r) for i, r in enumerate(ok) if r.input_tokens >= 1 and r.output_tokens >= 1]
        if len(usable) < len(ok):
            notes.append(f"{len(ok) - len(usable)} successful requests with no input or output tokens recorded are "
                         "not replayed")
        if all(r.send_time is not None for _, r in usable):
            t0 = min((r.send_time for _, r in usable), default=0.0)
            times = [r.send_time - t0 for _, r in usable]
            how = (f"exact: {len(usable):,} successful requests with the input and output lengths and send times "
                   f"the result records")
        else:
            times, arr = _arrivals(len(usable), run.load, seed)
            how = f"lengths exact ({len(usable):,} successful requests); send times reconstructed: {arr}"
        trace = [TraceRequest(str(i), float(t), r.input_tokens, r.output_tokens,
                              {"hash_ids": list(r.hash_ids), "hash_block_size": r.hash_block_size}
                              if r.hash_ids else {}) for (i, r), t in zip(usable, times)]
        return Workload(sorted(trace, key=lambda x: x.arrival_time), how, notes)
    n = run.load.get("num_prompts") or run.load.get("count") or run.load.get("completed")  # the load applied
    if not n and run.load.get("request_rate") and run.load.get("duration_s"):
        n = round(run.load["request_rate"] * run.load["duration_s"])
    mi, mo = run.load.get("mean_input_tokens"), run.load.get("mean_output_tokens")
    if mi is None and run.load.get("total_input_tokens") and n:
        mi = run.load["total_input_tokens"] / n
    if mo is None and run.load.get("total_output_tokens") and n:
        mo = run.load["total_output_tokens"] / n
    if not n or not mi or not mo:
        raise ValueError(f"{run.source}{f' ({run.label})' if run.label else ''}: no per-request records, and the "
                         "result lacks the request count or mean lengths to reconstruct the workload")
    if n > MAX_REQUESTS:  # the bound of -n: more would exhaust memory or run for days
        raise ValueError(f"{run.source}{f' ({run.label})' if run.label else ''}: the result's load is {n:,.0f} "
                         f"requests, more than servesim replays ({MAX_REQUESTS:,}, the bound of -n)")
    times, arr = _arrivals(int(n), run.load, seed)
    pi, po = max(1, round(mi)), max(1, round(mo))
    trace = [TraceRequest(str(i), float(t), pi, po) for i, t in enumerate(times)]
    return Workload(trace, f"reconstructed: {int(n):,} requests of {pi} input and {po} output tokens (the run's "
                           f"means), sent {arr}", notes)


def simulate_workload(run: MeasuredRun, work: Workload, config: Any, cost_model: Any = None) -> tuple[Side, Any]:
    """Simulate the workload; the predicted Side on the client's clock (the engine's for engine timestamps)."""
    from sim.serving import simulate
    gaps: dict[str, np.ndarray] = {}

    def keep(r: Any) -> None:
        if r.token_times is not None and len(r.token_times) > 1:
            gaps[r.request_id] = np.diff(np.asarray(r.token_times, float))

    result = simulate(work.trace, config, cost_model=cost_model, source=run.source, on_finish=keep)
    df = result.requests
    df = df[df["completion_time"].notna()]
    engine = run.definitions.clock == "engine"
    col = {c: df[f"engine_{c}" if engine and f"engine_{c}" in df else c].to_numpy(float)
           for c in ("ttft", "e2e", "scheduling_delay")}
    ids = df["request_id"].astype(str).tolist()
    side = Side(ttft=col["ttft"], e2e=col["e2e"], n=df["generated_tokens"].to_numpy(float),
                gaps=[gaps.get(i, np.array([])) for i in ids], queue=col["scheduling_delay"])
    return side, result
