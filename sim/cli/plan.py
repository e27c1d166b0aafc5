"""The `servesim plan` command (configuration search); it also registers `servesim capacity` (sim.cli.capacity).

Every flag, the trace, the price file and the output folder are checked before the first simulation; a plan
in which a configuration ended in an error exits 1 (its row says why), as does one with nothing to size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from sim.cli.args import (
    add_command,
    add_cost_model_arguments,
    add_dtype_arguments,
    add_kv_link_arguments,
    add_max_model_len_argument,
    add_speculative_arguments,
    kv_link_section,
    name_list,
)
from sim.cli.errors import FAILED, error
from sim.cli.plan_args import (  # noqa: F401 - DEFAULT_*: benchmarks/plan_speed.py imports them from here
    DEFAULT_DURATION,
    DEFAULT_NUM_REQUESTS,
    add_search_arguments,
    add_slo_arguments,
    add_workload_arguments,
    clip_line,
    price_ref,
    seeds_of,
    show_progress,
    slo_from_args,
    workload_from_args,
)
from sim.cli.plan_rate import size_and_check
from sim.cli.values import (
    MAX_PARALLEL,
    MAX_REPLICAS,
    MAX_TOKENS,
    batch_size,
    block_size,
    fraction,
    gpu_count,
    int_list_in,
    int_range,
    rate,
    token_count,
)
from sim.cli.workload_args import goodput_of

_EXAMPLE = ("example: servesim plan --model llama-2-7b --gpus a100-80gb,h100-sxm --max-gpus 8 "
            "--schedulers vllm,sarathi --budgets 256,512,1024,2048 --slo-tbt-p99 0.1 --out plan-7b")
#: replicas per pool of a disaggregated plan at most (the pools are crossed: P:D pairs grow as its square)
MAX_POOL_REPLICAS = 64
parallel_list = int_list_in(1, MAX_PARALLEL)
replica_list = int_list_in(1, MAX_REPLICAS)


def _replicas(text: str) -> list[int] | str:
    """R1,R2 or 'max' of --replicas."""
    return "max" if text.strip().lower() == "max" else replica_list(text)


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
    from sim.outputs.run_folder import naming, prepare_out_dir
    from sim.serving.simulator import SimConfig

    prepare_out_dir(args.out)  # everything is checked before the first simulation
    seeds, slo, profile = seeds_of(args), slo_from_args(args), price_ref(args)
    if args.disaggregated and profile is not None:
        raise ValueError("--disaggregated: its pools are priced on the roofline; drop --profile / --cost-model "
                         "kernels, or plan the two modes apart")
    prices = load_prices(args.prices) if args.prices else None
    base = SimConfig(max_model_len=args.max_model_len, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                     router_skew=args.router_skew, enable_prefix_caching=args.enable_prefix_caching,
                     speculative_config=args.speculative_config, spec_acceptance=args.spec_acceptance)
    check_plan_speculation(args, base)
    model = dataclasses.replace(base, model=args.model).model_spec()
    workload = workload_from_args(args, model)
    clipped = clip_line(args, workload, model)
    candidates = enumerate_candidates(
        args.model, args.gpus, max_gpus=args.max_gpus, tps=args.tp, pps=args.pp, replicas=args.replicas,
        schedulers=args.schedulers, budgets=args.budgets, max_batch_size=args.max_batch,
        block_size=args.block_size, gpu_memory_utilization=args.gpu_mem_util,
        base=base)
    if args.disaggregated:  # prefill and decode pools of every P:D ratio and TP within --max-gpus, beside
        from sim.capacity.planner import enumerate_disaggregated
        from sim.serving.deployment import make_link
        candidates += enumerate_disaggregated(
            args.model, args.gpus, max_gpus=args.max_gpus, tps=args.tp, prefill_scheduler=args.prefill_scheduler,
            decode_scheduler=args.decode_scheduler, prefill_budget=args.prefill_budget,
            max_batch_size=args.max_batch, base=dataclasses.replace(base, block_size=args.block_size,
                                                                    gpu_memory_utilization=args.gpu_mem_util),
            link=make_link(kv_link_section(args)), max_replicas=args.max_pool_replicas)
    if not candidates:
        raise ValueError(f"no configuration fits in --max-gpus {args.max_gpus} (check --tp/--pp/--replicas)")
    n_ok = sum(c.config is not None for c in candidates)
    if n_ok:  # (with none, the table of reasons is written and the exit status says so: no progress line)
        print(f"servesim plan: {args.model}, {n_ok} configurations to size ({len(candidates) - n_ok} infeasible), "
              f"{args.seeds} seed(s) x {workload.num_requests} requests per point, SLO {slo.describe()}",
              file=sys.stderr)
    if profile is not None and n_ok:
        fallback = [profile.fallback(c.config) for c in candidates if c.config is not None]
        n_priced = sum(f is None for f in fallback)
        what = f"profile {args.profile}" if args.profile else "the kernel databases"
        print(f"{what}: price {n_priced} of {len(fallback)} configurations; the others use the "
              f"roofline" + (f" ({next(f for f in fallback if f)})" if n_priced < len(fallback) else ""),
              file=sys.stderr)
    executor = make_executor(args.jobs, args.ray)
    t0 = time.perf_counter()
    try:
        res = plan(candidates, workload, slo, seeds=seeds, rel_tol=args.rel_tol, pass_rule=args.pass_rule,
                   prices=prices, out_dir=args.out, executor=executor, progress=show_progress(args), profile=profile,
                   goodput=goodput_of(args))
        sized = (size_and_check(args, res.table, candidates, workload, slo, seeds, profile, executor)
                 if args.qps is not None else None)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - t0
    if clipped:
        print(clipped)
    print("by capacity per GPU (simulated requests/s per GPU at the SLO; cost per million output tokens at that "
          "rate):")
    print(format_table(res.table, slo=slo))
    cheapest = sort_table(res.table, by="cost")
    cheapest = cheapest[cheapest["status"] == "ok"]
    if len(cheapest):
        print(f"\ncheapest {min(5, len(cheapest))} by cost per million output tokens:")
        print(format_table(cheapest, limit=5, slo=slo))
    if args.disaggregated:
        for mode in ("aggregated", "disaggregated"):
            best = cheapest[cheapest["mode"] == mode].head(1)
            print(f"cheapest {mode} configuration meeting the SLO: " +
                  (f"{best.iloc[0]['config']} at {best.iloc[0]['usd_per_m_output_tokens']:.2f} $/M output tokens, "
                   f"{best.iloc[0]['qps_per_gpu']:.3g} req/s per GPU" if len(best) else "none"))
    text_path = os.path.join(args.out, "plan.txt")
    with naming(text_path), open(text_path, "w", encoding="utf-8") as fh:
        fh.write(format_table(res.table, slo=slo) + "\n")
    st = res.stats
    print(f"\n{st.simulated} simulations run now ({st.sim_wall_s:.0f} s of simulation), {st.reused} taken from "
          f"{res.results_path}; {wall:.1f} s wall")
    print(f"wrote {args.out}/plan.csv, plan.txt, pareto.csv, points.csv" + (", pareto.png" if res.figure_path else "")
          + (", sizing.csv, launch.sh, deployment.yaml" if sized and sized.get("wrote") else ""))
    if sized is not None:
        print("\n" + "\n".join(sized["lines"]))
        if not sized["ok"]:
            error(sized["lines"][-1])
            return FAILED
    return _plan_status(res.table, args.out)


def _plan_status(table, out: str) -> int:
    """0, or 1 with one line on stderr when a configuration ended in an error or none could be sized at all."""
    errors = table[table["status"] == "error"]
    if len(errors):
        error(f"{len(errors)} of {len(table)} configurations ended in an error (their rows in {out}/plan.csv say "
              f"why); the first: {errors.iloc[0]['config']}: {errors.iloc[0]['note']}")
        return FAILED
    if not (table["status"] == "ok").any():
        error(f"none of the {len(table)} configurations can run (every one is infeasible; {out}/plan.csv says why)")
        return FAILED
    return 0


def check_plan_speculation(args: argparse.Namespace, base) -> None:
    """--speculative-config on plan: parsed once, refused without a scheduler that models it, or with --disaggregated."""
    if not base.speculative_config:
        if base.spec_acceptance:
            raise ValueError("--spec-acceptance sets the acceptance of speculative decoding: add --speculative-config")
        return
    from sim.schedulers import scheduler_class
    from sim.spec.run import spec_of
    spec_of(dataclasses.replace(base, scheduler="vllm_v1"))  # a bad config or acceptance: one line, exit 2
    if args.disaggregated:
        raise ValueError("--speculative-config: disaggregated pools are not modelled with speculation; plan the "
                         "two apart")
    if not any(scheduler_class(s).supports_speculation for s in args.schedulers):
        raise ValueError("--speculative-config is modelled for vLLM V1 only: add vllm_v1 to --schedulers")


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
    p.add_argument("--qps", type=rate, default=None, metavar="R",
                   help="size for a target rate: the cheapest deployment meeting the SLO at R req/s (each "
                        "configuration's capacity scaled out by whole replicas, then checked by simulating it at R), "
                        "its headroom and the next-cheapest alternatives; writes DIR/sizing.csv, DIR/launch.sh (its "
                        "`vllm serve` line, or Sarathi-Serve's) and DIR/deployment.yaml (`simulate --deployment`)")
    g = p.add_argument_group("configurations")
    g.add_argument("--gpus", type=name_list, default=["a100-80gb"], metavar="G1,G2",
                   help="GPU types from `servesim gpus` (default: a100-80gb)")
    g.add_argument("--max-gpus", type=gpu_count, default=8, metavar="N",
                   help="GPUs per deployment at most (default: %(default)s)")
    g.add_argument("--tp", type=parallel_list, default=None, metavar="T1,T2",
                   help="tensor-parallel degrees (default: powers of two up to --max-gpus)")
    g.add_argument("--pp", type=parallel_list, default=[1], metavar="P1,P2",
                   help="pipeline-parallel degrees (default: 1)")
    g.add_argument("--replicas", type=_replicas, default=[1], metavar="R1,R2|max",
                   help="replica counts, or 'max' for as many as fit; capacity per GPU barely changes with "
                        "replicas under round-robin routing, so the default is 1")
    g.add_argument("--schedulers", type=name_list, default=["vllm", "sarathi", "vllm_v1"], metavar="S1,S2",
                   help="faster_transformer, orca, vllm, sarathi, vllm_v1 (default: vllm,sarathi,vllm_v1)")
    g.add_argument("--budgets", type=int_list_in(1, MAX_TOKENS), default=[512], metavar="B1,B2",
                   help="token budgets per iteration, for schedulers that chunk prompts (sarathi, vllm_v1); the "
                        "others run once with their default (a budget below the longest prompt would refuse "
                        "requests) (default: 512)")
    g.add_argument("--max-batch", "--max-num-seqs", dest="max_batch", type=batch_size, default=None, metavar="B",
                   help="max requests running at once (default: each policy's: 128, and vLLM's for vllm_v1)")
    g.add_argument("--block-size", type=block_size, default=16, help="tokens per KV block (default: %(default)s)")
    add_dtype_arguments(g)
    d = p.add_argument_group("disaggregated serving", "With --disaggregated the plan also sizes prefill and decode "
                             "pools (sim/serving/disagg.py) of every P:D ratio and TP within --max-gpus, on one Pareto front "
                             "with the aggregated configurations.")
    d.add_argument("--disaggregated", action="store_true", help="also search disaggregated deployments")
    d.add_argument("--prefill-scheduler", default="vllm", metavar="S",
                   help="the prefill pool's policy (default: vllm, whole prefills as DistServe)")
    d.add_argument("--prefill-budget", type=token_count, default=None, metavar="T",
                   help="the prefill pool's token budget (default: the policy's)")
    d.add_argument("--decode-scheduler", default="vllm", metavar="S", help="the decode pool's policy (default: vllm)")
    add_kv_link_arguments(d)
    d.add_argument("--max-pool-replicas", type=int_range(1, MAX_POOL_REPLICAS), default=4, metavar="N",
                   help=f"replicas per pool at most, {MAX_POOL_REPLICAS} at most (default: 4)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching in every configuration (vLLM's flags; default: on for vllm_v1 "
                        "only, as vLLM); compare a trace with reuse both ways")
    g.add_argument("--gpu-mem-util", type=fraction, default=0.9, metavar="F",
                   help="fraction of GPU memory for weights, activations and KV cache (default: %(default)s)")
    g.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline, for "
                        "the configurations it holds: the profile's GPU, a TP it measured and the model it was "
                        "measured for. Every other configuration falls back to the roofline, marked in the table's "
                        "cost_model column and note (no cross-GPU estimates: compare like with like)")
    add_cost_model_arguments(p)
    add_speculative_arguments(p)  # vllm_v1 configurations are sized without and with it ("vllm_v1+spec")
    g.add_argument("--prices", default=None, metavar="FILE.json",
                   help='GPU-hour prices in USD, e.g. {"a100-80gb": 2.0, "h100-sxm": 3.5}; default: the catalogue\'s')
    add_workload_arguments(p)
    add_slo_arguments(p)
    add_search_arguments(p)
    from sim.cli.capacity import add_capacity_parser
    add_capacity_parser(subparsers)


