"""The `servesim trace` command: generate synthetic traces, convert other formats, print and plot trace stats.

Its generator and import flags are the shared groups of ``sim.cli.workload_args``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Sequence

from sim.cli.args import add_command, given_by_dest, note_given_flags, seconds_or
from sim.cli.values import MAX_COUNT, int_range, positive_seconds, rate, seed_value, total_tokens
from sim.cli.workload_args import (
    ARRIVAL_FLAGS,
    add_generator_arguments,
    add_import_arguments,
    check_arrival_flags,
    load_trace,
    trace_from_args,
)
from sim.outputs.run_folder import naming
from sim.request import TraceRequest
from sim.workload.trace import write_trace
from sim.workload.transforms import TransformSpec, apply_transforms


def summary_line(requests: Sequence[TraceRequest]) -> str:
    """One line describing a trace: request count, duration, mean rate and median lengths."""
    n = len(requests)
    if n == 0:
        return "0 requests"
    span = max(r.arrival_time for r in requests)
    rate = f"mean rate {n / span:.3g} req/s" if span > 0 else "all at t=0"
    mp = statistics.median(r.prompt_tokens for r in requests)
    mo = statistics.median(r.output_tokens for r in requests)
    return f"{n} requests, duration {span:.3f} s, {rate}, median prompt {mp:g} tokens, median output {mo:g} tokens"


def _generate(args: argparse.Namespace) -> int:
    """Write a seeded synthetic trace: request ids 0..N-1, arrival times in seconds, prompt and output token counts."""
    requests = trace_from_args(args)
    with naming(args.out):
        write_trace(args.out, requests)
    print(f"wrote {args.out}: {summary_line(requests)}")
    return 0


#: bins of the rate over time at most (--bin)
MAX_BINS = 1_000_000


def _check_bins(requests: Sequence[TraceRequest], bin_s: float | None) -> None:
    """Refuse a --bin so narrow against the trace's span that the rate over time would need MAX_BINS bins or more."""
    if bin_s is None or not requests:
        return
    times = [r.arrival_time for r in requests]
    span = max(times) - min(times)
    if span / bin_s >= MAX_BINS:
        raise ValueError(f"--bin {bin_s:g}: the trace spans {span:g} s, {span / bin_s:.3g} bins; give at least "
                         f"{span / MAX_BINS:.3g} s (at most {MAX_BINS:,} bins)")


def _check_arrivals(args: argparse.Namespace, path: str) -> None:
    """Refuse --arrival/--qps/--cv for a trace with its own arrival times (they would be ignored)."""
    given = given_by_dest(args, add_import_arguments)
    check_arrival_flags(path, args.trace_format, [given[d] for d in ARRIVAL_FLAGS if d in given])


def _window(text: str) -> tuple[float, float]:
    """START:END in seconds (END may be empty for 'to the end')."""
    try:
        if not text.isascii():  # float() would read Unicode digits
            raise ValueError(text)
        a, b = text.split(":")
        start = float(a) if a else 0.0
        end = float(b) if b else float("inf")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected START:END in seconds (e.g. 600:1200 or 600:), got {text!r}") from None
    if not (0 <= start < end):
        raise argparse.ArgumentTypeError(f"expected 0 <= START < END, got {text!r}")
    return start, end


_jitter = seconds_or({"auto": "auto"}, "auto or a bucket width in seconds > 0")


