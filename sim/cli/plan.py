"""The `servesim plan` (configuration search) and `servesim capacity` (one configuration) commands."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from sim.capacity.search import PASS_RULES, Slo, Workload
from sim.cli.args import (
    add_command,
    add_cost_model_arguments,
    add_deployment_arguments,
    add_dtype_arguments,
    add_kv_link_arguments,
    add_max_model_len_argument,
    check_cost_model_args,
    deployment_kwargs,
    int_list,
    kv_link_section,
    name_list,
    nonneg_int,
    positive_int,
    seconds_or,
)
from sim.cli.workload_args import add_reuse_arguments

DEFAULT_NUM_REQUESTS = 500
DEFAULT_DURATION = 60.0
_EXAMPLE = ("example: servesim plan --model llama-2-7b --gpus a100-80gb,h100-sxm --max-gpus 8 "
            "--schedulers vllm,sarathi --budgets 256,512,1024,2048 --slo-tbt-p99 0.1 --out plan-7b")


def _replicas(text: str) -> list[int] | str:
    return "max" if text.strip().lower() == "max" else int_list(text)


_seconds_or_off = seconds_or({"off": None, "none": None}, "seconds > 0 or 'off'")


def _slo_item(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS such as e2e_p90=30, got {text!r}")
    v = _seconds_or_off(value)
    if v is None:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS with seconds > 0, got {text!r}")
    return name.strip(), v


def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1), got {text!r}")
    return v


def _add_workload_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "workload", "Each simulation point draws N requests (lengths and Poisson arrivals at the rate under test) "
                    "from its seed; changing the rate only rescales the same arrival pattern.")
    g.add_argument("--trace", default=None, metavar="FILE",
                   help="take (prompt, output) lengths from this trace (servesim JSONL or a CSV length table), "
                        "drawn jointly with replacement; its arrival times are not used")
    g.add_argument("--lengths-from", default=None, metavar="FILE",
                   help="same as --trace, e.g. Sarathi-Serve's ShareGPT table (sharegpt_8k_filtered_stats_"
                        "llama2_tokenizer.csv in ../shared/traces/sarathi/)")
    g.add_argument("--prompt-len", default=None, metavar="SPEC",
                   help="prompt length distribution (see `servesim trace generate --help`; default: sharegpt)")
    g.add_argument("--output-len", default=None, metavar="SPEC",
                   help="output length distribution (default: sharegpt)")
    g.add_argument("--max-total-tokens", type=int, default=None, metavar="N",
                   help="scale requests longer than N tokens down to N, keeping prompt:output (default: the model's "
                        "context length)")
    g.add_argument("-n", "--num-requests", type=int, default=DEFAULT_NUM_REQUESTS, metavar="N",
                   help="requests per simulation point at least (and in the saturation probe) (default: %(default)s)")
    g.add_argument("--duration", type=float, default=DEFAULT_DURATION, metavar="S",
                   help="seconds of arrivals per point at least: a point at rate Q has max(N, Q x S) requests. Short "
                        "runs are optimistic where the scheduling delay binds (a growing queue still shows a small "
                        "median delay): for Llama-2-7B/Sarathi on one A100 the defaults give ~15%% more than "
                        "-n 3000 --duration 600; cost grows in proportion (default: %(default)s)")
    g.add_argument("--replay", default=None, metavar="FILE",
                   help="replay this trace's requests in arrival order (their lengths and prefix-reuse fields, e.g. "
                        "Mooncake's hash_ids), at arrivals generated for each rate: what prefix caching needs (a "
                        "length draw with replacement repeats requests, which then hit their own copies)")
    add_reuse_arguments(g)
    g.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson",
                   help="arrival process at the rate under test (default: %(default)s)")
    g.add_argument("--cv", type=float, default=1.0, metavar="C",
                   help="coefficient of variation of gaps for --arrival gamma (default: %(default)s)")


def _add_slo_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLO", "A rate passes when every bound holds (Sarathi-Serve: P99 TBT and median "
                                    "scheduling delay). 'off' drops a bound.")
    g.add_argument("--slo-tbt-p99", type=_seconds_or_off, default=0.1, metavar="S",
                   help="P99 time between tokens, seconds (default: %(default)s)")
    g.add_argument("--slo-sched-delay-p50", type=_seconds_or_off, default=2.0, metavar="S",
                   help="median scheduling delay (arrival to first scheduled), seconds (default: %(default)s)")
    g.add_argument("--slo-ttft-p99", type=_seconds_or_off, default=None, metavar="S",
                   help="P99 time to first token, seconds (default: off)")
    g.add_argument("--slo-tpot-p90", type=_seconds_or_off, default=None, metavar="S",
                   help="P90 time per output token, seconds (default: off)")
    g.add_argument("--slo", type=_slo_item, action="append", default=[], metavar="NAME=S",
                   help="any other bound <latency>_<stat>=seconds, latency in ttft,tbt,tpot,e2e,scheduling_delay "
                        "and stat in p50,p90,p99,mean,max (repeatable), e.g. --slo e2e_p90=60")


def _add_search_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("search")
    g.add_argument("--seeds", type=int, default=3, metavar="K",
                   help="seeds per configuration, each with its own lengths and arrivals (default: %(default)s)")
    g.add_argument("--seed", type=nonneg_int, default=0, metavar="S",
                   help="first seed; seeds are S..S+K-1 (default: %(default)s)")
    g.add_argument("--rel-tol", type=_positive_float, default=0.05, metavar="F",
                   help="stop bisecting when the bracket is within this fraction of the rate (default: %(default)s)")
    g.add_argument("--pass-rule", choices=PASS_RULES, default="median",
                   help="median: capacity is the median of the seeds' capacities (a rate counts when at least "
                        "half of the seeds sustain it); all: the minimum (every seed must) (default: %(default)s)")
    g.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="parallel worker processes (default: the number of CPUs; 1: in this process)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the points as Ray tasks on the cluster at ADDRESS, or 'local' for a local Ray "
                        "instance (needs `pip install servesim[ray]`)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def workload_from_args(args: argparse.Namespace) -> Workload:
    """The Workload of the workload flags."""
    if args.trace and args.lengths_from:
        raise ValueError("give --trace or --lengths-from, not both")
    src = args.trace or args.lengths_from
    if src and (args.prompt_len or args.output_len):
        raise ValueError("--trace/--lengths-from give the lengths; do not also give --prompt-len/--output-len")
    if src and not os.path.exists(src):
        raise ValueError(f"{src}: file not found")
    if args.replay and not os.path.exists(args.replay):
        raise ValueError(f"{args.replay}: file not found")
    return Workload(num_requests=args.num_requests, duration=args.duration, prompt_len=args.prompt_len,
                    output_len=args.output_len,
                    lengths_from=os.path.abspath(src) if src else None, max_total_tokens=args.max_total_tokens,
                    arrival=args.arrival, cv=args.cv, turns=args.sessions[0] if args.sessions else 1,
                    think_time_s=args.sessions[1] if args.sessions else 0.0, system_prompt=args.system_prompt,
                    replay=os.path.abspath(args.replay) if args.replay else None)


def slo_from_args(args: argparse.Namespace) -> Slo:
    """The Slo of the SLO flags."""
    extra = {"ttft_p99": args.slo_ttft_p99, "tpot_p90": args.slo_tpot_p90}
    for name, value in args.slo:
        if name in ("tbt_p99", "scheduling_delay_p50") or (name in extra and extra[name] is not None):
            raise ValueError(f"--slo {name}=...: this bound has its own flag (--slo-...); give it once")
        extra[name] = value
    slo = Slo.make(tbt_p99=args.slo_tbt_p99, scheduling_delay_p50=args.slo_sched_delay_p50, **extra)
    if not slo.bounds:
        raise ValueError("every SLO bound is off: nothing limits the rate")
    return slo


def _seeds(args: argparse.Namespace) -> list[int]:
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    return list(range(args.seed, args.seed + args.seeds))


def _progress(args: argparse.Namespace) -> bool:
    return not args.quiet and sys.stderr.isatty()


def _cost_line(search) -> str:
    """Which cost model prices a search's points, in words."""
    if search.profile is None:
        return f"roofline ({search.config.gpu})"
    return search.profile.describe(search.config)


