"""The `servesim capacity` command: the highest request rate one deployment sustains within latency SLOs.

The deployment, the workload (its trace read, its lengths drawn), the SLO and --results are checked before
the first simulation; a search that cannot serve a single request, or ends in an error, exits 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from sim.cli.args import add_command, add_cost_model_arguments, add_deployment_arguments, deployment_kwargs
from sim.cli.errors import FAILED, error
from sim.cli.plan_args import (
    add_search_arguments,
    add_slo_arguments,
    add_workload_arguments,
    clip_line,
    cost_line,
    price_ref,
    seeds_of,
    show_progress,
    slo_from_args,
    workload_from_args,
)
from sim.cli.values import rate
from sim.cli.workload_args import add_load_arguments, closed_loop_from_args, goodput_of


def _ms(seconds: float | None, spec: str = ".1f") -> str:
    """Seconds as milliseconds, or '-' where there is no value (no TBT when every output is one token)."""
    return "-" if seconds is None else f"{seconds * 1e3:{spec}} ms"


def _s(seconds: float | None) -> str:
    """Seconds with two decimals, or '-' where there is no value."""
    return "-" if seconds is None else f"{seconds:.2f} s"


def _at_capacity(m: dict[str, Any]) -> str:
    """The metrics at capacity, in one line; a metric without a value (None) prints as '-'."""
    tok = m.get("output_tokens_per_s")
    return (f"at capacity (median over seeds): P99 TBT {_ms(m.get('tbt_p99'))}, median scheduling delay "
            f"{_s(m.get('scheduling_delay_p50'))}, P99 TTFT {_s(m.get('ttft_p99'))}, "
            f"{'-' if tok is None else format(tok, '.0f')} output tokens/s")


def cmd_capacity(args: argparse.Namespace) -> int:
    """Find the capacity of one deployment: the highest Poisson request rate (QPS) whose P99 TBT and median
    scheduling delay (and any other bound given) stay within the SLO, by a saturated probe, bracketing and
    bisection per seed. Reports the capacity (median over seeds), its spread over seeds and the number of
    simulations.
    """
    from sim.capacity.planner import make_executor
    from sim.capacity.search import CapacitySearch, ResultsFile, run_searches
    from sim.serving.simulator import SimConfig

    config = SimConfig(**deployment_kwargs(args))
    config.check()  # an unknown GPU or weights that do not fit: one line, before any simulation
    seeds, slo, profile = seeds_of(args), slo_from_args(args), price_ref(args, args.gpu)
    workload = workload_from_args(args, config.model_spec())
    clipped = clip_line(args, workload, config.model_spec())
    loop = closed_loop_from_args(args)
    clients = (loop.max_concurrency, loop.think_time_s) if loop else None
    search = CapacitySearch(config, workload, slo, seeds=seeds, rel_tol=args.rel_tol,
                            pass_rule=args.pass_rule, profile=profile, goodput=goodput_of(args), clients=clients)
    if profile is not None and args.profile:
        note = profile.cost_model(search.config).transfer_note()  # type: ignore[attr-defined]
        if note:
            print(note, file=sys.stderr)
    if args.results:
        _check_results_path(args.results)
    if args.qps is not None:
        return check_rate(search, args, clipped)
    store = ResultsFile(args.results)
    executor = make_executor(min(args.jobs or os.cpu_count() or 1, args.seeds), args.ray)
    try:
        stats = run_searches([search], executor=executor, results=store, progress=show_progress(args))
    finally:
        store.close()
        executor.shutdown(wait=True, cancel_futures=True)
    res = search.result()
    if args.json:
        from dataclasses import asdict
        d = asdict(res)
        d["slo"] = slo.as_dict()
        d["cost_model"] = cost_line(search)
        d["sustained"] = "a rate passes only while the deployment sustains it: capacity <= the sustained rate"
        d["clipped_to_context"] = clipped
        print(json.dumps(d, indent=2, default=str))
        return _status(res)
    print(f"SLO: {slo.describe()}; {workload.num_requests} requests per point, seeds {search.seeds}; "
          f"simulated (not measured), cost model: {cost_line(search)}")
    if clipped:
        print(clipped)
    if res.error is None:
        print(res.describe())
        print("per seed: " + ", ".join(f"{s}: {c:.4g}" for s, c in zip(search.seeds, res.per_seed)) + " req/s")
        if res.metrics:
            print(_at_capacity(res.metrics))
            print(res.describe_binding())
            print(res.describe_limit())
        if args.verbose:
            for p in sorted(res.points, key=lambda p: (p["seed"], p["qps"])):
                why = "pass" if p["passed"] else "FAIL"
                if p["stopped"]:
                    why += f" (stopped early: {p['stopped']['metric']} > {p['stopped']['bound']:g})"
                elif not p["passed"]:
                    why += " (" + "; ".join(slo.violations(p["metrics"])) + ")"
                print(f"  seed {p['seed']}  {p['qps']:>9.4g} req/s  {why}")
    print(f"{stats.simulated} simulations run, {stats.reused} reused, {stats.wall_s:.1f} s wall")
    return _status(res)


def _status(res: Any) -> int:
    """0, or 1 with the search's error as one line on stderr (no request servable, or a point that failed)."""
    if res.error is None:
        return 0
    error(f"{res.label}: {res.error}")
    return FAILED


def add_capacity_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `capacity` on the main parser's subparsers (with plan's workload, SLO and search flags)."""
    p = add_command(subparsers, "capacity", cmd_capacity,
                    "the highest request rate one deployment sustains within latency SLOs", show_defaults=False,
                    epilog="example: servesim capacity --model mistral-7b --scheduler sarathi --token-budget 512 "
                           "--slo-tbt-p99 0.1 -v")
    add_deployment_arguments(p)
    add_workload_arguments(p)
    add_slo_arguments(p)
    add_search_arguments(p)
    p.add_argument("--results", default=None, metavar="FILE.jsonl",
                   help="record every simulation here and resume from it when rerun")
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline, as "
                        "`servesim simulate --profile` does; with --gpu other than the profile's device, times are a "
                        "roofline-scaled estimate. Each worker process builds the cost model once")
    add_cost_model_arguments(p)
    p.add_argument("--qps", type=rate, default=None, metavar="R",
                   help="check one rate instead of searching: does this deployment meet the SLO at R req/s (each "
                        "seed, full runs), and with what headroom; `servesim plan --qps R` finds the cheapest "
                        "deployment that does")
    add_load_arguments(p)
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


def check_rate(search: Any, args: argparse.Namespace, clipped: str | None = None) -> int:
    """`capacity --qps R`: run every seed at R (no early stop) and say whether the SLO holds, with each bound's use,
    the saturation verdict and goodput; exit 1 when the rate fails (by --pass-rule)."""
    from sim.capacity.planner import make_executor
    from sim.capacity.rate_check import check_at_rate
    executor = make_executor(min(args.jobs or os.cpu_count() or 1, args.seeds), args.ray)
    try:
        check = check_at_rate(search, args.qps, executor=executor, progress=show_progress(args))
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    if args.json:
        print(json.dumps({**check, "clipped_to_context": clipped}, indent=2, default=str))
    else:
        print(f"SLO: {search.slo.describe()}; {search.workload.size(args.qps)} requests per seed, seeds "
              f"{search.seeds}; simulated (not measured), cost model: {cost_line(search)}")
        if clipped:
            print(clipped)
        for line in check["lines"]:
            print(line)
    if check.get("error"):
        error(f"{search.label}: {check['error']}")
        return FAILED
    return 0 if check["passes"] else FAILED
