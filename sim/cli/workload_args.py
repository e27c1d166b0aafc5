"""Where a command's requests come from: a trace file (``--trace``, any importable format) or the synthetic
generator's flags (``-n``, ``--arrival``, ``--qps``, ...). Shared by simulate, engine, trace and validate."""

from __future__ import annotations

import argparse
import math
from typing import Any

from sim.cli.args import NO_DEFAULT, given_by_dest
from sim.cli.values import (
    MAX_SECONDS,
    MAX_TOKENS,
    gap_cv,
    int_range,
    nonneg_float,
    rate,
    request_count,
    seed_value,
    total_tokens,
)
from sim.request import TraceRequest
from sim.workload.generator import ARRIVALS, SHAREGPT_OUTPUT, SHAREGPT_PROMPT, generate_trace
from sim.workload.importers import FORMATS, ZERO_POLICIES, ArrivalSpec, read_any
from sim.workload.trace import Trace

_SPEC_HELP = (
    "fixed:N | uniform:LO:HI | zipf:THETA:LO:HI (P(LO+k-1) ~ k^-THETA) | "
    "lognormal:MEDIAN:SIGMA | sharegpt"
)


#: what the ``sharegpt`` default is, wherever it is named: not the ShareGPT set ``vllm bench serve`` samples
SHAREGPT_HELP = ("sharegpt is Sarathi-Serve's ShareGPT table of long conversations (median prompt 1,730 and output "
                 "415 tokens, at most 8K), fitted as truncated lognormals (prompt " + SHAREGPT_PROMPT + ", output "
                 + SHAREGPT_OUTPUT + "; the 2600 is the untruncated median): longer than the ShareGPT set that "
                 "`vllm bench serve` samples")

#: turns of one generated conversation at most (each turn resends the earlier ones)
MAX_TURNS = 1000


def _count_and_number(text: str, form: str, example: str, default: float) -> tuple[int, float]:
    """INT[:NUMBER] as (int, float), the number ``default`` when left out; ``form`` and ``example`` for errors."""
    head, _, tail = text.partition(":")
    try:
        if not text.isascii():  # int() and float() would read Unicode digits
            raise ValueError(text)
        return int(head), float(tail or default)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {form}, e.g. {example}, got {text!r}") from None


def sessions_arg(text: str) -> tuple[int, float]:
    """TURNS[:THINK_S] of --sessions."""
    t, s = _count_and_number(text, "TURNS[:THINK_S]", "4:30", 0)
    if not (1 <= t <= MAX_TURNS and 0 <= s <= MAX_SECONDS):
        raise argparse.ArgumentTypeError(f"expected TURNS >= 1 (at most {MAX_TURNS}) and THINK_S >= 0 (finite "
                                         f"seconds), got {text!r}")
    return t, s


def system_prompt_arg(text: str) -> tuple[int, float]:
    """TOKENS[:FRACTION] of --system-prompt."""
    n, f = _count_and_number(text, "TOKENS[:FRACTION]", "512:0.8", 1)
    if not (1 <= n <= MAX_TOKENS and 0 < f <= 1):
        raise argparse.ArgumentTypeError(f"expected TOKENS >= 1 (at most {MAX_TOKENS}) and FRACTION in (0, 1], "
                                         f"got {text!r}")
    return n, f


def add_reuse_arguments(g: argparse._ArgumentGroup) -> None:
    """--sessions and --system-prompt: generated workloads with prompt reuse (sim.workload.reuse)."""
    g.add_argument("--sessions", type=sessions_arg, default=None, metavar="TURNS[:THINK_S]",
                   help="multi-turn conversations: consecutive requests become sessions of TURNS turns, each "
                        "resending the earlier turns (prefix reuse), THINK_S seconds (exponential mean, default 0) "
                        "between turns" + NO_DEFAULT)
    g.add_argument("--system-prompt", type=system_prompt_arg, default=None, metavar="TOKENS[:FRACTION]",
                   help="a shared system prompt of TOKENS tokens before the prompts of FRACTION (default 1) of "
                        "the requests (of the sessions, with --sessions)" + NO_DEFAULT)


