"""The ``servesim simulate`` command: replay a trace (or a synthetic workload) through a simulated deployment."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING

from sim.cli.args import (
    add_command,
    add_cost_model_arguments,
    add_deployment_arguments,
    add_run_folder_arguments,
    check_run_folder_args,
    cost_model_from_args,
    deployment_kwargs,
    write_run_folder,
)
from sim.cli.workload_args import add_generator_arguments, add_trace_input_arguments, load_workload

if TYPE_CHECKING:
    from sim.simulator import SimConfig


def add_simulate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``simulate`` on the ``servesim`` subcommands; returns its parser."""
    p = add_command(subparsers, "simulate", cmd_simulate,
                    "replay a trace (or a synthetic workload) through a simulated deployment")
    add_trace_input_arguments(p)
    p.add_argument("--out", default=None, metavar="DIR", help="folder for summary.json, requests.csv, batches.csv")
    p.add_argument("--json", action="store_true", help="print the whole summary as JSON instead of the table")
    add_run_folder_arguments(p)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline; "
                        "with --gpu other than the profile's device, times are a roofline-scaled estimate")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_deployment_arguments(p)
    add_cost_model_arguments(p)
    add_generator_arguments(p)
    return p


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the deployment and scheduler flags describe."""
    from sim.simulator import SimConfig
    return SimConfig(**deployment_kwargs(args), strict=args.strict, seed=args.seed)


def cmd_simulate(args: argparse.Namespace) -> int:
    """Replay a request trace through the chosen scheduler, model, GPU and parallelism on the roofline cost model;
    print a summary and optionally write summary.json, requests.csv and batches.csv. Without --trace, the
    synthetic-workload flags make the requests.
    """
    from tqdm import tqdm

    from sim.outputs.run_folder import clean_json, format_summary
    from sim.simulator import simulate

    check_run_folder_args(args)
    config = config_from_args(args)
    config, cost_model = cost_model_from_args(args, config)
    trace, source, warnings = load_workload(args)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    show = not args.quiet and sys.stderr.isatty()
    bar = tqdm(total=len(trace), unit="req", desc="simulating", disable=not show, mininterval=0.5)
    t0 = time.perf_counter()
    result = simulate(trace, config, cost_model=cost_model, source=source, on_finish=lambda r: bar.update())
    bar.close()
    wall = time.perf_counter() - t0
    write_run_folder(args, result)
    if args.json:
        import json
        print(json.dumps(clean_json(result.summary), indent=2))
    else:
        print(format_summary(result.summary))
        req = result.summary["requests"]
        for s in req["skipped_examples"][:5]:
            print(f"skipped: {s}")
        if req["skipped"] > 5:
            print(f"... and {req['skipped'] - 5} more skipped (counts by reason above; the first 20 in summary.json)")
        print(f"\nsimulated in {wall:.2f} s wall" + (f"; wrote {args.out}/summary.json, requests.csv, batches.csv"
                                                   if args.out else ""))
    req = result.summary["requests"]
    if req["in_trace"] and not req["simulated"]:
        print(f"servesim: error: none of the {req['in_trace']} requests can be served by this deployment "
              f"({', '.join(f'{k}: {v}' for k, v in req['skipped_by_reason'].items())}); see the reasons above",
              file=sys.stderr)
        return 1
    return 0
