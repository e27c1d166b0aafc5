"""Replay four real vLLM 0.19 (V1) serving runs through servesim; compare engine-side, request by request.

What: LLMServingSim's published runs (``../shared/measured/vllm-e2e/``, MIT: 300 ShareGPT requests at about 10 req/s,
RTX 4090 or RTX PRO 6000) replayed with their exact requests, arrival times and engine arguments; vLLM's measured
TTFT, TPOT, E2E and queue wait (mean, P50, P90, P99), KV capacity, occupancy and makespan beside servesim's, on
vLLM's engine-side definitions. Why: a development check of servesim's model of vLLM V1 (issue 30). The data is
read at run time, never copied here; the report holds summary statistics only.

    python benchmarks/vllm_e2e.py --out results/vllm_e2e.md     # all runs, a few seconds
    python benchmarks/vllm_e2e.py --runs RTX4090 --no-kernels   # one run, roofline only
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from a checkout: the simulator's package is beside this folder
# the runs' reader is servesim's (`servesim validate --measured` reads the same files): shared, not duplicated
from sim.measured.vllm_engine import (
    GPUS,
    MODELS,
    EngineArgs,
    NotExpressible,
    block_hash_ids,
    engine_args,
    read_meta,
    read_prompts,
    read_requests_table,
)

DATA = ROOT.parent / "shared" / "measured" / "vllm-e2e"
MEASURED = "measured (vLLM 0.19, LLMServingSim's runs)"
STATS = ("mean", "p50", "p90", "p99")
METRICS = ("ttft", "tpot", "e2e", "queue")
LABELS = {"ttft": "TTFT", "tpot": "TPOT", "e2e": "E2E", "queue": "queue wait"}
RUN_FOLDERS = ("RTX4090/Llama-3.1-8B", "RTXPRO6000/Llama-3.1-8B", "RTXPRO6000/Qwen3-32B",
               "RTXPRO6000/Qwen3-30B-A3B-Instruct-2507")


@dataclass
class Run:
    """One measured run: where it is, its engine arguments, its requests and the prompts' block hashes."""

    folder: str
    args: EngineArgs
    requests: pd.DataFrame      # requests.jsonl, file order (bench-0, bench-1, ...)
    hash_ids: list[list[int]]   # per request: one id per full block_size-token block of its prompt, prefix chained
    timeseries: pd.DataFrame
    model: str                  # servesim's catalogue names
    gpu: str


def load_run(folder: str, data: Path = DATA) -> Run:
    """Read one run (meta.json, requests.jsonl, timeseries.csv and its workload's token ids)."""
    base = data / folder
    meta = read_meta(base / "meta.json")
    args = engine_args(meta)
    reqs = read_requests_table(base / "requests.jsonl")
    prompts = read_prompts(data / meta["dataset_path"])
    if len(prompts) != len(reqs) or any(len(p) != n for p, n in zip(prompts, reqs["input_toks"])):
        raise ValueError(f"{base}: requests.jsonl and {meta['dataset_path']} do not describe the same requests")
    return Run(folder, args, reqs, block_hash_ids(prompts, args.block_size),
               pd.read_csv(base / "timeseries.csv"), MODELS[args.model], GPUS[folder.split("/")[0]])


def build_trace(run: Run) -> list:
    """servesim's trace: engine-side arrivals (queued_ts from the first), token counts, the prompts' block hashes."""
    from sim.request import TraceRequest
    r = run.requests
    t = r["queued_ts"].to_numpy(float) - r["queued_ts"].min()
    trace = [TraceRequest(rid, float(a), int(i), int(o), {"hash_ids": h, "hash_block_size": run.args.block_size})
             for rid, a, i, o, h in zip(r["request_id"], t, r["input_toks"], r["output_toks"], run.hash_ids,
                                                strict=True)]
    return sorted(trace, key=lambda x: x.arrival_time)


def sim_config(run: Run, **overrides: Any) -> Any:
    """The SimConfig of the run's deployment (raises NotExpressible for one servesim cannot configure)."""
    from sim.serving import SimConfig
    a = run.args
    if a.dp > 1 and a.expert_parallel:
        raise NotExpressible(f"DP{a.dp} x EP (TP{a.tp}): vLLM spreads the experts over the {a.dp * a.tp} GPUs of "
                             f"{a.dp} data-parallel engines that step together; servesim's EP group is the TP group "
                             "of one replica (ep = tp)")
    fields = {f.name for f in dataclasses.fields(SimConfig)}
    kw: dict[str, Any] = {"model": run.model, "gpu": run.gpu, "tp": a.tp, "replicas": a.dp, "scheduler": "vllm_v1",
                          "token_budget": a.max_num_batched_tokens, "max_batch_size": a.max_num_seqs,
                          "max_model_len": a.max_model_len, "gpu_memory_utilization": a.gpu_memory_utilization,
                          "block_size": a.block_size, "enable_prefix_caching": a.enable_prefix_caching}
    if "frontend" in fields:  # arrivals are already the engine's (queued_ts): no API server in front
        kw["frontend"] = "none"
    if "async_scheduling" in fields and a.async_scheduling is not None:
        kw["async_scheduling"] = a.async_scheduling
    kw.update(overrides)
    return SimConfig(**kw)


