"""Print the two SARATHI effects the simulator must reproduce (simulated figures, roofline cost model).

1. Llama-2-7B on one A100-80GB, ShareGPT-like lengths (the real ShareGPT length table when
   ../shared/traces is present, else the generator's preset), Poisson arrivals swept up to vLLM's
   saturation: P99 TBT of vLLM against Sarathi-Serve (budget 512), and Orca for reference.
2. GPT-3-175B on TP8 x PP8 (64 A100-80GB): median pipeline-bubble time per stage, Orca against Sarathi.

    python benchmarks/sarathi_effects.py [--requests 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.serving import SimConfig, simulate
from sim.workload.generator import generate_trace

SHAREGPT = Path(__file__).resolve().parents[1].parent / "shared/traces/sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


def workload(n: int, qps: float, max_total: int, seed: int = 0):
    lengths = str(SHAREGPT) if SHAREGPT.exists() else None
    return generate_trace(n, arrival="poisson", qps=qps, lengths_from=lengths, max_total_tokens=max_total, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    print(f"lengths: {'ShareGPT table ' + str(SHAREGPT) if SHAREGPT.exists() else 'sharegpt preset'}")
    print("\n1. llama-2-7b, 1x a100-80gb: P99 TBT (ms) / median scheduling delay (s), simulated")
    print(f"{'qps':>6}{'vllm':>18}{'sarathi-512':>18}{'orca':>18}")
    for qps in (1.0, 1.5, 2.0, 2.5, 3.0):
        trace = workload(args.requests, qps, 4096)
        cells = []
        for s in ("vllm", "sarathi", "orca"):
            lat = simulate(trace, SimConfig(scheduler=s, token_budget=512 if s == "sarathi" else None)).summary["latency_s"]
            cells.append(f"{lat['tbt']['p99'] * 1e3:>8.0f} / {lat['scheduling_delay']['p50']:>6.2f}")
        print(f"{qps:>6.1f}" + "".join(f"{c:>18}" for c in cells))
    print("\n2. gpt-3-175b, TP8 x PP8 on a100-80gb: pipeline bubbles, simulated")
    trace = workload(max(args.requests // 3, 100), 2.0, 2048)
    for s in ("orca", "sarathi", "vllm"):
        summ = simulate(trace, SimConfig(model="gpt-3-175b", tp=8, pp=8, scheduler=s,
                                         token_budget=512 if s == "sarathi" else None)).summary
        p = summ["pipeline"]
        print(f"{s:>8}: median bubble per stage {p['median_bubble_s'] * 1e3:6.2f} ms, mean bubble fraction "
              f"{p['mean_bubble_fraction']:.1%}, P99 TBT {summ['latency_s']['tbt']['p99'] * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
