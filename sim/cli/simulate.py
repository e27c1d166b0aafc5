"""The ``servesim simulate`` command: replay a trace (or a synthetic workload) through a simulated deployment."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

from sim.cli.args import (
    add_command,
    add_cost_model_arguments,
    add_deployment_arguments,
    add_kv_link_arguments,
    add_run_folder_arguments,
    check_cost_model_args,
    check_run_folder_args,
    cost_model_from_args,
    deployment_kwargs,
    flags_given,
    kv_link_section,
    note_given_flags,
    served_status,
    write_run_folder,
)
from sim.cli.values import batch_size, block_count, parallel_degree, replica_count, token_count
from sim.cli.workload_args import (
    add_generator_arguments,
    add_goodput_argument,
    add_load_arguments,
    add_trace_input_arguments,
    closed_loop_from_args,
    fit_to_context,
    goodput_of,
    load_workload,
)

if TYPE_CHECKING:
    from sim.serving.disagg import DisaggConfig
    from sim.serving.simulator import SimConfig, SimResult


DEPLOYMENT_HELP = ("the deployment from a YAML or TOML file (aggregated, or disaggregated prefill and decode "
                   "pools; schema in sim/serving/deployment.py) instead of the deployment flags, which are then refused; "
                   "with --profile the file's gpu counts as --gpu")


def add_simulate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``simulate`` on the ``servesim`` subcommands; returns its parser."""
    p = add_command(subparsers, "simulate", cmd_simulate,
                    "replay a trace (or a synthetic workload) through a simulated deployment")
    note_given_flags(p)
    add_trace_input_arguments(p)
    p.add_argument("--out", default=None, metavar="DIR", help="folder for summary.json, requests.csv, batches.csv")
    p.add_argument("--json", action="store_true", help="print the whole summary as JSON instead of the table")
    add_run_folder_arguments(p)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline; "
                        "with --gpu other than the profile's device, times are a roofline-scaled estimate")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--deployment", default=None, metavar="FILE", help=DEPLOYMENT_HELP)
    add_deployment_arguments(p)
    add_disaggregated_arguments(p)
    add_cost_model_arguments(p)
    add_generator_arguments(p)
    add_load_arguments(p)
    add_goodput_argument(p.add_argument_group("goodput"))
    return p


#: per-pool flags of a disaggregated deployment: (flag suffix, SimConfig field, type, metavar, what it sets); each
#: defaults to the deployment flag of the same suffix (--prefill-tp to --tp)
POOL_FLAGS = (("replicas", "replicas", replica_count, "N", "replicas"),
              ("tp", "tp", parallel_degree, "N", "TP degree"), ("pp", "pp", parallel_degree, "N", "pipeline stages"),
              ("gpu", "gpu", str, "GPU", "GPU"),
              ("scheduler", "scheduler", str, "S", "scheduler"),
              ("token-budget", "token_budget", token_count, "T", "token budget"),
              ("max-batch", "max_batch_size", batch_size, "B", "batch-size cap"),
              ("kv-blocks", "kv_blocks", block_count, "N", "KV blocks per replica"))


def add_disaggregated_arguments(p: argparse.ArgumentParser) -> None:
    """--disaggregated, each pool's --prefill-* / --decode-* flags, the KV link and the decode router (simulate)."""
    g = p.add_argument_group("disaggregated prefill and decode (pool flags left out take the deployment flags)")
    g.add_argument("--disaggregated", action="store_true",
                   help="a prefill pool and a decode pool; each request's KV cache moves between them over --kv-link")
    for pool in ("prefill", "decode"):
        for flag, field, kind, metavar, what in POOL_FLAGS:
            g.add_argument(f"--{pool}-{flag}", dest=f"{pool}_{field}", type=kind, default=None, metavar=metavar,
                           help=f"the {pool} pool's {what} (default: --{flag})")
    add_kv_link_arguments(g)
    g.add_argument("--decode-router", choices=("least_kv", "least_running"), default=None,
                   help="which decode replica takes a prefilled request: least KV in use or fewest running "
                        "(default: least_kv)")