def describe(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, float)[np.isfinite(x)]
    p = np.percentile(x, [50, 90, 99]) if x.size else [np.nan] * 3
    return {"mean": float(x.mean()) if x.size else np.nan, "p50": float(p[0]), "p90": float(p[1]), "p99": float(p[2])}


def figures(q: np.ndarray, s: np.ndarray, f: np.ndarray, last: np.ndarray, n: np.ndarray) -> dict[str, Any]:
    """Latency and occupancy of one side from per-request times (queued or engine arrival, first scheduled, first
    and last token) and output lengths, on vLLM's engine-side definitions: TTFT = f - q, TPOT = (last - f) /
    (n - 1), E2E = last - q, queue wait = s - q. Occupancy is sampled every second: running (first scheduled, not
    finished; a preempted request counts as running) and waiting (arrived, not yet scheduled)."""
    q, s, f, last = (x - np.nanmin(q) for x in (q, s, f, last))
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(n > 1, (last - f) / (n - 1), np.nan)
    span = float(np.nanmax(last))
    ticks = np.arange(0.0, span, 1.0)[:, None]
    running = ((s <= ticks) & (ticks < last)).sum(1)
    waiting = ((q <= ticks) & (ticks < s)).sum(1)
    return {"latency": {"ttft": describe(f - q), "tpot": describe(tpot), "e2e": describe(last - q),
                        "queue": describe(s - q)},
            "completed": int(np.isfinite(last).sum()), "makespan_s": span, "output_tok_s": float(n.sum()) / span,
            "running_mean": float(running.mean()), "running_max": int(running.max()),
            "waiting_mean": float(waiting.mean()), "waiting_max": int(waiting.max())}


def measured(run: Run) -> dict[str, Any]:
    """vLLM's figures from its engine timestamps, plus the API server's delay spread and vLLM's own log."""
    r = run.requests
    out = figures(*(r[c].to_numpy(float) for c in ("queued_ts", "scheduled_ts", "first_token_ts", "last_token_ts")),
                  r["output_toks"].to_numpy())
    api = r["queued_ts"].to_numpy(float) - r["arrival_time"].to_numpy(float)  # plus an unknown clock offset
    return {**out, "kv_blocks": run.args.num_gpu_blocks, "preemptions": None,
            "api_p50": float(np.median(api - api.min())), "api_max": float(api.max() - api.min()),
            "logged_running_max": int(run.timeseries["running"].max())}


def predicted(result: Any) -> dict[str, Any]:
    """servesim's figures of a SimResult, engine-side (its engine_* columns when a frontend model wrote them)."""
    df, s = result.requests, result.summary
    q = df["engine_arrival_time" if "engine_arrival_time" in df else "arrival_time"].to_numpy(float)
    col = {c: df[f"engine_{c}" if f"engine_{c}" in df else c].to_numpy(float) for c in ("ttft", "e2e")}
    out = figures(q, df["first_scheduled_time"].to_numpy(float), q + col["ttft"], q + col["e2e"],
                  df["generated_tokens"].to_numpy())
    kv = s["kv_cache"]
    return {**out, "kv_blocks": int(kv["blocks_per_replica"]), "preemptions": int(kv["preemptions"]),
            "preempted_requests": int(kv["preempted_requests"]), "engine_loop": s["config"].get("engine_loop")}


@dataclass
class Variant:
    """One simulated configuration of a run."""

    label: str
    cost: str                       # roofline or kernels
    overrides: dict[str, Any]
    figures: dict[str, Any] | None = None
    wall_s: float = 0.0
    note: str = ""


def variants(run: Run, kernels: bool) -> list[Variant]:
    """The roofline; with vLLM's own block count where recorded; the kernels model where the GPU has tables."""
    out = [Variant("roofline", "roofline", {})]
    if run.args.num_gpu_blocks:
        out.append(Variant(f"roofline, vLLM's {run.args.num_gpu_blocks} KV blocks", "roofline",
                           {"kv_blocks": int(run.args.num_gpu_blocks)}))
    from sim.catalog.hardware import get_gpu
    if kernels and get_gpu(run.gpu).kernel_db:
        out.append(Variant("kernels", "kernels", {}))
    return out