def add_transform_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of the trace transforms (applied in the order listed)."""
    g = parser.add_argument_group(
        "transforms", "Applied in this order: jitter, window, first, sample, rate, lengths, clip. "
                      "Request ids are kept.")
    g.add_argument("--jitter", type=_jitter, default=None, metavar="auto|SECONDS",
                   help="spread requests that share a timestamp uniformly (seeded) over their bucket, up to the next "
                        "distinct timestamp and at most SECONDS wide; auto = the median gap between distinct "
                        "timestamps (for coarse timestamps such as Mooncake's ~3 s buckets)")
    g.add_argument("--window", type=_window, default=None, metavar="START:END",
                   help="keep requests arriving in [START, END) seconds and shift them to start at 0")
    g.add_argument("--first", type=int_range(1, MAX_COUNT), default=None, metavar="N", help="keep the first N requests")
    g.add_argument("--sample", type=int_range(1, MAX_COUNT), default=None, metavar="N",
                   help="keep a seeded uniform random subset of N requests (arrival order kept)")
    g.add_argument("--rate", type=rate, default=None, metavar="R",
                   help="scale all arrival times so the mean rate, (N-1)/(last-first arrival), is R req/s; the "
                        "burstiness (inter-arrival CV) is unchanged")
    g.add_argument("--lengths-from", default=None, metavar="FILE",
                   help="keep arrival times but draw (prompt, output) pairs with replacement from FILE "
                        "(any supported trace format)")
    g.add_argument("--max-total-tokens", type=total_tokens, default=None, metavar="N",
                   help="scale requests whose prompt + output exceeds N down to N tokens keeping their "
                        "prompt:output ratio (as Sarathi-Serve's benchmark does)")


def transform_spec_from_args(args: argparse.Namespace) -> TransformSpec:
    """The TransformSpec described by the add_transform_arguments flags."""
    return TransformSpec(jitter=args.jitter, window=args.window, first=args.first, sample=args.sample,
                         rate=args.rate, lengths_from=args.lengths_from, max_total_tokens=args.max_total_tokens,
                         seed=args.seed)


def _convert(args: argparse.Namespace) -> int:
    """Read a trace in any supported format (Azure, Mooncake, BurstGPT, Splitwise, length tables, servesim JSONL),
    optionally transform it, and write servesim JSONL. Malformed rows are reported with file and line.
    """
    _check_arrivals(args, args.input)
    trace = load_trace(args.input, args)
    for w in trace.warnings:
        print(f"warning: {w}", file=sys.stderr)
    requests, notes = apply_transforms(trace.requests, transform_spec_from_args(args))
    with naming(args.output):
        write_trace(args.output, requests)
    for note in notes:
        print(note)
    print(f"wrote {args.output}: {summary_line(requests)}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    """Print request rate over time, inter-arrival coefficient of variation, prompt/output length percentiles and
    the prompt:decode (P:D) ratio of a trace in any supported format; --plot also draws them.
    """
    import json

    from sim.workload.stats import format_stats, plot_stats, trace_stats
    _check_arrivals(args, args.file)
    trace = load_trace(args.file, args)
    for w in trace.warnings:
        print(f"warning: {w}", file=sys.stderr)
    _check_bins(trace.requests, args.bin)
    stats = trace_stats(trace.requests, args.bin)
    if args.plot:
        with naming(args.plot):
            plot_stats(trace.requests, args.plot, args.bin, title=os.path.basename(args.file))
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats, args.file))
    if args.plot:
        print(f"wrote {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


_CONVERT_EXAMPLES = """examples:
  servesim trace convert AzureLLMInferenceTrace_conv.csv azure.jsonl --window 0:600
  servesim trace convert synthetic_trace.jsonl mooncake.jsonl --max-total-tokens 4096 --rate 2
  servesim trace convert sharegpt_stats.csv sharegpt.jsonl --qps 4 --first 1000"""


def _no_subcommand(args: argparse.Namespace) -> int:
    """Request traces in JSON Lines, one request per line (see traces/README.md): generate synthetic ones, convert
    other tools' formats, print and plot their statistics.
    """
    print("servesim trace: choose a subcommand: generate, convert or stats (servesim trace --help)", file=sys.stderr)
    return 2


def add_trace_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `trace` (with subcommands `generate`, `convert`, `stats`) on the main parser's subparsers."""
    trace = add_command(subparsers, "trace", _no_subcommand, "make, convert and inspect request traces (JSON Lines)",
                        show_defaults=False)
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    gen = add_command(trace_sub, "generate", _generate, "write a seeded synthetic trace", show_defaults=False,
                      epilog="example: servesim trace generate --out t.jsonl -n 200 --arrival gamma --qps 2 --cv 3 "
                             "--prompt-len zipf:0.6:64:2048 --output-len uniform:16:512 --seed 1")
    gen.add_argument("--out", "-o", required=True, metavar="FILE",
                     help="trace file to write (JSONL; parent folders are created)")
    add_generator_arguments(gen)

    conv = add_command(trace_sub, "convert", _convert,
                       "convert a trace from another format to servesim JSONL, optionally transformed",
                       show_defaults=False, epilog=_CONVERT_EXAMPLES)
    note_given_flags(conv)  # so that --qps given for a trace with its own arrivals is refused by name
    conv.add_argument("input", metavar="IN", help="trace to read")
    conv.add_argument("output", metavar="OUT.jsonl", help="servesim JSONL trace to write (parent folders are created)")
    add_import_arguments(conv)
    add_transform_arguments(conv)
    conv.add_argument("--seed", type=seed_value, default=0, metavar="S",
                      help="seed for generated arrivals, --jitter, --sample and --lengths-from (default: %(default)s)")

    st = add_command(trace_sub, "stats", _stats, "print (and plot) a trace's rate, burstiness, lengths and P:D ratio",
                     show_defaults=False,
                     epilog="example: servesim trace stats AzureLLMInferenceTrace_conv.csv --plot azure_stats.png")
    note_given_flags(st)
    st.add_argument("file", metavar="FILE", help="trace to read")
    st.add_argument("--plot", default=None, metavar="OUT.png", help="also write a PNG with four panels")
    st.add_argument("--bin", type=positive_seconds, default=None, metavar="SECONDS",
                    help="bin width of the rate over time (default: a round width giving about 60 bins)")
    st.add_argument("--json", action="store_true", help="print the statistics as JSON")
    add_import_arguments(st)
    st.add_argument("--seed", type=seed_value, default=0, metavar="S",
                    help="seed of generated arrivals for length tables (default: %(default)s)")
    return trace