def disaggregated_sections(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The prefill, decode, link and routers sections (deployment-file keys) the disaggregated flags give."""
    pools = {pool: {field: v for _, field, *_ in POOL_FLAGS if (v := getattr(args, f"{pool}_{field}")) is not None}
             for pool in ("prefill", "decode")}
    if getattr(args, "enable_expert_parallel", False):
        for own in pools.values():
            if "tp" in own:
                own["ep"] = own["tp"]
    routers = {"prefill": args.router, "decode": args.decode_router, "cache_weight": args.router_cache_weight}
    return {**pools, "link": kv_link_section(args), "routers": {k: v for k, v in routers.items() if v is not None}}


def config_from_args(args: argparse.Namespace) -> SimConfig | DisaggConfig:
    """The deployment that --deployment, the disaggregated flags or the deployment flags describe."""
    from sim.serving.simulator import SimConfig
    if not (args.deployment or args.disaggregated):
        given = flags_given(args, add_disaggregated_arguments)
        if given:
            raise ValueError(f"{', '.join(given)} describe a disaggregated deployment: add --disaggregated")
        return SimConfig(**deployment_kwargs(args), strict=args.strict, seed=args.seed)
    from sim.serving.deployment import disaggregated, load_deployment, with_run_options
    if args.deployment:
        given = flags_given(args, add_deployment_arguments, add_disaggregated_arguments)
        if given:
            raise ValueError(f"--deployment {args.deployment} sets the whole deployment: drop {', '.join(given)} "
                             f"(or change the file)")
        config = load_deployment(args.deployment)
    else:
        config = disaggregated(deployment_kwargs(args), **disaggregated_sections(args))
    return with_run_options(config, strict=args.strict, seed=args.seed)


def costs_from_args(args: argparse.Namespace, config: SimConfig | DisaggConfig) -> tuple[Any, Any]:
    """(config, cost model or None for the roofline); a disaggregated deployment gets a (prefill, decode) pair."""
    from sim.serving.simulator import SimConfig
    if isinstance(config, SimConfig):
        if args.deployment:  # the file's GPU stands for --gpu
            args = argparse.Namespace(**{**vars(args), "gpu": config.gpu})
        return cost_model_from_args(args, config)
    check_cost_model_args(args)
    if args.profile:
        raise ValueError("--profile prices one deployment on the profile's device: price a disaggregated one with the "
                         "roofline or --cost-model kernels")
    if args.cost_model != "kernels":
        return config, None
    from sim.cost.kernels.model import for_simulation
    return config, tuple(for_simulation(pool, args.kernel_db) for pool in (config.prefill, config.decode))


def run_simulation(trace: list, config: SimConfig | DisaggConfig, costs: Any, source: str, bar: Any,
                   closed_loop: Any = None, goodput_slo: dict[str, float] | None = None) -> SimResult:
    """simulate() or simulate_disaggregated(), as the deployment is; describe(config) added as "deployment", the
    saturation verdict and goodput (under ``goodput_slo``, default the default bounds) in every summary. ``bar``:
    a progress bar counting finished requests, or None."""
    from sim.serving.deployment import describe
    from sim.serving.load_verdict import add_load_verdict
    from sim.serving.simulator import SimConfig, simulate
    if isinstance(config, SimConfig):
        result = simulate(trace, config, cost_model=costs, source=source,
                          progress=bar.update if bar is not None else None, closed_loop=closed_loop)
        if goodput_slo is not None:
            add_load_verdict(result.summary, result.table("requests"), result.table("batches"), goodput_slo)
    else:
        if closed_loop is not None:
            raise ValueError("--max-concurrency: closed-loop clients drive an aggregated deployment only")
        from sim.serving.disagg import simulate_disaggregated
        result = simulate_disaggregated(trace, config, costs=costs, source=source)
        add_load_verdict(result.summary, result.table("requests"), None, goodput_slo)
        if bar is not None:
            bar.update(len(trace))
    result.summary["deployment"] = describe(config)
    return result


def context_model(config: SimConfig | DisaggConfig) -> Any:
    """The ModelSpec whose context bounds the requests (a disaggregated deployment's prefill pool's)."""
    return (config.model_spec() if hasattr(config, "model_spec") else config.prefill.model_spec())


def load_lines(summary: dict[str, Any]) -> list[str]:
    """The console lines after the summary table: the saturation verdict, the knob at its limit, goodput,
    closed-loop clients and what the prefix cache's hit rate is measured against."""
    from sim.serving.load_verdict import describe_goodput, describe_limits
    sat = summary.get("saturation") or {}
    clipped = summary["requests"].get("clipped_to_context")
    lines = ([clipped] if clipped else []) + ([f"load: {sat['verdict']}"] if sat else [])
    if summary.get("limits") and sat.get("saturated"):
        lines.append(f"limit: {describe_limits(summary['limits'])}")
    if summary.get("goodput"):
        lines.append(describe_goodput(summary["goodput"]))
    cl = summary.get("closed_loop")
    if cl:
        lines.append(f"closed loop: {cl['max_concurrency']} clients, think time {cl['think_time_s']:g} s; requests "
                     f"waited {cl['mean_wait_for_client_s']:.3g} s on average for a free client (not in latency)")
    lines += prefix_cache_lines(summary)
    return lines


def add_trace_reuse(summary: dict[str, Any], trace: list) -> None:
    """With prefix caching: summary.json's ``trace_reuse``, the reuse the simulated trace declares and the hit rate an
    unbounded cache would reach on it (``trace stats``' figure), to read the simulated hit rate against."""
    if "prefix_cache" not in summary:
        return
    from sim.workload.stats import ideal_reuse
    block = summary["kv_cache"]["block_size"]
    ideal = ideal_reuse(trace, block)
    summary["trace_reuse"] = {"requests_with_reuse_info": ideal["requests_declaring_reuse"],
                              "ideal_hit_rate_tokens": ideal["ideal_hit_rate_tokens"], "block_size": block}


def prefix_cache_lines(summary: dict[str, Any]) -> list[str]:
    """What the prefix cache's hit rate means for this trace: nothing to share, or the reuse the trace holds."""
    pc = summary.get("prefix_cache")
    if not pc:
        return []
    reuse = summary.get("trace_reuse")
    if reuse is None:
        return []
    if not reuse["requests_with_reuse_info"]:
        return ["prefix cache: the trace declares no shared prefixes (no hash_ids, sessions or system prompt): "
                "nothing can hit; its evictions only recycle finished requests' blocks"]
    return [f"prefix cache: the trace's requests share {reuse['ideal_hit_rate_tokens']:.1%} of their prompt tokens "
            f"with earlier ones (what `servesim trace stats` reports: an unbounded cache); this deployment's "
            f"{summary['kv_cache']['blocks_per_replica']:,} blocks per replica, LRU eviction, full blocks only "
            f"and routing over {summary['config'].get('replicas', 1)} replica(s) kept "
            f"{pc['hit_rate_tokens']:.1%}"]


def cmd_simulate(args: argparse.Namespace) -> int:
    """Replay a request trace through the chosen scheduler, model, GPU and parallelism on the roofline cost model;
    print a summary and optionally write summary.json, requests.csv and batches.csv. Without --trace, the
    synthetic-workload flags make the requests. --deployment FILE reads the deployment from a YAML or TOML file;
    --disaggregated runs separate prefill and decode pools with a KV transfer between them.
    """
    from sim.outputs.run_folder import clean_json, format_summary

    check_run_folder_args(args)
    config, costs = costs_from_args(args, config_from_args(args))
    closed_loop, goodput_slo = closed_loop_from_args(args), goodput_of(args)
    trace, source, warnings = load_workload(args)
    trace, note = fit_to_context(trace, args, context_model(config))
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    bar = None
    if not args.quiet and sys.stderr.isatty():  # tqdm imported only to be shown (0.03 s of start-up)
        from tqdm import tqdm
        bar = tqdm(total=len(trace), unit="req", desc="simulating", mininterval=0.5)
    t0 = time.perf_counter()
    result = run_simulation(trace, config, costs, source, bar, closed_loop, goodput_slo)
    if bar is not None:
        bar.close()
    add_trace_reuse(result.summary, trace)
    result.summary["requests"]["clipped_to_context"] = note  # the default clip, said once (None: none clipped)
    wall = time.perf_counter() - t0
    write_run_folder(args, result)
    if args.json:
        import json
        print(json.dumps(clean_json(result.summary), indent=2))
    else:
        print(format_summary(result.summary))
        for line in load_lines(result.summary):
            print(line)
        req = result.summary["requests"]
        for s in req["skipped_examples"][:5]:
            print(f"skipped: {s}")
        if req["skipped"] > 5:
            print(f"... and {req['skipped'] - 5} more skipped (counts by reason above; the first 20 in summary.json)")
        print(f"\nsimulated in {wall:.2f} s wall" + (f"; wrote {args.out}/summary.json, requests.csv, batches.csv"
                                                   if args.out else ""))
    return served_status(result.summary)