def simulate_variant(run: Run, trace: list, v: Variant) -> None:
    """Run one variant, filling its figures, wall time and cost-model note."""
    from sim.serving import simulate
    cfg, cost, t0 = sim_config(run, **v.overrides), None, time.perf_counter()
    if v.cost == "kernels":
        from sim.cost.kernels.model import for_simulation
        try:
            cost = for_simulation(cfg, None)
        except (ImportError, ValueError) as e:
            v.note = f"no kernels model: {e}"
            return
        d = cost.describe()
        v.note = f"kernels: AIConfigurator {d.get('system')} {d.get('framework')} {d.get('version')} tables"
    res = simulate(trace, cfg, cost_model=cost, source=run.folder)
    v.wall_s, v.figures = time.perf_counter() - t0, predicted(res)


Result = tuple[Run, dict[str, Any], list[Variant], str | None]  # run, measured figures, variants, why not simulated


def _fmt(x: float | None, metric: str = "") -> str:
    ok = x is not None and np.isfinite(x)
    return "n/a" if not ok else f"{x * 1e3:.1f} ms" if metric == "tpot" else f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


def _err(pred: float, meas: float) -> str:
    ok = np.isfinite(pred) and np.isfinite(meas) and meas != 0
    return f"{(pred - meas) / meas * 100:+.0f}%" if ok else "n/a"


def _num(x: Any, digits: int = 0) -> str:
    return "not recorded" if x is None else f"{x:,.{digits}f}" if isinstance(x, float) else f"{x:,}"


FIGURES = (("completed requests", "completed", 0), ("makespan (s, engine clock)", "makespan_s", 1),
           ("output tokens/s over the makespan", "output_tok_s", 0), ("KV blocks per replica", "kv_blocks", 0),
           ("preemptions (preempted requests)", "preemptions", 0), ("running, mean (1 s ticks)", "running_mean", 1),
           ("running, max", "running_max", 0), ("waiting, mean", "waiting_mean", 1), ("waiting, max", "waiting_max", 0))


def run_section(run: Run, meas: dict[str, Any], vs: list[Variant], skipped: str | None) -> list[str]:
    a = run.args
    par = f"TP{a.tp}" + (f" x DP{a.dp}" if a.dp > 1 else "") + (" with expert parallelism" if a.expert_parallel else "")
    asy = {True: "on", False: "off", None: "vLLM's default (on)"}[a.async_scheduling]
    text = (f"{a.model} on {a.tp * a.dp}x {run.gpu} ({par}); max_num_seqs {a.max_num_seqs}, max_num_batched_tokens "
            f"{a.max_num_batched_tokens}, max_model_len {a.max_model_len or 'the model default'}, block "
            f"{a.block_size}, gpu_memory_utilization {a.gpu_memory_utilization:g}, prefix caching "
            f"{'on' if a.enable_prefix_caching else 'off'}, async scheduling {asy}. Measured time from the API "
            f"server's receipt to the engine queue, around its minimum: median {meas['api_p50'] * 1e3:.0f} ms, max "
            f"{meas['api_max'] * 1e3:.0f} ms.")
    lines = [f"### {run.folder}", "", text, ""]
    lines += [f"**Not simulated**: {skipped}. Measured figures only.", ""] if skipped else []
    done = [v for v in vs if v.figures]
    heads = [MEASURED] + [f"simulated (servesim, {v.label}) | error" for v in done]
    lines += ["| metric | " + " | ".join(heads) + " |", "|---|---:|" + "---:|---:|" * len(done)]
    for m in METRICS:
        for st in STATS:
            mv = meas["latency"][m][st]
            lines.append(f"| {LABELS[m]} {st} | " + " | ".join([_fmt(mv, m)] + [
                f"{_fmt(v.figures['latency'][m][st], m)} | {_err(v.figures['latency'][m][st], mv)}" for v in done])
                + " |")
    lines += ["", "| run figure | " + " | ".join([MEASURED] + [f"simulated (servesim, {v.label})" for v in done])
              + " |", "|---|---:|" + "---:|" * len(done)]
    for label, key, digits in FIGURES:
        cells = [_num(f.get(key), digits) + (f" ({f['preempted_requests']})" if "preempted_requests" in f and
                                             key == "preemptions" else "") for f in [meas] + [v.figures for v in done]]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["| simulation wall time | - | " + " | ".join(f"{v.wall_s:.1f} s" for v in done) + " |"] if done else []
    return [*lines, "", f"vLLM's own log (timeseries.csv) peaks at {meas['logged_running_max']} running requests."
            + "".join(f" {v.note}." for v in vs if v.note), ""]