def add_generator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the synthetic-workload flags (-n, --arrival, --qps, ...) to any parser, as one argument group."""
    g = parser.add_argument_group(
        "synthetic workload",
        "Seeded synthetic requests. Arrivals, prompt lengths and output lengths use independent "
        "random streams of --seed, so changing --qps or --arrival keeps the same lengths.",
    )
    g.add_argument("-n", "--num-requests", type=request_count, default=None, metavar="N",
                   help="number of requests (default: 1000); with --trace, the first N requests by arrival "
                        "(default: all)" + NO_DEFAULT)
    g.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                   help="arrival process: poisson (exponential gaps), gamma (gamma gaps with --cv), "
                        "static (all at t=0); poisson/gamma start at the first gap (default: %(default)s)")
    g.add_argument("--qps", type=rate, default=1.0, metavar="Q",
                   help="mean arrival rate in requests per second, for poisson and gamma (default: %(default)s)")
    g.add_argument("--cv", type=gap_cv, default=1.0, metavar="C",
                   help="coefficient of variation of the gaps for --arrival gamma; 1 is Poisson-like, "
                        ">1 bursty (default: %(default)s)")
    g.add_argument("--prompt-len", default=None, metavar="SPEC",
                   help=f"prompt length distribution: {_SPEC_HELP} (default: sharegpt{NO_DEFAULT}). {SHAREGPT_HELP}")
    g.add_argument("--output-len", default=None, metavar="SPEC",
                   help=f"output length distribution, same forms (default: sharegpt{NO_DEFAULT})")
    g.add_argument("--lengths-from", default=None, metavar="FILE",
                   help="draw (prompt, output) pairs jointly from FILE instead: a JSONL trace, or a CSV with "
                        "columns num_prefill_tokens,num_decode_tokens (Sarathi/Vidur tables) or "
                        "ContextTokens,GeneratedTokens (Azure); excludes --prompt-len/--output-len" + NO_DEFAULT)
    g.add_argument("--max-total-tokens", type=total_tokens, default=None, metavar="N",
                   help="scale any request whose prompt+output exceeds N down to N tokens, keeping its "
                        f"prompt:output ratio (default: no limit{NO_DEFAULT})")
    add_reuse_arguments(g)
    g.add_argument("--seed", type=seed_value, default=0, metavar="S",
                   help="random seed; the same flags and seed give a byte-identical trace (default: %(default)s)")


#: requests generated when -n is not given
DEFAULT_REQUESTS = 1000


def trace_from_args(args: argparse.Namespace) -> list[TraceRequest]:
    """Build the synthetic trace described by the add_generator_arguments flags (raises ValueError on bad flags)."""
    arrival = args.arrival
    if getattr(args, "max_concurrency", None) and not {"arrival", "qps"} & set(given_by_dest(args,
                                                                                       add_generator_arguments)):
        arrival = "static"  # closed-loop clients without a rate: all ready at t=0 (vLLM's --request-rate inf)
    return generate_trace(
        args.num_requests if args.num_requests is not None else DEFAULT_REQUESTS,
        arrival=arrival,
        qps=args.qps,
        cv=args.cv,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        lengths_from=args.lengths_from,
        max_total_tokens=args.max_total_tokens,
        seed=args.seed,
        turns=args.sessions[0] if args.sessions else 1,
        think_time_s=args.sessions[1] if args.sessions else 0.0,
        system_prompt=args.system_prompt,
    )


def add_trace_input_arguments(parser: argparse.ArgumentParser) -> None:
    """--trace with its format, order and strictness flags (simulate and engine read traces alike)."""
    parser.add_argument("--trace", default=None, metavar="FILE",
                        help="request trace: servesim JSONL or any format of --trace-format (see traces/README.md); "
                             "default: a synthetic workload from the generator flags")
    parser.add_argument("--trace-format", default="auto", choices=("auto",) + FORMATS,
                        help="format of --trace; auto detects it from extension and header. A length table without "
                             "arrived_at gets arrivals from --arrival/--qps/--cv/--seed; --max-total-tokens clips "
                             "any trace; zero-length rows are skipped (refused with --strict)")
    parser.add_argument("--on-unsorted", choices=("sort", "error"), default="sort",
                        help="arrival times going backwards in the trace: sort them with a warning, or refuse")
    parser.add_argument("--strict", action="store_true",
                        help="refuse a trace holding a request that can never be served (too long for the model's "
                             "context, the KV cache or the token budget) instead of skipping it")


def add_import_arguments(parser: argparse.ArgumentParser, *, format_flag: str = "--format",
                         arrivals: bool = True) -> None:
    """Flags that choose how a trace file is read: its format, zero-length rows and (for length tables) arrivals."""
    g = parser.add_argument_group(
        "trace import",
        "Supported formats: jsonl (servesim), azure (TIMESTAMP,ContextTokens,GeneratedTokens), mooncake "
        "(JSONL timestamp ms, input_length, output_length, hash_ids), lengths (num_prefill_tokens,"
        "num_decode_tokens[,arrived_at]), burstgpt (Timestamp,Model,Request tokens,Response tokens,...), "
        "splitwise (arrival_timestamp,prompt_size,token_size). Details: sim/workload/importers.py.")
    g.add_argument(format_flag, dest="trace_format", choices=("auto",) + FORMATS, default="auto",
                   help="format of the input trace; auto detects it from the extension and the header "
                        "(default: %(default)s)")
    g.add_argument("--zero-lengths", choices=ZERO_POLICIES, default="skip",
                   help="rows with a 0-token prompt or output (BurstGPT's failed requests): skip them with a "
                        "counted warning, or refuse the file (default: %(default)s)")
    g.add_argument("--on-unsorted", choices=("sort", "error"), default="sort",
                   help="arrival times going backwards: sort them with a warning, or refuse (default: %(default)s)")
    if arrivals:
        a = parser.add_argument_group(
            "arrivals for length tables",
            "A length table without an arrived_at column gets generated arrival times (as `trace generate`).")
        a.add_argument("--arrival", choices=ARRIVALS, default="poisson",
                       help="arrival process: poisson, gamma (with --cv) or static (default: %(default)s)")
        a.add_argument("--qps", type=rate, default=1.0, metavar="Q",
                       help="mean arrival rate in requests per second (default: %(default)s)")
        a.add_argument("--cv", type=gap_cv, default=1.0, metavar="C",
                       help="coefficient of variation of the gaps for --arrival gamma (default: %(default)s)")


def load_trace(path: str, args: argparse.Namespace, *, zero_lengths: str | None = None) -> Trace:
    """Read ``path`` as the import flags say (format, zero lengths, order; arrivals/seed for length tables)."""
    arrivals = ArrivalSpec(getattr(args, "arrival", "poisson"), getattr(args, "qps", 1.0), getattr(args, "cv", 1.0),
                           getattr(args, "seed", 0))
    return read_any(path, getattr(args, "trace_format", "auto"), arrivals=arrivals,
                    zero_lengths=zero_lengths or getattr(args, "zero_lengths", "skip"),
                    on_unsorted=getattr(args, "on_unsorted", "sort"))


#: generator flags that also apply to a --trace: the first N requests, the clip, the seed of generated arrivals
TRACE_FLAGS = ("num_requests", "max_total_tokens", "seed")
#: generator flags that make arrivals for a length table without them, and are refused with any other trace
ARRIVAL_FLAGS = ("arrival", "qps", "cv")


def check_trace_flags(args: argparse.Namespace) -> None:
    """Refuse generator flags that --trace would silently ignore, naming both (before the trace is read)."""
    given = given_by_dest(args, add_generator_arguments)
    for dest in TRACE_FLAGS:
        given.pop(dest, None)
    arrivals = [given.pop(d) for d in ARRIVAL_FLAGS if d in given]
    if given:
        raise ValueError(f"--trace gives the requests; {', '.join(given.values())} only shape generated ones: "
                         f"drop {'it' if len(given) == 1 else 'them'} or --trace")
    check_arrival_flags(args.trace, getattr(args, "trace_format", "auto"), arrivals, "--trace ")


def check_arrival_flags(path: str, fmt: str, flags: list[str], what: str = "") -> None:
    """Refuse arrival ``flags`` (--arrival, --qps, --cv as typed) for a trace that is not a length table: its own
    arrival times would win and the flags be ignored. ``what`` names the trace's flag in the message."""
    if not flags:
        return
    from sim.workload.importers import detect_format
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt != "lengths":
        raise ValueError(f"{what}{path} ({fmt}) has its own arrival times: drop {', '.join(flags)} (they make "
                         f"arrivals only for a length table without them)")