def _price_ref(args: argparse.Namespace, gpu: str | None = None):
    """The ProfileRef or KernelsRef of --profile / --cost-model kernels, or None for the roofline."""
    from sim.capacity.search import KernelsRef, ProfileRef
    check_cost_model_args(args)
    if args.profile:
        return ProfileRef(args.profile, gpu)
    return KernelsRef(args.kernel_db) if args.cost_model == "kernels" else None


# ---- servesim plan ---------------------------------------------------------------------------------

def cmd_plan(args: argparse.Namespace) -> int:
    """For each GPU type, tensor x pipeline parallelism x replicas within --max-gpus (configurations whose weights
    do not fit are listed as infeasible with the reason), each scheduler and each token budget, find the
    capacity: the highest Poisson request rate whose latency stays within the SLO (bracketing and bisection,
    several seeds). Prints a table sorted by capacity per GPU and by cost per million output tokens, and writes
    DIR/results.jsonl (every simulation, appended as it finishes; rerunning the same command resumes from it),
    plan.csv, plan.txt, pareto.csv (the configurations on the front, with the figures plan.csv gives them),
    points.csv (every seed run that met the SLO) and pareto.png (latency against throughput).
    """
    from sim.capacity.planner import enumerate_candidates, format_table, load_prices, make_executor, plan, sort_table
    from sim.outputs.run_folder import prepare_out_dir
    from sim.simulator import SimConfig

    prepare_out_dir(args.out)  # before any work
    workload = workload_from_args(args)
    slo = slo_from_args(args)
    prices = load_prices(args.prices) if args.prices else None
    base = SimConfig(max_model_len=args.max_model_len, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                     router_skew=args.router_skew, enable_prefix_caching=args.enable_prefix_caching)
    candidates = enumerate_candidates(
        args.model, args.gpus, max_gpus=args.max_gpus, tps=args.tp, pps=args.pp, replicas=args.replicas,
        schedulers=args.schedulers, budgets=args.budgets, max_batch_size=args.max_batch,
        block_size=args.block_size, gpu_memory_utilization=args.gpu_mem_util,
        base=base)
    if args.disaggregated:  # prefill and decode pools of every P:D ratio and TP within --max-gpus, beside
        if args.profile or args.cost_model == "kernels":
            raise ValueError("--disaggregated: its pools are priced on the roofline; drop --profile / --cost-model "
                             "kernels, or plan the two modes apart")
        from sim.capacity.planner import enumerate_disaggregated
        from sim.deployment import make_link
        candidates += enumerate_disaggregated(
            args.model, args.gpus, max_gpus=args.max_gpus, tps=args.tp, prefill_scheduler=args.prefill_scheduler,
            decode_scheduler=args.decode_scheduler, prefill_budget=args.prefill_budget,
            max_batch_size=args.max_batch, base=dataclasses.replace(base, block_size=args.block_size,
                                                                    gpu_memory_utilization=args.gpu_mem_util),
            link=make_link(kv_link_section(args)), max_replicas=args.max_pool_replicas)
    if not candidates:
        raise ValueError(f"no configuration fits in --max-gpus {args.max_gpus} (check --tp/--pp/--replicas)")
    n_ok = sum(c.config is not None for c in candidates)
    print(f"servesim plan: {args.model}, {n_ok} configurations to size ({len(candidates) - n_ok} infeasible), "
          f"{args.seeds} seed(s) x {workload.num_requests} requests per point, SLO {slo.describe()}",
          file=sys.stderr)
    profile = _price_ref(args)
    if profile is not None:
        fallback = [profile.fallback(c.config) for c in candidates if c.config is not None]
        n_priced = sum(f is None for f in fallback)
        what = f"profile {args.profile}" if args.profile else "the kernel databases"
        print(f"{what}: price {n_priced} of {len(fallback)} configurations; the others use the "
              f"roofline" + (f" ({next(f for f in fallback if f)})" if n_priced < len(fallback) else ""),
              file=sys.stderr)
    executor = make_executor(args.jobs, args.ray)
    t0 = time.perf_counter()
    try:
        res = plan(candidates, workload, slo, seeds=_seeds(args), rel_tol=args.rel_tol, pass_rule=args.pass_rule,
                   prices=prices, out_dir=args.out, executor=executor, progress=_progress(args), profile=profile)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - t0
    print("by capacity per GPU (requests/s per GPU at the SLO; cost per million output tokens at that rate):")
    print(format_table(res.table))
    cheapest = sort_table(res.table, by="cost")
    cheapest = cheapest[cheapest["status"] == "ok"]
    if len(cheapest):
        print(f"\ncheapest {min(5, len(cheapest))} by cost per million output tokens:")
        print(format_table(cheapest, limit=5))
    if args.disaggregated:
        for mode in ("aggregated", "disaggregated"):
            best = cheapest[cheapest["mode"] == mode].head(1)
            print(f"cheapest {mode} configuration meeting the SLO: " +
                  (f"{best.iloc[0]['config']} at {best.iloc[0]['usd_per_m_output_tokens']:.2f} $/M output tokens, "
                   f"{best.iloc[0]['qps_per_gpu']:.3g} req/s per GPU" if len(best) else "none"))
    with open(os.path.join(args.out, "plan.txt"), "w", encoding="utf-8") as fh:
        fh.write(format_table(res.table) + "\n")
    st = res.stats
    print(f"\n{st.simulated} simulations run now ({st.sim_wall_s:.0f} s of simulation), {st.reused} taken from "
          f"{res.results_path}; {wall:.1f} s wall")
    print(f"wrote {args.out}/plan.csv, plan.txt, pareto.csv, points.csv" + (", pareto.png" if res.figure_path else ""))
    return 0