def overview(results: list[Result]) -> list[str]:
    lines = ["| run | simulated with | TTFT mean | TPOT mean | E2E mean | E2E p99 | makespan |",
             "|---|---|---:|---:|---:|---:|---:|"]
    keys = (("ttft", "mean"), ("tpot", "mean"), ("e2e", "mean"), ("e2e", "p99"))
    for run, meas, vs, skipped in results:
        ml = meas["latency"]
        if skipped:
            lines.append(f"| {run.folder} | not simulated (DP x EP) | " + " | ".join(
                f"{_fmt(ml[m][st], m)} / -" for m, st in keys) + f" | {meas['makespan_s']:.0f} s / - |")
        for v in (v for v in vs if v.figures):
            pl = v.figures["latency"]
            lines.append(f"| {run.folder} | {v.label} | " + " | ".join(
                f"{_fmt(ml[m][st], m)} / {_fmt(pl[m][st], m)} ({_err(pl[m][st], ml[m][st])})" for m, st in keys)
                + f" | {meas['makespan_s']:.0f} s / {v.figures['makespan_s']:.0f} s "
                f"({_err(v.figures['makespan_s'], meas['makespan_s'])}) |")
    return lines


def _revision() -> str:
    git = ["git", "describe", "--always", "--dirty"]
    return subprocess.run(git, check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip() or "unknown"


HEAD = """# servesim against four real vLLM 0.19 runs (engine-side replay)

Written by `{command}` (servesim {version}, revision {revision}). Data: `{data}`, LLMServingSim's published runs
(MIT), read at run time and never copied; only summary statistics appear here, each marked **{measured}** or
**simulated (servesim, cost model)**.

## How the replay is built

- **Requests**: each run's 300 requests with their prompt and output token counts (requests.jsonl, checked equal to
  the workload file), each prompt's 16-token blocks named by chained hashes of the workload's token ids, so that
  servesim's prefix cache finds the prefixes vLLM's could share.
- **Arrivals**: the engine's own, `queued_ts` relative to the first request's, since every metric compared starts
  there; servesim runs without a frontend model (`frontend="none"`).
- **Deployment**: the run's model, GPU and parallelism; scheduler `vllm_v1` with the run's max_num_seqs,
  max_num_batched_tokens, max_model_len, block size, gpu_memory_utilization and prefix caching (meta.json; vLLM's
  defaults where it is silent); engine loop: {loops}.
- **Cost models**: the default roofline (with its fitted parameters where the GPU has them) and, where
  AIConfigurator ships the GPU's kernel database, `kernels` (its vLLM tables are from a later vLLM than 0.19).
- **Metrics**, vLLM's engine-side definitions on both sides: TTFT = first token - queued, TPOT = (last token - first
  token) / (output tokens - 1), E2E = last token - queued, queue wait = first scheduled - queued.
  Error = (simulated - measured) / measured.

## Overview (measured / simulated, error)
"""

CAN_AND_CANNOT = """## What these runs can and cannot tell

- **They are overloaded.** 300 requests arrive in 29 s (about 10 req/s), faster than these deployments serve them,
  so requests queue in the engine: queue wait (first scheduled - queued) is {share} of the measured mean TTFT.
  TTFT and E2E therefore check the deployment's throughput, how many requests run at once (max_num_seqs or the KV
  capacity, whichever binds), preemption and the order of service, far more than the time of one step; an error
  in the step time compounds through the backlog, so mean TTFT errors are larger than the TPOT errors that cause
  them.
- **Per-step latency shows in TPOT**: the decode step at the batch each deployment sustains ({running} running
  requests on average), chunked prefills mixed in.
- **Capacity.**{kv_bound} The RTX PRO 6000 runs are bound by max_num_seqs instead; their KV use and vLLM's block
  count are not recorded, so servesim's block count there is unchecked.
- **Engine-side only.** vLLM's timestamps are the engine's: TTFT and E2E start at `queued_ts` (the request entered
  the engine's waiting queue) and end when the engine emitted the token. The API server (HTTP, tokenization,
  detokenization, streaming) is outside both sides of the comparison, so the replay says nothing about servesim's
  frontend model. It replays the engine's arrivals (`queued_ts`); the client's send times (the workload's
  `arrival_time_ns`) reach the engine after the API server, which under this load adds a delay whose spread
  between requests reaches {api} (by run). `arrival_time` (wall clock) and the engine's timestamps (monotonic)
  differ by an unknown constant, so that delay is known only around its minimum; nothing compared here depends on
  it.
- **Preemptions were not recorded** by vLLM, so the predicted counts are unchecked (the KV-bound run's
  running-request ceiling is the indirect evidence). The occupancy rows count requests between first scheduled and
  last token on both sides (preempted ones count as running). servesim's count passes max_num_seqs by a few: under
  async scheduling it decides step N+1 as step N starts and already gives the seats of requests finishing in step
  N to new ones, while vLLM's count from its own timestamps never passes it (a request finishing in step N keeps
  its seat in vLLM's running list until N's output is processed, so the seat is reused a step later); a small
  effect on throughput.
- **One run each, 300 requests**: P99 rests on three requests, and the real system's run-to-run noise is unknown.
  meta.json does not say which RTX PRO 6000 edition ran (taken as the Server Edition: 1,597 GB/s; the Workstation
  Edition has 1,792 GB/s and a higher clock).
- **Not expressible**: the Qwen3-30B-A3B run is two data-parallel engines with expert parallelism across them (each
  GPU holds half the experts, its own scheduler and KV cache; the two step together). servesim's expert-parallel
  group is one replica's TP group: two independent replicas holding every expert would have less KV room and read
  twice the expert weights a step, one TP2 replica would have one scheduler instead of two. It is not simulated;
  its measured figures are listed for reference.
"""


def can_and_cannot(results: list[Result]) -> str:
    """What the runs can and cannot tell, with the figures that say so taken from the data."""
    ms = [m for _, m, _, _ in results]
    share = [m["latency"]["queue"]["mean"] / m["latency"]["ttft"]["mean"] for m in ms]
    run_mean, api = [m["running_mean"] for m in ms], [m["api_max"] * 1e3 for m in ms]
    kv = "".join(f" The {r.folder} run is KV-bound (at most {m['running_max']} requests ran at once of "
                 f"{r.args.max_num_seqs} allowed; vLLM allocated {r.args.num_gpu_blocks:,} blocks), so it checks "
                 "the KV capacity and preemption first: the variant at vLLM's own block count separates a capacity "
                 "error from a timing error." for r, m, _, _ in results if r.args.num_gpu_blocks)
    return CAN_AND_CANNOT.format(share=f"{min(share):.1%} to {max(share):.1%}", kv_bound=kv,
                                 running=f"{min(run_mean):.0f} to {max(run_mean):.0f}",
                                 api=f"{min(api):.0f} to {max(api):.0f} ms")


def report(results: list[Result], command: str, data: Path) -> str:
    from sim.version import __version__
    loops = sorted({str(v.figures.get("engine_loop")) for _, _, vs, _ in results for v in vs if v.figures})
    shown = f"../{data.relative_to(ROOT.parent)}" if data.is_relative_to(ROOT.parent) else str(data)
    lines = [HEAD.format(command=command, version=__version__, revision=_revision(), data=shown, measured=MEASURED,
                         loops=", ".join(loops) or "n/a")] + overview(results) + ["", "## Per run", ""]
    for res in results:
        lines += run_section(*res)
    return "\n".join(lines) + "\n" + can_and_cannot(results)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="the runs' folder (default ../shared/measured/vllm-e2e)")
    ap.add_argument("--out", type=Path, help="write the Markdown report here (default: print it)")
    ap.add_argument("--runs", nargs="*", default=None, help="only runs whose folder contains one of these strings")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel-database cost model")
    args = ap.parse_args(argv)
    if not (args.data / RUN_FOLDERS[0] / "requests.jsonl").is_file():
        print(f"{args.data}: LLMServingSim's measured vLLM runs are not there. This benchmark reads them at run time "
              "from ../shared/measured/vllm-e2e/ (beside the clone; never copied into the repository).",
              file=sys.stderr)
        return 1
    command = shlex.join(["python", "benchmarks/vllm_e2e.py", *(sys.argv[1:] if argv is None else argv)])
    results = []
    for folder in RUN_FOLDERS:
        if args.runs and not any(s in folder for s in args.runs):
            continue
        run = load_run(folder, args.data)
        meas = measured(run)
        try:
            sim_config(run)
            skipped, vs = None, variants(run, not args.no_kernels)
        except NotExpressible as e:
            skipped, vs = str(e), []
        trace = build_trace(run) if vs else []
        for v in vs:
            simulate_variant(run, trace, v)
            print(f"{folder} [{v.label}]: simulated in {v.wall_s:.1f} s {v.note}", file=sys.stderr)
        results.append((run, meas, vs, skipped))
    text = report(results, command, args.data)
    if args.out:
        args.out.write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
