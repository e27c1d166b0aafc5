"""The flags `servesim plan` and `servesim capacity` share (workload, SLO, search), and their checks.

Everything a capacity search reads is checked here, before any simulation: a bad flag, a bad trace (its
first error with file, line and field), an unusable --results file. A point that fails later is a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from sim.capacity.search import PASS_RULES, Slo, Workload
from sim.cli.args import check_cost_model_args
from sim.cli.values import (
    duration,
    float_range,
    gap_cv,
    job_count,
    request_count,
    seconds_or,
    seed_count,
    seed_value,
    total_tokens,
)
from sim.cli.workload_args import SHAREGPT_HELP, add_goodput_argument, add_reuse_arguments, clip_note

DEFAULT_NUM_REQUESTS = 500
DEFAULT_DURATION = 60.0

seconds_or_off = seconds_or({"off": None, "none": None}, "seconds > 0 or 'off'")


def _slo_item(text: str) -> tuple[str, float]:
    """NAME=SECONDS of --slo."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS such as e2e_p90=30, got {text!r}")
    v = seconds_or_off(value)
    if v is None:
        raise argparse.ArgumentTypeError(f"expected NAME=SECONDS with seconds > 0, got {text!r}")
    return name.strip(), v


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """Where each point's requests come from: lengths (generated, drawn from a trace, or replayed) and arrivals."""
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
                   help="prompt length distribution (see `servesim trace generate --help`; default: sharegpt). "
                        + SHAREGPT_HELP)
    g.add_argument("--output-len", default=None, metavar="SPEC",
                   help="output length distribution (default: sharegpt)")
    g.add_argument("--max-total-tokens", type=total_tokens, default=None, metavar="N",
                   help="scale requests longer than N tokens down to N, keeping prompt:output (default: the model's "
                        "context length)")
    g.add_argument("-n", "--num-requests", type=request_count, default=DEFAULT_NUM_REQUESTS, metavar="N",
                   help="requests per simulation point at least (and in the saturation probe) (default: %(default)s)")
    g.add_argument("--duration", type=duration, default=DEFAULT_DURATION, metavar="S",
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
    g.add_argument("--cv", type=gap_cv, default=1.0, metavar="C",
                   help="coefficient of variation of gaps for --arrival gamma (default: %(default)s)")


def add_slo_arguments(p: argparse.ArgumentParser) -> None:
    """The latency bounds a rate must meet."""
    g = p.add_argument_group("SLO", "A rate passes when every bound holds (Sarathi-Serve: P99 TBT and median "
                                    "scheduling delay). 'off' drops a bound.")
    g.add_argument("--slo-tbt-p99", type=seconds_or_off, default=0.1, metavar="S",
                   help="P99 time between tokens, seconds (default: %(default)s)")
    g.add_argument("--slo-sched-delay-p50", type=seconds_or_off, default=2.0, metavar="S",
                   help="median scheduling delay (arrival to first scheduled), seconds (default: %(default)s)")
    g.add_argument("--slo-ttft-p99", type=seconds_or_off, default=None, metavar="S",
                   help="P99 time to first token, seconds (default: off)")
    g.add_argument("--slo-tpot-p90", type=seconds_or_off, default=None, metavar="S",
                   help="P90 time per output token, seconds (default: off)")
    g.add_argument("--slo", type=_slo_item, action="append", default=[], metavar="NAME=S",
                   help="any other bound <latency>_<stat>=seconds, latency in ttft,tbt,tpot,e2e,scheduling_delay "
                        "and stat in p50,p90,p99,mean,max (repeatable), e.g. --slo e2e_p90=60. Besides the bounds, "
                        "a rate passes only while the deployment sustains it (its waiting queue does not grow)")
    add_goodput_argument(g)


def add_search_arguments(p: argparse.ArgumentParser) -> None:
    """Seeds, tolerance, pass rule and where the points run."""
    g = p.add_argument_group("search")
    g.add_argument("--seeds", type=seed_count, default=3, metavar="K",
                   help="seeds per configuration, each with its own lengths and arrivals (default: %(default)s)")
    g.add_argument("--seed", type=seed_value, default=0, metavar="S",
                   help="first seed; seeds are S..S+K-1 (default: %(default)s)")
    g.add_argument("--rel-tol", type=float_range(0.0, 1.0, low_open=True, high_open=True), default=0.05,
                   metavar="F",
                   help="stop bisecting when the bracket is within this fraction of the rate (default: %(default)s)")
    g.add_argument("--pass-rule", choices=PASS_RULES, default="median",
                   help="median: capacity is the median of the seeds' capacities (a rate counts when at least "
                        "half of the seeds sustain it); all: the minimum (every seed must) (default: %(default)s)")
    g.add_argument("--jobs", "-j", type=job_count, default=None, metavar="N",
                   help="parallel worker processes (default: the number of CPUs; 1: in this process)")
    g.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the points as Ray tasks on the cluster at ADDRESS, or 'local' for a local Ray "
                        "instance (needs `pip install servesim[ray]`)")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def workload_from_args(args: argparse.Namespace, model: Any) -> Workload:
    """The Workload of the workload flags for ``model`` (a ModelSpec), checked whole before any simulation.

    The first seed's probe requests are built here, so a bad trace, length table or length spec is refused
    now with its file, line and field, not later by every simulation point.
    """
    if args.trace and args.lengths_from:
        raise ValueError("give --trace or --lengths-from, not both")
    src = args.trace or args.lengths_from
    if src and (args.prompt_len or args.output_len):
        raise ValueError("--trace/--lengths-from give the lengths; do not also give --prompt-len/--output-len")
    if src and not os.path.exists(src):
        raise ValueError(f"{src}: file not found")
    if args.replay and not os.path.exists(args.replay):
        raise ValueError(f"{args.replay}: file not found")
    workload = Workload(num_requests=args.num_requests, duration=args.duration, prompt_len=args.prompt_len,
                        output_len=args.output_len, lengths_from=os.path.abspath(src) if src else None,
                        max_total_tokens=args.max_total_tokens, arrival=args.arrival, cv=args.cv,
                        turns=args.sessions[0] if args.sessions else 1,
                        think_time_s=args.sessions[1] if args.sessions else 0.0, system_prompt=args.system_prompt,
                        replay=os.path.abspath(args.replay) if args.replay else None)
    workload.for_model(model).trace(args.seed, None)  # reads the trace and draws the lengths: refusals come now
    return workload


