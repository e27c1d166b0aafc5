"""Speculative decoding across loads (simulated): where it helps, where it stops paying, capacity under a TBT SLO.

Every figure printed is a simulation (vllm_v1, roofline cost model unless --cost-model kernels), never a
measurement. Requests: ShareGPT lengths (Sarathi-Serve's length table from ../shared/traces when present, else the
generator's sharegpt preset), clipped to 4096 tokens, Poisson arrivals. Acceptance: each method's published default
(sim/spec/config.py) or the assumed rate named in the row.

    python benchmarks/spec_decode.py                  # Llama-3.1-8B on one H100 and DeepSeek-V3 on 8 H200s
    python benchmarks/spec_decode.py --requests 200   # quicker
    python benchmarks/spec_decode.py --ngram-host     # time a NumPy n-gram lookup on this CPU (NGRAM_HOST_S)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sim.serving import SimConfig, simulate
from sim.workload.generator import generate_trace

SHAREGPT = Path(__file__).resolve().parents[1].parent / "shared/traces/sarathi/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
LENGTHS = str(SHAREGPT) if SHAREGPT.exists() else None

LLAMA = {"model": "llama-3.1-8b", "gpu": "h100-sxm"}
LLAMA_SPECS = {
    "off": (None, None),
    "eagle3 k=3 (a=0.65, published)": ('{"method": "eagle3", "num_speculative_tokens": 3}', None),
    "eagle3 k=5 (a=0.65, published)": ('{"method": "eagle3", "num_speculative_tokens": 5}', None),
    "draft llama-3.2-1b k=4 (a=0.6, assumed)": (
        '{"method": "draft_model", "num_speculative_tokens": 4, "model": "llama-3.2-1b"}', "0.6"),
}
DSV3 = {"model": "deepseek-v3", "gpu": "h200", "tp": 8, "ep": 8}
DSV3_SPECS = {
    "off": (None, None),
    "mtp k=1 (a=0.875, published)": ('{"method": "mtp", "num_speculative_tokens": 1}', None),
    "mtp k=3 (a=0.875 geometric, extrapolated)": ('{"method": "mtp", "num_speculative_tokens": 3}', None),
}


def point(deployment: dict, spec: tuple, qps: float, n: int, seed: int) -> dict:
    """One simulated rate: the figures the tables print."""
    trace = generate_trace(n, arrival="poisson", qps=qps, lengths_from=LENGTHS, max_total_tokens=4096, seed=seed)
    cfg = SimConfig(scheduler="vllm_v1", speculative_config=spec[0], spec_acceptance=spec[1], seed=seed,
                    **deployment)
    s = simulate(trace, cfg).summary
    lat = s["latency_s"]
    sp = s.get("speculative", {})
    return {"tpot_p50": lat["tpot"]["p50"], "tbt_p99": lat["tbt"]["p99"], "ttft_p50": lat["ttft"]["p50"],
            "delay_p50": lat["scheduling_delay"]["p50"], "tok_s": s["throughput"]["output_tokens_per_s"],
            "chunk_p99": sp.get("itl_per_chunk_s", {}).get("p99", lat["tbt"]["p99"]),
            "accept": sp.get("mean_accepted_length"), "spec_blocks": sp.get("kv_spec_blocks", {}).get("mean"),
            "blocks": s["kv_cache"]["blocks_per_replica"], "preempt": s["kv_cache"]["preemptions"]}


def sweep(title: str, deployment: dict, specs: dict, rates: list[float], n: int, seed: int,
          slo_s: float) -> None:
    """A markdown table per deployment; then the highest swept rate within the SLO for each setting."""
    print(f"\n### {title}\n")
    print("| setting | req/s | TPOT p50 ms | ITL/token p99 ms | ITL/chunk p99 ms | TTFT p50 ms | out tok/s | "
          "tokens/step | spec KV blocks | preempt |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    capacity = {}
    for name, spec in specs.items():
        best = [None, None]  # the SLO on every token's gap (the project's TBT), on the gaps between chunks
        for qps in rates:
            p = point(deployment, spec, qps, n, seed)
            for i, key in enumerate(("tbt_p99", "chunk_p99")):
                if p[key] <= slo_s and p["delay_p50"] <= 2.0 and best[i] == (rates[rates.index(qps) - 1]
                                                                            if qps != rates[0] else None):
                    best[i] = qps
            acc = f"{p['accept']:.2f}" if p["accept"] else "1"
            blocks = f"{p['spec_blocks']:.0f} of {p['blocks']}" if p["spec_blocks"] is not None else f"0 of {p['blocks']}"
            print(f"| {name} | {qps:g} | {p['tpot_p50'] * 1e3:.1f} | {p['tbt_p99'] * 1e3:.1f} | "
                  f"{p['chunk_p99'] * 1e3:.1f} | {p['ttft_p50'] * 1e3:.0f} | {p['tok_s']:.0f} | {acc} | {blocks} | "
                  f"{p['preempt']} |")
        capacity[name] = best
    print(f"\ncapacity (highest of the swept rates, all lower ones passing) with median scheduling delay <= 2 s and "
          f"P99 gap <= {slo_s * 1e3:g} ms, the gap taken per token (the project's TBT) / per streamed chunk:")
    for name, (tok, chunk) in capacity.items():
        print(f"- {name}: {tok if tok is not None else '< ' + str(rates[0])} / "
              f"{chunk if chunk is not None else '< ' + str(rates[0])} req/s")


def ngram_host(tokens: int = 4096, n: int = 3, k: int = 3, reps: int = 2000) -> float:
    """Seconds one prompt-lookup proposal takes with NumPy on this CPU: the last earlier occurrence of the
    request's final n-gram, and the k tokens after it (what vLLM's NgramProposer finds, there numba-compiled)."""
    rng = np.random.default_rng(0)
    toks = rng.integers(0, 32000, tokens)
    toks[1000:1000 + n] = toks[-n:]  # one match to find
    t0 = time.perf_counter()
    for _ in range(reps):
        cand = np.flatnonzero(toks[n - 1:-1] == toks[-1])  # windows ending with the last token
        ok = np.ones(cand.size, dtype=bool)
        for j in range(1, n):
            ok &= toks[cand + n - 1 - j] == toks[-1 - j]
        hits = cand[ok]
        _ = toks[hits[-1] + n: hits[-1] + n + k] if hits.size else None
    return (time.perf_counter() - t0) / reps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300, help="requests per point (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slo-ms", type=float, default=100.0,
                    help="P99 TBT bound for the capacity line (default: 100, capacity's default)")
    ap.add_argument("--ngram-host", action="store_true", help="only time the n-gram lookup on this CPU")
    args = ap.parse_args()
    if args.ngram_host:
        print(f"n-gram lookup over 4096 tokens, NumPy, this CPU: {ngram_host() * 1e6:.1f} us per request")
        return
    t0 = time.perf_counter()
    sweep("Llama-3.1-8B, one H100 SXM", LLAMA, LLAMA_SPECS, [1, 2, 4, 6, 8, 12, 16, 24], args.requests, args.seed,
          args.slo_ms / 1e3)
    sweep("DeepSeek-V3 (FP8), 8 H200, TP8 EP8", DSV3, DSV3_SPECS, [1, 2, 4, 8, 16], args.requests, args.seed,
          args.slo_ms / 1e3)
    print(f"\n(simulated in {time.perf_counter() - t0:.0f} s wall)")


if __name__ == "__main__":
    main()