def add_plan_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `plan` and `capacity` on the main parser's subparsers."""
    p = add_command(subparsers, "plan", cmd_plan,
                    "capacity planning: size every GPU x parallelism x scheduler x budget, cheapest first",
                    epilog=_EXAMPLE, show_defaults=False)
    p.add_argument("--model", default="llama-2-7b",
                   help="model from the catalogue (`servesim models`) or a Hugging Face config.json "
                        "(default: %(default)s)")
    add_max_model_len_argument(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (results.jsonl makes reruns resume)")
    g = p.add_argument_group("configurations")
    g.add_argument("--gpus", type=name_list, default=["a100-80gb"], metavar="G1,G2",
                   help="GPU types from `servesim gpus` (default: a100-80gb)")
    g.add_argument("--max-gpus", type=int, default=8, metavar="N",
                   help="GPUs per deployment at most (default: %(default)s)")
    g.add_argument("--tp", type=int_list, default=None, metavar="T1,T2",
                   help="tensor-parallel degrees (default: powers of two up to --max-gpus)")
    g.add_argument("--pp", type=int_list, default=[1], metavar="P1,P2",
                   help="pipeline-parallel degrees (default: 1)")
    g.add_argument("--replicas", type=_replicas, default=[1], metavar="R1,R2|max",
                   help="replica counts, or 'max' for as many as fit; capacity per GPU barely changes with "
                        "replicas under round-robin routing, so the default is 1")
    g.add_argument("--schedulers", type=name_list, default=["vllm", "sarathi"], metavar="S1,S2",
                   help="faster_transformer, orca, vllm, sarathi, vllm_v1 (default: vllm,sarathi)")
    g.add_argument("--budgets", type=int_list, default=[512], metavar="B1,B2",
                   help="token budgets per iteration, for schedulers that chunk prompts (sarathi, vllm_v1); the "
                        "others run once with their default (a budget below the longest prompt would refuse "
                        "requests) (default: 512)")
    g.add_argument("--max-batch", type=int, default=128, metavar="B",
                   help="max requests running at once (default: %(default)s)")
    g.add_argument("--block-size", type=positive_int, default=16, help="tokens per KV block (default: %(default)s)")
    add_dtype_arguments(g)
    d = p.add_argument_group("disaggregated serving", "With --disaggregated the plan also sizes prefill and decode "
                             "pools (sim/disagg.py) of every P:D ratio and TP within --max-gpus, on one Pareto front "
                             "with the aggregated configurations.")
    d.add_argument("--disaggregated", action="store_true", help="also search disaggregated deployments")
    d.add_argument("--prefill-scheduler", default="vllm", metavar="S",
                   help="the prefill pool's policy (default: vllm, whole prefills as DistServe)")
    d.add_argument("--prefill-budget", type=positive_int, default=None, metavar="T",
                   help="the prefill pool's token budget (default: the policy's)")
    d.add_argument("--decode-scheduler", default="vllm", metavar="S", help="the decode pool's policy (default: vllm)")
    add_kv_link_arguments(d)
    d.add_argument("--max-pool-replicas", type=positive_int, default=4, metavar="N",
                   help="replicas per pool at most (default: 4)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching in every configuration (vLLM's flags; default: on for vllm_v1 "
                        "only, as vLLM); compare a trace with reuse both ways")
    g.add_argument("--gpu-mem-util", type=float, default=0.9, metavar="F",
                   help="fraction of GPU memory for weights, activations and KV cache (default: %(default)s)")
    g.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline, for "
                        "the configurations it holds: the profile's GPU, a TP it measured and the model it was "
                        "measured for. Every other configuration falls back to the roofline, marked in the table's "
                        "cost_model column and note (no cross-GPU estimates: compare like with like)")
    add_cost_model_arguments(p)
    g.add_argument("--prices", default=None, metavar="FILE.json",
                   help='GPU-hour prices in USD, e.g. {"a100-80gb": 2.0, "h100-sxm": 3.5}; default: the catalogue\'s')
    _add_workload_arguments(p)
    _add_slo_arguments(p)
    _add_search_arguments(p)
    _add_capacity_parser(subparsers)


