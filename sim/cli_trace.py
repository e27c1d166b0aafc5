"""The `servesim trace` command: generate synthetic traces; the generator flags are shared with `simulate`."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Sequence

from sim.request import TraceRequest
from sim.trace import write_trace
from sim.tracegen import ARRIVALS, SHAREGPT_OUTPUT, SHAREGPT_PROMPT, generate_trace

# "%(default).0s" prints nothing but stops ArgumentDefaultsHelpFormatter from appending "(default: None)".
_NO_DEFAULT = "%(default).0s"
_SPEC_HELP = (
    "fixed:N | uniform:LO:HI | zipf:THETA:LO:HI (P(LO+k-1) ~ k^-THETA) | "
    "lognormal:MEDIAN:SIGMA | sharegpt"
)


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the synthetic-workload flags (-n, --arrival, --qps, ...) to any parser, as one argument group."""
    g = parser.add_argument_group(
        "synthetic workload",
        "Seeded synthetic requests. Arrivals, prompt lengths and output lengths use independent "
        "random streams of --seed, so changing --qps or --arrival keeps the same lengths.",
    )
    g.add_argument("-n", "--num-requests", type=int, default=1000, metavar="N",
                   help="number of requests (default: %(default)s)")
    g.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                   help="arrival process: poisson (exponential gaps), gamma (gamma gaps with --cv), "
                        "static (all at t=0); poisson/gamma start at the first gap (default: %(default)s)")
    g.add_argument("--qps", type=float, default=1.0, metavar="Q",
                   help="mean arrival rate in requests per second, for poisson and gamma (default: %(default)s)")
    g.add_argument("--cv", type=float, default=1.0, metavar="C",
                   help="coefficient of variation of the gaps for --arrival gamma; 1 is Poisson-like, "
                        ">1 bursty (default: %(default)s)")
    g.add_argument("--prompt-len", default=None, metavar="SPEC",
                   help=f"prompt length distribution: {_SPEC_HELP} (default: sharegpt = {SHAREGPT_PROMPT}{_NO_DEFAULT})")
    g.add_argument("--output-len", default=None, metavar="SPEC",
                   help=f"output length distribution, same forms (default: sharegpt = {SHAREGPT_OUTPUT}{_NO_DEFAULT})")
    g.add_argument("--lengths-from", default=None, metavar="FILE",
                   help="draw (prompt, output) pairs jointly from FILE instead: a JSONL trace, or a CSV with "
                        "columns num_prefill_tokens,num_decode_tokens (Sarathi/Vidur tables) or "
                        "ContextTokens,GeneratedTokens (Azure); excludes --prompt-len/--output-len" + _NO_DEFAULT)
    g.add_argument("--max-total-tokens", type=int, default=None, metavar="N",
                   help="scale any request whose prompt+output exceeds N down to N tokens, keeping its "
                        f"prompt:output ratio (default: no limit{_NO_DEFAULT})")
    g.add_argument("--seed", type=int, default=0, metavar="S",
                   help="random seed; the same flags and seed give a byte-identical trace (default: %(default)s)")


def trace_from_args(args: argparse.Namespace) -> list[TraceRequest]:
    """Build the synthetic trace described by the add_generator_arguments flags (raises ValueError on bad flags)."""
    return generate_trace(
        args.num_requests,
        arrival=args.arrival,
        qps=args.qps,
        cv=args.cv,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        lengths_from=args.lengths_from,
        max_total_tokens=args.max_total_tokens,
        seed=args.seed,
    )


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
    """Handler of `servesim trace generate`: write the trace and print its summary."""
    try:
        requests = trace_from_args(args)
        parent = os.path.dirname(args.out)
        if parent:
            os.makedirs(parent, exist_ok=True)
        write_trace(args.out, requests)
    except (ValueError, OSError) as exc:
        print(f"servesim trace generate: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {summary_line(requests)}")
    return 0


def add_trace_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `trace` (with subcommand `generate`) on the main parser's subparsers."""
    trace = subparsers.add_parser(
        "trace", help="make request traces (JSON Lines)",
        description="Request traces in JSON Lines, one request per line (see traces/README.md).",
    )
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="SUBCOMMAND")
    gen = trace_sub.add_parser(
        "generate", help="write a seeded synthetic trace",
        description="Write a seeded synthetic trace: request ids 0..N-1, arrival times in seconds, "
                    "prompt and output token counts.",
        epilog="example: servesim trace generate --out t.jsonl -n 200 --arrival gamma --qps 2 --cv 3 "
               "--prompt-len zipf:0.6:64:2048 --output-len uniform:16:512 --seed 1",
    )
    gen.add_argument("--out", "-o", required=True, metavar="FILE",
                     help="trace file to write (JSONL; parent folders are created)")
    add_generator_arguments(gen)
    gen.set_defaults(func=_generate)

    def _no_subcommand(args: argparse.Namespace) -> int:
        trace.print_help(sys.stderr)
        return 2

    trace.set_defaults(func=_no_subcommand)
    return trace


def main(argv: Sequence[str] | None = None) -> int:
    """Stand-alone entry (`python -m sim.cli_trace trace generate ...`) until sim/cli.py wires the command."""
    parser = argparse.ArgumentParser(prog="servesim")
    sub = parser.add_subparsers(dest="command")
    add_trace_parser(sub)
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help(sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
