"""The ``servesim validate`` command: the engine (measured) against the simulator (predicted) on one trace.

Only the parser is built at import time (no torch), so ``servesim --help`` works without PyTorch.
"""

from __future__ import annotations

import argparse
import sys

from sim.cli.args import NO_DEFAULT as _NO
from sim.cli.args import add_command, add_max_model_len_argument, name_list, note_given_flags
from sim.cli.errors import BAD_INPUT, error
from sim.cli.values import (
    MAX_QPS,
    MAX_TOKENS,
    batch_size,
    block_count,
    block_size,
    duration,
    float_list_in,
    fraction,
    free_fraction,
    gap_cv,
    int_range,
    positive_seconds,
    request_count,
    seed_count,
    seed_value,
    total_tokens,
)
from sim.cli.workload_args import add_load_arguments, add_reuse_arguments, closed_loop_from_args

#: engine iterations run and discarded per run at most (--warmup), batches re-run with op timers (--op-check),
#: engine runs per scheduler and load (--repeats), CPU threads (--threads)
MAX_WARMUP, MAX_OP_CHECK, MAX_REPEATS, MAX_THREADS = 10_000, 100_000, 100, 1024
#: a load level as a fraction of the predicted capacity at most (--load)
MAX_LOAD = 100.0

TORCH_HINT = ("servesim validate runs the real engine and needs PyTorch: pip install torch==2.13.0 "
              "(or install servesim with the engine extra: pip install -e '.[engine]')")


def parse_budgets(text: str | None) -> dict[str, int | None]:
    """``512`` (every scheduler) or ``sarathi=512,vllm=4096`` (per scheduler) -> {scheduler or "*": budget}."""
    if not text:
        return {}
    out: dict[str, int | None] = {}
    for part in text.split(","):
        key, _, val = part.strip().rpartition("=")
        try:
            n = int(val) if val.isascii() else 0  # int() would read Unicode digits
        except ValueError:
            raise ValueError(f"--token-budget: expected T or SCHEDULER=T[,...], got {text!r}") from None
        if not 1 <= n <= MAX_TOKENS:
            raise ValueError(f"--token-budget: budgets must be from 1 to {MAX_TOKENS}, got {val!r}")
        out[key.strip() or "*"] = n
    return out


def _budgets_arg(text: str) -> str:
    """--token-budget checked at parse time (the command reads it with parse_budgets)."""
    try:
        if not text.strip():
            raise ValueError(f"--token-budget: expected T or SCHEDULER=T[,...], got {text!r}")
        parse_budgets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--token-budget: ")) from None
    return text


_EXAMPLES = """examples:
  servesim validate --trace traces/example_sharegpt_poisson.jsonl --model tiny --device cpu \\
      --profile calibration/profiles/tiny-cpu --max-total-tokens 512 --qps 20 --out runs/val
  servesim validate -n 200 --prompt-len uniform:16:256 --output-len uniform:8:64 --model tiny \\
      --device cpu --load 0.5,0.9 --out runs/val-load          # calibrates into runs/val-load/profile"""