def clip_line(args: argparse.Namespace, workload: Workload, model: Any) -> str | None:
    """The default clip to ``model``'s context (a ModelSpec) in one line, as simulate says it (counted in the first
    seed's probe requests), or None when --max-total-tokens is given or nothing is clipped."""
    if args.max_total_tokens is not None:
        return None
    raw = workload.trace(args.seed, None)
    n = sum(r.prompt_tokens + r.output_tokens > model.max_context for r in raw)
    return clip_note(n, len(raw), model.name, model.max_context) if n else None


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


def seeds_of(args: argparse.Namespace) -> list[int]:
    """Seeds S..S+K-1 of --seed and --seeds."""
    if args.seed + args.seeds - 1 > 2**63 - 1:
        raise ValueError(f"--seed {args.seed} --seeds {args.seeds}: the last seed passes 2^63 - 1")
    return list(range(args.seed, args.seed + args.seeds))


def show_progress(args: argparse.Namespace) -> bool:
    """A progress bar unless -q or stderr is not a terminal."""
    return not args.quiet and sys.stderr.isatty()


def cost_line(search: Any) -> str:
    """Which cost model prices a search's points, in words."""
    if search.profile is None:
        return f"roofline ({search.config.gpu})"
    return search.profile.describe(search.config)


def price_ref(args: argparse.Namespace, gpu: str | None = None) -> Any:
    """The ProfileRef or KernelsRef of --profile / --cost-model kernels, or None for the roofline."""
    from sim.capacity.search import KernelsRef, ProfileRef
    check_cost_model_args(args)
    if args.profile:
        return ProfileRef(args.profile, gpu)
    return KernelsRef(args.kernel_db) if args.cost_model == "kernels" else None