def load_workload(args: argparse.Namespace) -> tuple[list[TraceRequest], str, list[str]]:
    """(trace requests, source label, warnings) from --trace (clipped by --max-total-tokens) or the generator flags."""
    if args.trace:
        check_trace_flags(args)
        tr = load_trace(args.trace, args, zero_lengths="error" if args.strict else "skip")
        n = getattr(args, "num_requests", None)
        if n is not None and n < len(tr.requests):  # a quick look at a long trace
            tr.warnings.append(f"--num-requests: the first {n} of the trace's {len(tr.requests)} requests")
            tr.requests = sorted(tr.requests, key=lambda r: r.arrival_time)[:n]
        if args.max_total_tokens is None:
            return tr.requests, args.trace, tr.warnings
        from sim.workload.transforms import clip_total
        clipped = clip_total(tr.requests, args.max_total_tokens)
        n = sum(a is not b for a, b in zip(tr.requests, clipped))
        return clipped, args.trace, tr.warnings + [f"--max-total-tokens: clipped {n} requests to "
                                                   f"{args.max_total_tokens} tokens keeping prompt:output ratio"]
    return trace_from_args(args), "synthetic", []


# ---- requests the model cannot take, closed-loop clients, goodput ---------------------------------------

def clip_note(clipped: int, total: int, model: str, limit: int) -> str:
    """The one line simulate, capacity and plan print when the default clip changed requests."""
    return (f"workload: clipped {clipped} of {total} requests to {model}'s context of {limit} tokens (prompt + "
            f"output, keeping prompt:output; --max-total-tokens N sets another limit)")


