"""Simulator speed: wall time and simulated output tokens per wall second.

Default: 10,000 requests of ShareGPT lengths (sampled from Sarathi-Serve's ShareGPT
length table when ../shared/traces is present, else the generator's ``sharegpt``
preset), clipped to 4096 tokens, arriving as a Poisson process at --qps, on
Llama-2-7B / A100-80GB, once per scheduler; then 64 replicas with 100,000
requests at 64x the rate. Targets (on a 2-core machine): < 5 s for 10,000
requests on one replica, < 60 s for the 64-replica case. ``--kernels`` also runs
each scheduler on the same trace with the kernel-database cost model and prints
its wall time over the roofline's (target: within 1.5x); building the model
(reading its tables) is timed apart.

    python benchmarks/sim_speed.py            # both cases
    python benchmarks/sim_speed.py --quick    # 2,000 requests, no 64-replica case
    python benchmarks/sim_speed.py --kernels --schedulers sarathi,vllm
    python benchmarks/sim_speed.py --prefix-caching   # also: caching on over off, 10,000 Mooncake requests

``--prefix-caching`` runs ``benchmarks/prefix_caching.py``'s speed comparison (target: within 1.3x; needs
../shared/traces/mooncake).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sim.serving import SimConfig, simulate
from sim.workload.generator import generate_trace

SCHEDULERS = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
SHAREGPT = Path(__file__).resolve().parents[1].parent / "shared/traces/sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
LENGTHS = str(SHAREGPT) if SHAREGPT.exists() else None


def run(n: int, qps: float, scheduler: str, replicas: int = 1, seed: int = 0, kernels: bool = False
        ) -> tuple[float, dict]:
    trace = generate_trace(n, arrival="poisson", qps=qps, lengths_from=LENGTHS, max_total_tokens=4096, seed=seed)
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=scheduler, replicas=replicas,
                    router="least_outstanding" if replicas > 1 else "round_robin")
    cost = None
    if kernels:
        from sim.cost.kernels.model import KernelCostModel
        t0 = time.perf_counter()
        cost = KernelCostModel(cfg.model, cfg.gpu)
        print(f"  (kernels model built in {time.perf_counter() - t0:.2f} s)")
    t0 = time.perf_counter()
    res = simulate(trace, cfg, cost_model=cost)
    return time.perf_counter() - t0, res.summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--qps", type=float, default=2.0, help="arrival rate per replica (default: %(default)s)")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS))
    ap.add_argument("--quick", action="store_true", help="2,000 requests and skip the 64-replica case")
    ap.add_argument("--kernels", action="store_true",
                    help="also run each scheduler with the kernel-database cost model (needs the kernels extra)")
    ap.add_argument("--prefix-caching", action="store_true",
                    help="also time prefix caching on against off on 10,000 of Mooncake's requests")
    args = ap.parse_args()
    n = 2000 if args.quick else args.requests
    print(f"lengths: {LENGTHS or 'generator sharegpt preset'}; arrivals: Poisson at {args.qps} req/s per replica")
    print(f"{'case':<34}{'wall s':>8}{'iterations':>12}{'sim out tok':>13}{'tok/wall s':>12}{'P99 TBT ms':>12}")
    for sched in args.schedulers.split(","):
        wall, s = run(n, args.qps, sched)
        out = s["throughput"]["output_tokens"]
        print(f"{f'{sched}, {n} req, 1 replica':<34}{wall:>8.2f}{s['batches']['iterations']:>12}{out:>13}"
              f"{out / wall:>12.0f}{s['latency_s']['tbt']['p99'] * 1e3:>12.1f}")
        if args.kernels:
            kwall, ks = run(n, args.qps, sched, kernels=True)
            out = ks["throughput"]["output_tokens"]
            print(f"{f'{sched}, kernels model':<34}{kwall:>8.2f}{ks['batches']['iterations']:>12}{out:>13}"
                  f"{out / kwall:>12.0f}{ks['latency_s']['tbt']['p99'] * 1e3:>12.1f}"
                  f"   kernels/roofline wall {kwall / wall:.2f}x")
    if args.prefix_caching:
        import prefix_caching  # the sibling script (benchmarks/ is on the path when this one runs)
        if not prefix_caching.TRACE.exists():
            print(f"skipped the prefix-caching case: {prefix_caching.TRACE} is not here")
        else:
            trace = sorted(prefix_caching.read_any(prefix_caching.TRACE).requests, key=lambda r: r.arrival_time)
            prefix_caching.speed(trace)
    if not args.quick:
        wall, s = run(100_000, args.qps * 64, "sarathi", replicas=64)
        out = s["throughput"]["output_tokens"]
        print(f"{'sarathi, 100000 req, 64 replicas':<34}{wall:>8.2f}{s['batches']['iterations']:>12}{out:>13}"
              f"{out / wall:>12.0f}{s['latency_s']['tbt']['p99'] * 1e3:>12.1f}")


if __name__ == "__main__":
    main()
