"""Capacity-planning speed: wall time of `servesim plan` over 2 GPU types x TP{1,2,4,8} x 2 schedulers x 4 budgets.

Llama-2-7B, ShareGPT-like lengths (the generator's preset, clipped to the model's 4096-token
context), Sarathi-Serve's SLO (P99 TBT <= 0.1 s, median scheduling delay <= 2 s), 3 seeds per
configuration, default requests per point; vLLM ignores token budgets (it does not chunk
prompts), so the grid is 2 x 4 x (1 + 4) = 40 capacity searches. Target on a 2-core machine:
under 5 minutes with the default settings.

    python benchmarks/plan_speed.py                 # all CPUs, a fresh temporary results file
    python benchmarks/plan_speed.py --jobs 2 -n 300 --out /tmp/plan-bench
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from sim.capacity.planner import enumerate_candidates, format_table, make_executor, plan
from sim.capacity.search import Slo, Workload
from sim.cli.plan import DEFAULT_DURATION, DEFAULT_NUM_REQUESTS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=None, help="worker processes (default: all CPUs)")
    ap.add_argument("-n", "--num-requests", type=int, default=DEFAULT_NUM_REQUESTS)
    ap.add_argument("--duration", type=float, default=DEFAULT_DURATION)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--rel-tol", type=float, default=0.05)
    ap.add_argument("--out", default=None, help="output folder (default: a fresh temporary one)")
    ap.add_argument("--table", action="store_true", help="print the plan table too")
    args = ap.parse_args()

    candidates = enumerate_candidates("llama-2-7b", ["a100-80gb", "h100-sxm"], max_gpus=8, tps=[1, 2, 4, 8],
                                      schedulers=["vllm", "sarathi"], budgets=[256, 512, 1024, 2048])
    workload = Workload(num_requests=args.num_requests, duration=args.duration)
    out = args.out or tempfile.mkdtemp(prefix="plan-speed-")
    jobs = args.jobs or os.cpu_count() or 1
    executor = make_executor(jobs)
    t0 = time.perf_counter()
    try:
        res = plan(candidates, workload, Slo.make(tbt_p99=0.1, scheduling_delay_p50=2.0),
                   seeds=range(args.seeds), rel_tol=args.rel_tol, out_dir=out, executor=executor)
    finally:
        executor.shutdown()
    wall = time.perf_counter() - t0
    st = res.stats
    searches = sum(c.config is not None for c in candidates)
    if args.table:
        print(format_table(res.table))
    print(f"configurations: {len(candidates)} ({searches} searched), seeds {args.seeds}, "
          f"max({args.num_requests}, {args.duration:g} s x rate) requests per point, rel_tol {args.rel_tol}, "
          f"{jobs} worker processes")
    print(f"simulations: {st.simulated} run + {st.reused} reused ({(st.simulated + st.reused) / searches:.1f} per "
          f"configuration), {st.sim_wall_s:.0f} s of simulation")
    print(f"wall time: {wall:.1f} s ({'under' if wall < 300 else 'OVER'} the 5-minute target); results in {out}")


if __name__ == "__main__":
    main()