# ---- servesim capacity ---------------------------------------------------------------------------------

def cmd_capacity(args: argparse.Namespace) -> int:
    """Find the capacity of one deployment: the highest Poisson request rate (QPS) whose P99 TBT and median
    scheduling delay (and any other bound given) stay within the SLO, by a saturated probe, bracketing and
    bisection per seed. Reports the capacity (median over seeds), its spread over seeds and the number of
    simulations.
    """
    from sim.capacity.planner import make_executor
    from sim.capacity.search import CapacitySearch, ResultsFile, run_searches
    from sim.simulator import SimConfig

    config = SimConfig(**deployment_kwargs(args))
    config.check()  # an unknown GPU or weights that do not fit: one line, before any simulation
    workload = workload_from_args(args)
    slo = slo_from_args(args)
    profile = _price_ref(args, args.gpu)
    search = CapacitySearch(config, workload, slo, seeds=_seeds(args), rel_tol=args.rel_tol,
                            pass_rule=args.pass_rule, profile=profile)
    if profile is not None and args.profile:
        note = profile.cost_model(search.config).transfer_note()  # type: ignore[attr-defined]
        if note:
            print(note, file=sys.stderr)
    if args.results:
        _check_results_path(args.results)
    store = ResultsFile(args.results)
    executor = make_executor(min(args.jobs or os.cpu_count() or 1, args.seeds), args.ray)
    try:
        stats = run_searches([search], executor=executor, results=store, progress=_progress(args))
    finally:
        store.close()
        executor.shutdown(wait=True, cancel_futures=True)
    res = search.result()
    if args.json:
        from dataclasses import asdict
        d = asdict(res)
        d["slo"] = slo.as_dict()
        d["cost_model"] = _cost_line(search)
        print(json.dumps(d, indent=2, default=str))
        return 0 if res.error is None else 1
    print(f"SLO: {slo.describe()}; {workload.num_requests} requests per point, seeds {search.seeds}; "
          f"cost model: {_cost_line(search)}")
    print(res.describe())
    if res.error is None:
        print("per seed: " + ", ".join(f"{s}: {c:.4g}" for s, c in zip(search.seeds, res.per_seed)) + " req/s")
        m = res.metrics
        if m:
            print(f"at capacity (median over seeds): P99 TBT {m['tbt_p99'] * 1e3:.1f} ms, median scheduling delay "
                  f"{m['scheduling_delay_p50']:.2f} s, P99 TTFT {m['ttft_p99']:.2f} s, "
                  f"{m['output_tokens_per_s']:.0f} output tokens/s")
        if args.verbose:
            for p in sorted(res.points, key=lambda p: (p["seed"], p["qps"])):
                why = "pass" if p["passed"] else "FAIL"
                if p["stopped"]:
                    why += f" (stopped early: {p['stopped']['metric']} > {p['stopped']['bound']:g})"
                elif not p["passed"]:
                    why += " (" + "; ".join(slo.violations(p["metrics"])) + ")"
                print(f"  seed {p['seed']}  {p['qps']:>9.4g} req/s  {why}")
    print(f"{stats.simulated} simulations run, {stats.reused} reused, {stats.wall_s:.1f} s wall")
    return 0 if res.error is None else 1


def _add_capacity_parser(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "capacity", cmd_capacity,
                    "the highest request rate one deployment sustains within latency SLOs", show_defaults=False,
                    epilog="example: servesim capacity --model mistral-7b --scheduler sarathi --token-budget 512 "
                           "--slo-tbt-p99 0.1 -v")
    add_deployment_arguments(p)
    _add_workload_arguments(p)
    _add_slo_arguments(p)
    _add_search_arguments(p)
    p.add_argument("--results", default=None, metavar="FILE.jsonl",
                   help="record every simulation here and resume from it when rerun")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline, as "
                        "`servesim simulate --profile` does; with --gpu other than the profile's device, times are a "
                        "roofline-scaled estimate. Each worker process builds the cost model once")
    add_cost_model_arguments(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="list every simulated rate and its verdict")


def _check_results_path(path: str) -> None:
    """Refuse a --results file that cannot be appended to, before any simulation."""
    from pathlib import Path
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--results {p}: is a folder; give a .jsonl file")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise ValueError(f"--results {p}: cannot write there ({e.strerror or e})") from None