def fit_to_context(trace: list[TraceRequest], args: argparse.Namespace, model: Any) -> tuple[list[TraceRequest],
                                                                                              str | None]:
    """Requests longer than ``model``'s (a ModelSpec) context clipped to it, as capacity and plan do, and the note
    saying how many; unchanged with --max-total-tokens (the user's clip) or --strict (refused instead)."""
    if args.max_total_tokens is not None or getattr(args, "strict", False) or not trace:
        return trace, None
    limit = model.max_context
    if not any(r.prompt_tokens + r.output_tokens > limit for r in trace):
        return trace, None
    from sim.workload.generator import clip_total
    clipped = clip_total(trace, limit)
    n = sum(a is not b for a, b in zip(trace, clipped))
    return clipped, clip_note(n, len(trace), model.name, limit)


def add_load_arguments(parser: argparse.ArgumentParser) -> None:
    """--max-concurrency and --think-time: closed-loop clients (sim.serving.closed_loop)."""
    g = parser.add_argument_group(
        "closed-loop clients",
        "With --max-concurrency N at most N requests are in flight: each is sent at the later of its arrival and "
        "the moment one of N clients is free (its last request completed, plus --think-time), and its latency "
        "counts from the send, as `vllm bench serve --max-concurrency` measures. Generated arrivals default to "
        "all at t=0 then (vLLM's default --request-rate inf): N clients sending back to back.")
    g.add_argument("--max-concurrency", type=int_range(1, MAX_CLIENTS), default=None, metavar="N",
                   help="closed-loop clients: requests in flight at most (default: open loop, every request sent "
                        "at its arrival)" + NO_DEFAULT)
    g.add_argument("--think-time", type=nonneg_float, default=0.0, metavar="S",
                   help="seconds a client waits after a completion before sending its next request (not in "
                        "vllm bench serve, which has none) (default: 0)" + NO_DEFAULT)


#: closed-loop clients at most
MAX_CLIENTS = 1_000_000


def closed_loop_from_args(args: argparse.Namespace) -> Any:
    """The ClosedLoop of --max-concurrency and --think-time, or None (open loop)."""
    n = getattr(args, "max_concurrency", None)
    if n is None:
        if getattr(args, "think_time", 0.0):
            raise ValueError("--think-time is the pause of closed-loop clients: add --max-concurrency N")
        return None
    from sim.serving.closed_loop import ClosedLoop
    return ClosedLoop(n, args.think_time)


def goodput_item(text: str) -> tuple[str, float]:
    """KEY:MILLISECONDS of --goodput (vLLM's form), as (key, seconds)."""
    from sim.serving.load_verdict import GOODPUT_KEYS
    key, sep, value = text.partition(":")
    try:
        if not (sep and value.isascii()):
            raise ValueError(text)
        ms = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected KEY:MILLISECONDS such as ttft:2000, got {text!r}") from None
    if key not in GOODPUT_KEYS:
        raise argparse.ArgumentTypeError(f"unknown goodput key {key!r} in {text!r}: expected one of "
                                         f"{', '.join(GOODPUT_KEYS)} (vLLM's)")
    if not (math.isfinite(ms) and 0 < ms <= MAX_SECONDS * 1e3):
        raise argparse.ArgumentTypeError(f"expected milliseconds > 0 in {text!r}")
    return key, ms / 1e3


def add_goodput_argument(g: Any) -> None:
    """--goodput KEY:MS ... as `vllm bench serve` takes it (requests meeting every bound, per second)."""
    g.add_argument("--goodput", type=goodput_item, nargs="+", default=None, metavar="KEY:MS",
                   help="per-request SLO of goodput, as vLLM's benchmark takes it: KEY:MILLISECONDS pairs, KEY in "
                        "ttft, tpot, e2el; goodput = completed requests meeting every bound per second of the run "
                        "(as vLLM's benchmark computes it) (default: ttft:2000 tpot:100, the per-request forms of "
                        "capacity's default SLO)" + NO_DEFAULT)


def goodput_of(args: argparse.Namespace) -> dict[str, float] | None:
    """{key: seconds} of --goodput (None: the default bounds); a key given twice is refused."""
    items = getattr(args, "goodput", None)
    if not items:
        return None
    out: dict[str, float] = {}
    for key, v in items:
        if key in out:
            raise ValueError(f"--goodput {key}:... given twice")
        out[key] = v
    return out
