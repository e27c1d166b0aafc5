"""Prefix caching on Mooncake's trace (simulated): hit rate, TTFT and capacity, with each router; and its speed.

Llama-3.1-8B on H100-SXM (roofline cost model), Sarathi-Serve (budget 512) and vLLM v1 (2048), prefix
caching off and on; one replica at the trace's arrivals scaled to a quarter of its rate, and four
replicas at its own rate with round-robin, least-outstanding and cache-aware routing. Capacity: one
replica, the trace's first requests replayed in order (``Workload.replay``) and generated conversations,
under the default SLO (P99 TBT 100 ms, median scheduling delay 2 s). Speed: the simulator's wall time with
caching on against off on 10,000 requests (the trace twice and a part, the later copies shifted in
time; their hash ids unchanged, so later copies can reuse earlier ones). Writes results/prefix_caching.md.

    python benchmarks/prefix_caching.py            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from sim.capacity.search import Slo, Workload, find_capacity
from sim.serving import SimConfig, simulate
from sim.workload.importers import read_any
from sim.workload.stats import ideal_reuse
from sim.workload.transforms import rescale_rate

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared/traces/mooncake/synthetic_trace.jsonl"
OUT = ROOT / "results/prefix_caching.md"
BASE = SimConfig(model="llama-3.1-8b", gpu="h100-sxm")
SCHEDULERS = (("sarathi", 512), ("vllm_v1", 2048))


def _row(label: str, summary: dict, wall: float) -> str:
    lat, pc = summary["latency_s"]["ttft"], summary.get("prefix_cache") or {}
    hit = pc.get("hit_rate_tokens")
    imb = (summary.get("routing") or {}).get("imbalance_max_over_mean")
    return (f"| {label} | {'-' if hit is None else f'{hit:.1%}'} | {lat['p50']:.2f} | {lat['p99']:.2f} | "
            f"{summary['latency_s']['tbt']['p99'] * 1e3:.1f} | {'-' if imb is None else f'{imb:.2f}'} | {wall:.1f} |")


def latency_table(trace: list) -> list[str]:
    """TTFT and hit rate per scheduler, caching, replicas and router."""
    lines = ["| scheduler, caching, deployment | prefix hit rate (tokens) | TTFT P50 s | TTFT P99 s | TBT P99 ms | "
             "requests max/mean per replica | wall s |", "|---|---|---|---|---|---|---|"]
    quarter = rescale_rate(trace, len(trace) / (trace[-1].arrival_time - trace[0].arrival_time) / 4)
    for sched, budget in SCHEDULERS:
        for caching in (False, True):
            runs = [("1 replica, 1/4 of the trace's rate", quarter, 1, "round_robin")]
            routers = ("round_robin", "least_outstanding") + (("cache_aware",) if caching else ())
            runs += [(f"4 replicas, {r}", trace, 4, r) for r in routers]
            for label, reqs, replicas, router in runs:
                cfg = dataclasses.replace(BASE, scheduler=sched, token_budget=budget, replicas=replicas, router=router,
                                          enable_prefix_caching=caching)
                t0 = time.perf_counter()
                res = simulate(reqs, cfg)
                lines.append(_row(f"{sched}, {'on' if caching else 'off'}, {label}", res.summary,
                                  time.perf_counter() - t0))
                print(lines[-1], flush=True)
    return lines


#: the capacity workloads: Mooncake's first requests replayed in order; generated conversations (4 turns, 10 s
#: think time, a 1,000-token system prompt in 80% of them), where the reuse stays within reach of the cache
CAPACITY_WORKLOADS = {
    "Mooncake, first 600 requests replayed": Workload(num_requests=600, duration=0, replay=str(TRACE)),
    "conversations: 4 turns, 1,000-token system prompt (80%)": Workload(
        num_requests=600, duration=0, turns=4, think_time_s=10.0, system_prompt=(1000, 0.8), max_total_tokens=32768),
}


def capacity_table() -> list[str]:
    """Capacity of one replica per workload, scheduler and caching."""
    lines = ["| workload | scheduler | caching | capacity req/s | P99 TTFT at capacity s | hit rate at capacity |",
             "|---|---|---|---|---|---|"]
    for wname, wl in CAPACITY_WORKLOADS.items():
        for sched, budget in SCHEDULERS:
            for caching in (False, True):
                cfg = dataclasses.replace(BASE, scheduler=sched, token_budget=budget, enable_prefix_caching=caching)
                res = find_capacity(cfg, wl, Slo(), seeds=(0,), rel_tol=0.05, progress=False)
                m = res.metrics
                hit = m.get("prefix_hit_rate_tokens")
                lines.append(f"| {wname} | {sched} | {'on' if caching else 'off'} | {res.capacity:.3f} | "
                             f"{m['ttft_p99']:.2f} | {'-' if hit is None else f'{hit:.1%}'} |")
                print(lines[-1], flush=True)
    return lines


def speed(trace: list, n: int = 10_000, repeats: int = 5) -> list[str]:
    """Wall time with caching on over off, Sarathi on 4 replicas, ``n`` requests: the two alternate ``repeats``
    times; the fastest of each counts, and the median of each pair's ratio is shown beside it (this machine's
    speed drifts by 10-30% within minutes, so a single pair says little)."""
    span = trace[-1].arrival_time - trace[0].arrival_time + 1.0
    reqs = [dataclasses.replace(r, request_id=f"{k}-{r.request_id}", arrival_time=r.arrival_time + k * span)
            for k in range(-(-n // len(trace))) for r in trace][:n]
    walls: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(repeats):
        for caching in (False, True):
            cfg = dataclasses.replace(BASE, replicas=4, router="least_outstanding", enable_prefix_caching=caching)
            t0 = time.perf_counter()
            simulate(reqs, cfg)
            walls[caching].append(time.perf_counter() - t0)
    off, on = min(walls[False]), min(walls[True])
    pairs = sorted(b / a for a, b in zip(walls[False], walls[True]))
    runs = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(walls[False], walls[True]))
    line = (f"{n:,} requests, Sarathi-Serve, 4 replicas: {off:.1f} s wall with caching off, {on:.1f} s on (fastest "
            f"of {repeats} alternating runs; off/on each time: {runs}): **{on / off:.2f}x**, median of the pairs' "
            f"ratios {pairs[len(pairs) // 2]:.2f}x (target: within 1.3x)")
    print(line, flush=True)
    return [line]


NOTES = "## What it shows\n"  # the section of OUT written by hand, after the generated ones


def main() -> None:
    trace = sorted(read_any(TRACE).requests, key=lambda r: r.arrival_time)
    ideal = ideal_reuse(trace)["ideal_hit_rate_tokens"]
    print(f"{len(trace)} requests; an infinite cache would hit {ideal:.1%} of prompt tokens")
    lat = latency_table(trace)
    cap = capacity_table()
    spd = speed(trace)
    text = "\n".join([
        "# Prefix caching on Mooncake's trace (simulated)", "",
        "All figures are **simulated** (roofline cost model of Llama-3.1-8B on H100-SXM; no measurement of ours). "
        f"Trace: `../shared/traces/mooncake/synthetic_trace.jsonl`, {len(trace):,} requests, 512-token `hash_ids`, "
        f"mean prompt {sum(r.prompt_tokens for r in trace) / len(trace):,.0f} tokens (10 longer than the 128k "
        f"context are skipped). An infinite prefix cache would hit **{ideal:.1%}** of the prompt tokens "
        "(`servesim trace stats`); the KV cache of one H100 holds about 450k tokens (28k blocks), some 30 of "
        "these prompts, so most reuse is evicted before it comes back.", "",
        "Command: `python benchmarks/prefix_caching.py`. Hit rates count each request's first admission (a "
        "re-admission after preemption is counted apart). The latency and capacity figures are the simulator's, the "
        "wall times measured on this 2-core VM.", "",
        "## Latency and hit rate", "", *lat, "",
        "## Capacity (one replica; P99 TBT 100 ms, median scheduling delay 2 s)", "",
        "Mooncake's trace replayed in order at each rate tried; generated conversations drawn per seed "
        "(`Workload(turns=4, think_time_s=10, system_prompt=(1000, 0.8))`, lengths of the `sharegpt` preset per "
        "turn's new message).", "", *cap, "",
        "## Simulator speed", "", *spd, "",
    ])
    notes = OUT.read_text().partition(NOTES)[2] if OUT.exists() else ""  # the hand-written reading, kept
    OUT.write_text(text + ("\n" + NOTES + notes if notes else ""))
    print(f"wrote {OUT}" + (f" (its '{NOTES.strip()}' section kept: update it by hand)" if notes else ""))


if __name__ == "__main__":
    main()
