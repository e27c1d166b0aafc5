"""The kernels cost model's speed against the roofline's, on the same requests, interleaved (issue 34, item 2).

Per scheduler, one trace is simulated in-process (``simulate()``) with the roofline and with the kernel-database
model (``--cost-model kernels``) in the order r, k, k, r, r, k, ... so that load on a shared machine falls on both
alike; each model is built fresh before each run (no memo carried between runs) and its build is timed apart. The
ratios printed are median(kernels) / median(roofline) of the simulate() wall times and of this process's CPU
times over the same calls (target: at most 1.3x; on a machine shared with other work the CPU time is the
steadier). Traces: 10,000 requests of ShareGPT lengths (Sarathi-Serve's length table from ../shared/traces, else
the generator's preset) clipped to 4096 tokens, Poisson at 2 req/s, as ``benchmarks/sim_speed.py``; and the Azure
2023 conversation trace from ../shared/traces when present (its own arrival times; requests longer than
Llama-2-7B's context are skipped by the simulator). Llama-2-7B on one A100-80GB. Wall and CPU times are
measured; latencies simulated.

    python benchmarks/kernels_speed.py                       # both traces, every scheduler, 3 runs of each model
    python benchmarks/kernels_speed.py --traces sharegpt --schedulers sarathi --repeats 5
    python benchmarks/kernels_speed.py --profile sarathi --traces azure   # cProfile of one kernels run, top 25
    python benchmarks/kernels_speed.py --replay sarathi   # microseconds per priced batch, replayed, both models

``--decode-run``: price the kernels model's decode stretches through ``KernelCostModel.decode_run`` (one call per
stretch, the same floats as ``stage_cost`` per step) where ``sim/serving/stretch.py`` does not call it itself yet.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import statistics
import time
from pathlib import Path

from sim.serving import SimConfig, simulate
from sim.workload.generator import generate_trace

SCHEDULERS = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
SHAREGPT = SHARED / "sarathi" / "sharegpt_8k_filtered_stats_llama2_tokenizer.csv"
AZURE = SHARED / "azure2023" / "AzureLLMInferenceTrace_conv.csv"


def traces(names: list[str], n: int, qps: float) -> dict[str, list]:
    """The requested traces that are available, by name."""
    out = {}
    if "sharegpt" in names:
        lengths = str(SHAREGPT) if SHAREGPT.exists() else None
        out["sharegpt"] = generate_trace(n, arrival="poisson", qps=qps, lengths_from=lengths, max_total_tokens=4096,
                                         seed=0)
    if "azure" in names:
        if AZURE.exists():
            from sim.workload.importers import read_azure
            out["azure"] = list(read_azure(AZURE).requests)
        else:
            print(f"skipped the azure trace: {AZURE} is not here")
    return out


def build(kind: str, cfg: SimConfig):
    """A fresh cost model of ``kind`` for ``cfg``, as ``servesim simulate --cost-model`` builds it, and seconds."""
    t0 = time.perf_counter()
    if kind == "kernels":
        from sim.cost.kernels.model import for_simulation
        cost = for_simulation(cfg, None)
    else:
        from sim.cost.roofline import RooflineCostModel
        model = cfg.model_spec()
        cost = RooflineCostModel(model, cfg.gpu, **cfg.roofline_kwargs(model))
    return cost, time.perf_counter() - t0


DECODE_RUN = False  # --decode-run


def one_run(trace: list, cfg: SimConfig, kind: str) -> tuple[float, float, float, dict]:
    """(build seconds, simulate wall seconds, simulate CPU seconds of this process, summary) of one run by ``kind``."""
    cost, built = build(kind, cfg)
    if DECODE_RUN:
        use_decode_run(cost)
    gc.collect()
    w0, c0 = time.perf_counter(), time.process_time()
    summary = simulate(trace, cfg, cost_model=cost).summary
    return built, time.perf_counter() - w0, time.process_time() - c0, summary


def compare(name: str, trace: list, sched: str, repeats: int) -> tuple[float, float]:
    """Interleaved runs of both models on one trace and scheduler; prints medians and the ratios (wall, CPU)."""
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=sched)
    walls: dict[str, list[float]] = {"roofline": [], "kernels": []}
    cpus: dict[str, list[float]] = {"roofline": [], "kernels": []}
    builds: dict[str, list[float]] = {"roofline": [], "kernels": []}
    iters: dict[str, int] = {}
    for i in range(repeats):
        for kind in (("roofline", "kernels") if i % 2 == 0 else ("kernels", "roofline")):
            b, w, c, s = one_run(trace, cfg, kind)
            builds[kind].append(b)
            walls[kind].append(w)
            cpus[kind].append(c)
            iters[kind] = s["batches"]["iterations"]
    r, k = statistics.median(walls["roofline"]), statistics.median(walls["kernels"])
    rc, kc = statistics.median(cpus["roofline"]), statistics.median(cpus["kernels"])
    print(f"{name:<9}{sched:<19}{r:>8.2f}{k:>8.2f}{k / r:>7.2f}x{rc:>8.2f}{kc:>8.2f}{kc / rc:>7.2f}x"
          f"{iters['roofline']:>9}{iters['kernels']:>9}{statistics.median(builds['kernels']):>8.3f}"
          f"{max(builds['kernels']):>7.3f}   wall spread r {min(walls['roofline']):.2f}-{max(walls['roofline']):.2f}, "
          f"k {min(walls['kernels']):.2f}-{max(walls['kernels']):.2f}", flush=True)
    return k / r, kc / rc


def profile(trace: list, sched: str, top: int) -> None:
    """cProfile of one kernels-model run (model built outside the profile), sorted by own time."""
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=sched)
    cost, _ = build("kernels", cfg)
    if DECODE_RUN:
        use_decode_run(cost)
    prof = cProfile.Profile()
    prof.enable()
    simulate(trace, cfg, cost_model=cost)
    prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def use_decode_run(cost: object) -> None:
    """Make ``sim.serving.stretch`` price ``cost``'s decode stretches through its ``decode_run`` as it does the
    roofline's (it recognises the roofline by type; the name is pointed at this model's class for this run)."""
    from sim.cost.roofline import RooflineCostModel
    from sim.serving import stretch

    stretch.RooflineCostModel = type(cost) if hasattr(cost, "decode_run") else RooflineCostModel


def replay(trace: list, sched: str, repeats: int) -> None:
    """Microseconds per ``stage_cost`` + ``host_time`` call of each model on the batches one kernels run priced
    (stretch steps included, as single batches), interleaved, medians; fresh models each time."""
    from sim.batch import Batch, BatchItem

    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=sched)
    cost, _ = build("kernels", cfg)
    seen: list[tuple] = []
    price = type(cost).stage_cost

    def record(self, batch, stage):
        seen.append((batch.size, batch.num_decode_tokens, batch.decode_context,
                     [(it.num_new_tokens, it.num_cached_tokens) for it in batch.prefill_items]))
        return price(self, batch, stage)
    type(cost).stage_cost = record
    try:
        simulate(trace, cfg, cost_model=cost)
    finally:
        type(cost).stage_cost = price
    batches = []
    for size, nd, ctx, pre in seen:
        b = Batch.__new__(Batch)
        b.entries, b._items = [None] * size, None
        b.prefill_items = [BatchItem(None, c, p) for c, p in pre]
        b.num_prefill_tokens, b.num_decode_tokens, b.decode_context = sum(c for c, _ in pre), nd, ctx
        batches.append(b)
    us: dict[str, list[float]] = {"roofline": [], "kernels": []}
    for i in range(repeats):
        for kind in (("roofline", "kernels") if i % 2 == 0 else ("kernels", "roofline")):
            model, _ = build(kind, cfg)
            t0 = time.perf_counter()
            for b in batches:
                model.host_time(b)
                model.stage_cost(b, 0)
            us[kind].append((time.perf_counter() - t0) / len(batches) * 1e6)
    r, k = statistics.median(us["roofline"]), statistics.median(us["kernels"])
    print(f"{sched}: {len(batches)} priced batches ({sum(1 for b in batches if not b.prefill_items)} decode-only); "
          f"us per batch, medians of {repeats}: roofline {r:.2f}, kernels {k:.2f} ({k / r:.2f}x)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000, help="ShareGPT-length requests (default: %(default)s)")
    ap.add_argument("--qps", type=float, default=2.0, help="their Poisson arrival rate (default: %(default)s)")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS))
    ap.add_argument("--traces", default="sharegpt,azure", help="sharegpt and/or azure (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each model per case (default: %(default)s)")
    ap.add_argument("--profile", metavar="SCHEDULER", default=None,
                    help="instead: cProfile one kernels run of SCHEDULER on each trace and print the top functions")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--replay", metavar="SCHEDULER", default=None,
                    help="instead: time each model's pricing of the batches of one run of SCHEDULER, replayed")
    ap.add_argument("--decode-run", action="store_true",
                    help="price the kernels model's stretches through its decode_run (see above)")
    args = ap.parse_args()
    global DECODE_RUN
    DECODE_RUN = args.decode_run
    cases = traces(args.traces.split(","), args.requests, args.qps)
    if args.replay:
        for name, trace in cases.items():
            print(f"== {name}")
            replay(trace, args.replay, args.repeats)
        return
    if args.profile:
        for name, trace in cases.items():
            print(f"== {name}, {args.profile}, kernels model")
            profile(trace, args.profile, args.top)
        return
    print(f"Llama-2-7B, A100-80GB; in-process simulate() times, interleaved, medians of {args.repeats} per model; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at start")
    print(f"{'trace':<9}{'scheduler':<19}{'wall r':>8}{'wall k':>8}{'k/r':>8}{'cpu r':>8}{'cpu k':>8}{'k/r':>8}"
          f"{'iters r':>9}{'iters k':>9}{'build k':>8}{'max':>7}")
    ratios = [compare(name, trace, sched, args.repeats) for name, trace in cases.items()
              for sched in args.schedulers.split(",")]
    wall, cpu = [r[0] for r in ratios], [r[1] for r in ratios]
    print(f"load average {os.getloadavg()[0]:.2f} at the end; k/r of wall times {min(wall):.2f}-{max(wall):.2f}, "
          f"of CPU times {min(cpu):.2f}-{max(cpu):.2f} (target: at most 1.3)")


if __name__ == "__main__":
    main()