def add_validate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``validate`` on the ``servesim`` subcommands; returns its parser."""
    p = add_command(subparsers, "validate", cmd_validate,
                    "run a trace on the real engine and in the simulator, or replay a benchmark client's result "
                    "(--measured); report the prediction error",
                    epilog=_EXAMPLES)
    note_given_flags(p)  # so that a generator flag given with --trace is refused by name
    p.add_argument("--out", required=True, metavar="DIR", help="folder for report.md, report.json, plots, run folders" + _NO)
    p.add_argument("--profile", default=None, metavar="DIR",
                   help="calibration profile of the engine's device (`servesim calibrate`); default: calibrate "
                        "first with the quick grid into DIR/profile (resumed when already there)" + _NO)
    p.add_argument("--full-calibration", action="store_true",
                   help="without --profile: calibrate with the full grid instead of the quick one")
    p.add_argument("--schedulers", type=name_list, default="orca,vllm,sarathi", metavar="A,B,...",
                   help="policies to validate, comma-separated (orca, vllm, sarathi, vllm_v1, faster_transformer)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    w = p.add_argument_group("workload and load levels")
    w.add_argument("--trace", default=None, metavar="FILE",
                   help="request trace (servesim JSONL or any --trace-format); without it, -n and the length "
                        "flags generate requests at each target rate" + _NO)
    w.add_argument("--trace-format", default="auto",
                   choices=("auto", "jsonl", "azure", "mooncake", "lengths", "burstgpt", "splitwise"),
                   help="format of --trace")
    w.add_argument("--qps", type=float_list_in(0.0, MAX_QPS), default=(), metavar="Q1,Q2,...",
                   help="target mean arrival rates (req/s): the trace's arrivals are rescaled to each, or generated "
                        "(--arrival) when it has none" + _NO)
    w.add_argument("--load", dest="loads", type=float_list_in(0.0, MAX_LOAD), default=(), metavar="F1,F2,...",
                   help="target rates as fractions of the capacity the simulator predicts with the profile for each "
                        "scheduler (e.g. 0.5,0.9: validate near saturation)" + _NO)
    w.add_argument("--offline", action="store_true",
                   help="every request at t=0; also checks that engine and simulator form identical batches")
    w.add_argument("-n", "--num-requests", type=request_count, default=200, metavar="N",
                   help="requests to generate when no --trace is given")
    w.add_argument("--prompt-len", default=None, metavar="SPEC",
                   help="generated prompt lengths: fixed:N | uniform:LO:HI | zipf:THETA:LO:HI | lognormal:MEDIAN:SIGMA "
                        "| sharegpt (default: sharegpt" + _NO + ")")
    w.add_argument("--output-len", default=None, metavar="SPEC",
                   help="generated output lengths, same forms (default: sharegpt" + _NO + ")")
    w.add_argument("--lengths-from", default=None, metavar="FILE",
                   help="draw generated (prompt, output) pairs from a trace or length table instead" + _NO)
    add_reuse_arguments(w)
    add_load_arguments(p)  # --max-concurrency: closed-loop clients on the engine and in the simulator alike
    w.add_argument("--max-total-tokens", type=total_tokens, default=None, metavar="N",
                   help="scale requests longer than N tokens down to N, keeping prompt:output (default: the "
                        "model's context length" + _NO + ")")
    w.add_argument("--arrival", choices=("poisson", "gamma"), default="poisson",
                   help="arrival process for generated arrivals")
    w.add_argument("--cv", type=gap_cv, default=1.0, help="coefficient of variation of the gaps for --arrival gamma")
    w.add_argument("--seed", type=seed_value, default=0,
                   help="seed of generated lengths, arrivals, weights and prompts")
    w.add_argument("--strict", action="store_true",
                   help="refuse a trace holding a request that can never be served instead of skipping it")

    c = p.add_argument_group("capacity (for --load)")
    c.add_argument("--slo-tbt-p99", type=positive_seconds, default=0.1, metavar="S",
                   help="P99 time-between-tokens bound (s)")
    c.add_argument("--slo-sched-delay-p50", "--slo-delay-p50", dest="slo_delay_p50", type=positive_seconds, default=2.0,
                   metavar="S", help="median scheduling delay bound (s; the name plan and capacity use)")
    c.add_argument("--capacity-duration", type=duration, default=30.0, metavar="S",
                   help="simulated seconds of arrivals per capacity point")
    c.add_argument("--capacity-seeds", type=seed_count, default=1, metavar="K",
                   help="seeds the capacity search aggregates (median)")

    m = p.add_argument_group("model and device")
    m.add_argument("--model", default="tiny", help="model from the catalogue (`servesim models`)")
    add_max_model_len_argument(m)
    m.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where the engine runs (default: cuda when available, else cpu)" + _NO)
    m.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="engine dtype (default: bfloat16 on cuda, float32 on cpu)" + _NO)
    m.add_argument("--backend", default="auto", choices=("auto", "sdpa", "flex", "flash"),
                   help="attention backend (use the one the profile was calibrated with)")
    m.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="run decode-only iterations eagerly instead of CUDA graphs" + _NO)
    m.add_argument("--warmup", type=int_range(0, MAX_WARMUP), default=10, metavar="N", help="engine iterations run and discarded per run")
    m.add_argument("--threads", type=int_range(1, MAX_THREADS), default=None, metavar="T",
                   help="CPU intra-op threads while the engine runs (default: the profile's, as calibrated)" + _NO)
    m.add_argument("--op-check", type=int_range(0, MAX_OP_CHECK), default=24, metavar="N",
                   help="engine batches re-run with every op timed in situ, to explain the error (0: off)")
    m.add_argument("--repeats", type=int_range(1, MAX_REPEATS), default=1, metavar="K",
                   help="engine runs per scheduler and load: the one with the median batch-level error is reported "
                        "and every run's median is listed, so the measurement's own noise shows (use "
                        "3-5 on a shared CPU)")
    m.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    m.add_argument("--no-timeline", dest="timeline", action="store_false",
                   help="skip the Perfetto timeline.json of each run folder")

    s = p.add_argument_group("scheduler and KV cache (the same for engine and simulator)")
    s.add_argument("--token-budget", type=_budgets_arg, default=None, metavar="T|S=T,...",
                   help="tokens per iteration for every scheduler (T) or per scheduler (sarathi=512,vllm=4096); "
                        "default: each policy's own (Sarathi 512, vLLM unlimited)" + _NO)
    s.add_argument("--max-batch", type=batch_size, default=128, metavar="B", help="max requests running at once")
    s.add_argument("--chunk-align", type=int_range(0, MAX_TOKENS), default=0, metavar="TILE", help="Sarathi chunk alignment (0: off)")
    s.add_argument("--block-size", type=block_size, default=16, help="tokens per KV block")
    s.add_argument("--kv-blocks", type=block_count, default=None, metavar="N",
                   help="KV capacity in blocks, given to both engine and simulator (default: from GPU memory on "
                        "cuda; on cpu twice what the trace needs at once)" + _NO)
    s.add_argument("--gpu-mem-util", type=fraction, default=0.9, metavar="F",
                   help="fraction of GPU memory for the engine (cuda, without --kv-blocks)")
    s.add_argument("--watermark", type=free_fraction, default=0.01, help="fraction of KV blocks kept free at admission")
    s.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching on the engine and in the simulator (vLLM's flags): the report "
                        "adds the prefix-cache hit rate measured against predicted; default: on for vllm_v1, "
                        "off for the other policies")
    s.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='n-gram speculative decoding (vllm_v1), vLLM\'s JSON, e.g. \'{"method": "ngram", '
                        '"num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4}\': the engine '
                        "drafts by prompt lookup and verifies greedily; its measured per-position acceptance and "
                        "lookups are fed to the simulator, and the report compares them (default: off)")
    from sim.measured.cli import add_measured_arguments
    add_measured_arguments(p)  # --measured: a benchmark client's result against the simulator, no engine
    return p



def _workload(args: argparse.Namespace):
    """(requests, source label, warnings): --trace as read (lengths clipped), or requests generated with no arrivals."""
    from sim.catalog.models import with_max_model_len
    max_total = args.max_total_tokens or with_max_model_len(args.model, args.max_model_len).max_context
    if args.trace:
        if args.sessions or args.system_prompt:
            raise ValueError("--sessions and --system-prompt shape generated requests; a --trace brings its own reuse "
                             "fields (prefix_group/prefix_len, hash_ids)")
        given = dict(getattr(args, "given_flags", ()))
        generator = [given[d] for d in ("num_requests", "prompt_len", "output_len", "lengths_from") if d in given]
        if generator:
            raise ValueError(f"--trace gives the requests; {', '.join(generator)} only shape generated ones: drop "
                             f"{'it' if len(generator) == 1 else 'them'} or --trace")
        from sim.cli.workload_args import load_trace
        from sim.workload.transforms import clip_total
        tr = load_trace(args.trace, argparse.Namespace(trace_format=args.trace_format, arrival="static", qps=1.0,
                                                       cv=1.0, seed=args.seed, zero_lengths="skip",
                                                       on_unsorted="sort"))
        reqs = clip_total(tr.requests, max_total)
        n = sum(a is not b for a, b in zip(tr.requests, reqs))
        return reqs, args.trace, tr.warnings + ([f"clipped {n} requests to {max_total} tokens"] if n else [])
    if not (args.qps or args.loads or args.offline):
        raise ValueError("without --trace, give --qps, --load or --offline: generated requests need a rate")
    from sim.workload.generator import generate_trace
    reqs = generate_trace(args.num_requests, arrival="static", prompt_len=args.prompt_len,
                          output_len=args.output_len, lengths_from=args.lengths_from, max_total_tokens=max_total,
                          seed=args.seed, turns=args.sessions[0] if args.sessions else 1,
                          think_time_s=args.sessions[1] if args.sessions else 0.0, system_prompt=args.system_prompt)
    return reqs, "synthetic", []


def cmd_validate(args: argparse.Namespace) -> int:
    """For each scheduler and load level: replay the trace on the real PyTorch engine in real time (measured),
    simulate the same trace with a calibration profile of the same device (predicted) under the same scheduler
    settings and KV capacity, and compare. Batch level: every batch the engine executed is priced by the cost
    model and compared with its measured time (host and device parts too), by batch kind and size. Request
    level: TTFT, TBT, TPOT, E2E and scheduling delay at P50/P90/P99 and throughput. An op check re-runs a sample
    of batches with every op timed inside the forward pass to show which ops the error comes from. Writes
    report.md, report.json, plots and both runs' folders into --out.
    """
    from sim.measured.cli import cmd_validate_measured, refuse_measured_only
    if args.measured:  # no engine, no torch: the simulator against a benchmark client's measured run
        return cmd_validate_measured(args)
    refuse_measured_only(args)
    try:
        import torch  # noqa: F401
    except ImportError:
        error(TORCH_HINT)
        return BAD_INPUT
    from calibration.validate.run import ValidateConfig, calibrate_profile, validate

    config = ValidateConfig(
        model=args.model, max_model_len=args.max_model_len, schedulers=tuple(args.schedulers), token_budgets=parse_budgets(args.token_budget),
        max_batch_size=args.max_batch, chunk_align=args.chunk_align, block_size=args.block_size,
        watermark=args.watermark, enable_prefix_caching=args.enable_prefix_caching,
        gpu_memory_utilization=args.gpu_mem_util, kv_blocks=args.kv_blocks,
        device=args.device, dtype=args.dtype, backend=args.backend, warmup=args.warmup,
        cuda_graphs=args.cuda_graphs, threads=args.threads, seed=args.seed, strict=args.strict,
        offline=args.offline, qps=args.qps, loads=args.loads, arrival=args.arrival, cv=args.cv,
        slo_tbt_p99=args.slo_tbt_p99, slo_delay_p50=args.slo_delay_p50, capacity_duration=args.capacity_duration,
        capacity_seeds=args.capacity_seeds, plots=args.plots, timeline=args.timeline, op_check=args.op_check,
        repeats=args.repeats, max_concurrency=args.max_concurrency, think_time_s=args.think_time,
        speculative_config=args.speculative_config)
    closed_loop_from_args(args)  # --think-time without --max-concurrency: refused before any engine run
    from sim.outputs.run_folder import prepare_out_dir
    out = prepare_out_dir(args.out)  # before the workload and any engine run
    trace, source, warnings = _workload(args)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    profile = args.profile
    if profile is None:
        profile = out / "profile"
        print(f"no --profile: calibrating {args.model} on {args.device or 'the default device'} into {profile}",
              file=sys.stderr)
        calibrate_profile(args.model, profile, device=args.device, dtype=args.dtype, backend=args.backend,
                          full=args.full_calibration, log=lambda m: print(m, file=sys.stderr))
    progress = not args.quiet and sys.stderr.isatty()
    result = validate(trace, config, profile, out=out, source=source, progress=progress)
    print(summary_text(result))
    print(f"\nwrote {out}/report.md, {out}/report.json and one folder per run")
    return 0


def summary_text(result) -> str:
    """Tails first (per run: TTFT, TBT, E2E percentile and throughput errors), then batch-level error by kind, the
    all-batch median last (negative: predicted below measured)."""
    from calibration.validate.errors import tail_errors
    from calibration.validate.results import prefix_cache_comparison

    def pct(x):
        return "-" if x is None else f"{x:+.0%}"
    def rate(x):
        return "-" if x is None else f"{x:.1%}"
    keys = ("ttft_p50", "ttft_p99", "tbt_p50", "tbt_p99", "e2e_p50", "throughput")
    caches = {r.name: prefix_cache_comparison(r.engine.summary, r.simulated.summary) for r in result.runs}
    hits = any(caches.values())  # a column of prefix-cache hit rates (measured/predicted) when caching is on
    lines = [f"{'run':<20}" + "".join(f"{k.replace('_', ' ').upper():>11}" for k in keys)
             + f"{'prefill':>9}{'decode':>8}{'mixed':>8}{'all':>7}" + (f"{'hit meas/pred':>16}" if hits else "")
             + "  same batches"]
    for r in result.runs:
        tails, kinds = tail_errors(r.request_error), r.batch_error["by_kind"]
        drift = " (machine drifted)" if any(x.get("drifted") for x in r.repeats) else ""
        pc = caches[r.name]
        hit = (f"{rate(pc['hit_rate_tokens']['measured'])}/{rate(pc['hit_rate_tokens']['predicted'])}"
               if pc else "-")
        lines.append(f"{r.name:<20}" + "".join(f"{pct(tails[k]['error']):>11}" for k in keys)
                     + "".join(f"{pct(kinds.get(k, {}).get('total', {}).get('median')):>{w}}"
                               for k, w in (("prefill", 9), ("decode", 8), ("mixed", 8)))
                     + f"{pct(r.batch_error['total']['median']):>7}" + (f"{hit:>16}" if hits else "")
                     + f"  {r.composition['matching']}/{r.composition['engine_batches']}{drift}")
    for r in result.runs:
        if len(r.repeats) > 1:
            lines.append(f"{r.name}: median batch error over {len(r.repeats)} engine runs "
                         + ", ".join(pct(x["median_error"]) + (" (reported)" if x["kept"] else "") for x in r.repeats))
    if result.ops_summary:
        s = result.ops_summary
        lines.append(f"op check ({s['batches']} batches): predicted {pct(s['predicted_vs_in_situ'])} against the ops "
                     f"timed in situ; calibration-style isolated timing {pct(s['isolated_vs_in_situ'])} against in situ")
    for n in result.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
