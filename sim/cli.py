"""The ``servesim`` command line: simulate, trace, and catalogue listings."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

from sim import __version__

MAIN_SCHEDULERS = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
NO_DEFAULT = "%(default).0s"  # in a help text: keeps ArgumentDefaultsHelpFormatter from adding "(default: None)"


def _positive_int(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {s}")
    return v


def add_deployment_arguments(p: argparse.ArgumentParser) -> None:
    """Model, hardware, parallelism and scheduler flags (shared by simulate and later commands)."""
    g = p.add_argument_group("deployment")
    g.add_argument("--model", default="llama-2-7b",
                   help="model name from the catalogue (`servesim models`) or a path to a Hugging Face "
                        "config.json or its folder (default: %(default)s)")
    g.add_argument("--model-config", default=None, metavar="PATH",
                   help="Hugging Face config.json to take the model shape from (overrides --model)")
    g.add_argument("--gpu", default=None, help="GPU from the catalogue (`servesim gpus`) (default: a100-80gb; with "
                                               "--profile, the profile's GPU)%(default).0s")
    g.add_argument("--tp", type=_positive_int, default=1, help="tensor-parallel degree (default: %(default)s)")
    g.add_argument("--pp", type=_positive_int, default=1, help="pipeline-parallel stages (default: %(default)s)")
    g.add_argument("--replicas", type=_positive_int, default=1,
                   help="independent model replicas behind the router (default: %(default)s)")
    g.add_argument("--router", choices=("round_robin", "least_outstanding"), default="round_robin",
                   help="how arriving requests are assigned to replicas (default: %(default)s)")
    add_scheduler_arguments(p)
    add_kv_arguments(p, "override the computed KV capacity (blocks per replica)")


def add_scheduler_arguments(p: argparse.ArgumentParser) -> None:
    """The scheduler policy and its knobs (simulate, engine, capacity)."""
    s = p.add_argument_group("scheduler")
    s.add_argument("--scheduler", default="sarathi",
                   help=f"batching policy: {', '.join(MAIN_SCHEDULERS)} (default: %(default)s)")
    s.add_argument("--token-budget", type=_positive_int, default=None, metavar="T",
                   help="max tokens per iteration: Sarathi's budget (default 512), vLLM v1's (default 2048), "
                        "vLLM v0's max_num_batched_tokens (default: unlimited); Orca/FasterTransformer: "
                        "optional cap on prefill tokens" + NO_DEFAULT)
    s.add_argument("--max-batch", type=_positive_int, default=128, metavar="B",
                   help="max requests running at once (vLLM max_num_seqs, Orca batch size) (default: %(default)s)")
    s.add_argument("--chunk-align", type=int, default=0, metavar="TILE",
                   help="Sarathi: round chunked batches down to a multiple of TILE tokens (default: 0, off)"
                        + NO_DEFAULT)


def add_kv_arguments(p: argparse.ArgumentParser, kv_blocks_help: str) -> None:
    """KV-cache block size, capacity and admission watermark."""
    k = p.add_argument_group("KV cache")
    k.add_argument("--block-size", type=_positive_int, default=16, help="tokens per KV block (default: %(default)s)")
    k.add_argument("--gpu-mem-util", type=float, default=0.9, metavar="F",
                   help="fraction of GPU memory for weights, activations and KV cache (default: %(default)s)")
    k.add_argument("--kv-blocks", type=_positive_int, default=None, metavar="N", help=kv_blocks_help + NO_DEFAULT)
    k.add_argument("--watermark", type=float, default=0.01,
                   help="fraction of blocks kept free at admission (default: %(default)s)")


def _config_from_args(args: argparse.Namespace):
    from sim.simulator import SimConfig
    return SimConfig(model=args.model_config or args.model, gpu=args.gpu or "a100-80gb", tp=args.tp, pp=args.pp,
                     replicas=args.replicas, scheduler=args.scheduler, token_budget=args.token_budget,
                     max_batch_size=args.max_batch, chunk_align=args.chunk_align, block_size=args.block_size,
                     watermark=args.watermark, gpu_memory_utilization=args.gpu_mem_util, kv_blocks=args.kv_blocks,
                     router=args.router, strict=args.strict, seed=args.seed)


def _load_workload(args: argparse.Namespace):
    """(trace requests, source label, warnings) from --trace or the generator flags."""
    if args.trace:
        from sim.cli_trace import load_trace
        tr = load_trace(args.trace, args, zero_lengths="error" if args.strict else "skip")
        if args.max_total_tokens is None:
            return tr.requests, args.trace, tr.warnings
        from sim.transforms import clip_total
        clipped = clip_total(tr.requests, args.max_total_tokens)
        n = sum(a is not b for a, b in zip(tr.requests, clipped))
        return clipped, args.trace, tr.warnings + [f"--max-total-tokens: clipped {n} requests to "
                                                   f"{args.max_total_tokens} tokens keeping prompt:output ratio"]
    from sim.cli_trace import trace_from_args
    return trace_from_args(args), "synthetic", []


def add_run_folder_arguments(p: argparse.ArgumentParser) -> None:
    """--plots and --timeline: extra files written into --out (simulate and engine)."""
    p.add_argument("--plots", action="store_true",
                   help="also write PNG plots into --out (TTFT/TBT CDFs, latency over time, batch composition, "
                        "KV cache, stage Gantt)")
    p.add_argument("--timeline", action="store_true",
                   help="also write --out/timeline.json (Chrome trace events; open in https://ui.perfetto.dev)")
    p.add_argument("--timeline-requests", type=int, default=1000, metavar="N",
                   help="request slices in the timeline: the first N requests by arrival (0: all)")


def check_run_folder_args(args: argparse.Namespace) -> None:
    if (args.plots or args.timeline) and not args.out:
        raise ValueError("--plots and --timeline write into the run folder: give --out DIR")


def write_run_folder(args: argparse.Namespace, result) -> None:
    """summary.json, requests.csv, batches.csv, and the plots / timeline asked for, into --out."""
    if not args.out:
        return
    from sim.outputs import write_run
    write_run(args.out, result.summary, result.requests, result.batches)
    if args.plots:
        from sim.plots import write_plots
        write_plots(args.out)
    if args.timeline:
        from sim.timeline import write_timeline
        write_timeline(args.out, max_requests=args.timeline_requests if args.timeline_requests > 0 else None)


def cmd_simulate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sim.outputs import format_summary
    from sim.simulator import simulate

    check_run_folder_args(args)
    config = _config_from_args(args)
    cost_model = None
    if args.profile:
        from sim.cost.profiled import for_simulation
        config, cost_model = for_simulation(args.profile, config, args.gpu)
        if cost_model.transfer_note():
            print(cost_model.transfer_note(), file=sys.stderr)
    trace, source, warnings = _load_workload(args)
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
        from sim.outputs import _clean
        print(json.dumps(_clean(result.summary), indent=2))
    else:
        print(format_summary(result.summary))
        for s in result.summary["requests"]["skipped_examples"][:5]:
            print(f"skipped: {s}")
        print(f"\nsimulated in {wall:.2f} s wall" + (f"; wrote {args.out}/summary.json, requests.csv, batches.csv"
                                                   if args.out else ""))
    return 0


def _params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def cmd_models(args: argparse.Namespace) -> int:
    from sim.models import MODELS
    print(f"{'name':<14}{'layers':>7}{'hidden':>8}{'heads':>6}{'kv':>4}{'ffn':>7}{'vocab':>8}{'ctx':>7}{'params':>9}")
    for m in MODELS.values():
        print(f"{m.name:<14}{m.num_layers:>7}{m.hidden_size:>8}{m.num_heads:>6}{m.num_kv_heads:>4}"
              f"{m.intermediate_size:>7}{m.vocab_size:>8}{m.max_context:>7}{_params(m.num_params):>9}")
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from sim.hardware import GPUS
    print(f"{'name':<11}{'bf16 TFLOP/s':>13}{'HBM GB/s':>10}{'mem GiB':>8}{'link GB/s':>10}{'$/h':>6}  source")
    for g in GPUS.values():
        print(f"{g.name:<11}{g.bf16_flops / 1e12:>13.0f}{g.mem_bandwidth / 1e9:>10.0f}{g.mem_bytes / 2**30:>8.0f}"
              f"{g.interconnect_bw / 1e9:>10.0f}{g.hourly_price_usd:>6.2f}  {g.source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from sim.cli_trace import add_generator_arguments, add_trace_parser

    parser = argparse.ArgumentParser(
        prog="servesim",
        description="Predict LLM serving latency tails, throughput and pipeline bubbles by discrete-event "
                    "simulation of Orca, vLLM, Sarathi-Serve and other schedulers.")
    parser.add_argument("--version", action="version", version=f"servesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    sim = sub.add_parser(
        "simulate", help="replay a trace (or a synthetic workload) through a simulated deployment",
        description="Replay a request trace through the chosen scheduler, model, GPU and parallelism on the "
                    "roofline cost model; print a summary and optionally write summary.json, requests.csv and "
                    "batches.csv. Without --trace, the synthetic-workload flags make the requests.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    sim.add_argument("--trace", default=None, metavar="FILE",
                     help="request trace: servesim JSONL or any format of --trace-format (see traces/README.md)")
    sim.add_argument("--trace-format", default="auto",
                     choices=("auto", "jsonl", "azure", "mooncake", "lengths", "burstgpt", "splitwise"),
                     help="format of --trace; auto detects it from extension and header. A length table without "
                          "arrived_at gets arrivals from --arrival/--qps/--cv/--seed; --max-total-tokens clips any "
                          "trace; zero-length rows are skipped (refused with --strict)")
    sim.add_argument("--on-unsorted", choices=("sort", "error"), default="sort",
                     help="arrival times going backwards in the trace: sort them with a warning, or refuse")
    sim.add_argument("--strict", action="store_true",
                     help="refuse a trace holding a request that can never be served (too long for the model's "
                          "context, the KV cache or the token budget) instead of skipping it")
    sim.add_argument("--out", default=None, metavar="DIR", help="folder for summary.json, requests.csv, batches.csv")
    sim.add_argument("--json", action="store_true", help="print the whole summary as JSON instead of the table")
    add_run_folder_arguments(sim)
    sim.add_argument("--profile", default=None, metavar="DIR",
                     help="price ops from this calibration profile (`servesim calibrate`) instead of the roofline; "
                          "with --gpu other than the profile's device, times are a roofline-scaled estimate")
    sim.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    add_deployment_arguments(sim)
    add_generator_arguments(sim)
    sim.set_defaults(func=cmd_simulate)

    add_trace_parser(sub)
    from sim.report import add_report_parser
    add_report_parser(sub)
    from engine.cli import add_engine_parser  # parser only: torch is imported when the command runs
    add_engine_parser(sub)
    from calibration.cli import add_calibrate_parser  # parser only: torch is imported when measuring
    add_calibrate_parser(sub)
    from sim.cli_plan import add_plan_parser  # `plan` and `capacity`
    add_plan_parser(sub)
    from sim.cli_validate import add_validate_parser  # parser only: torch is imported when it runs
    add_validate_parser(sub)
    sub.add_parser("models", help="list the model catalogue").set_defaults(func=cmd_models)
    sub.add_parser("gpus", help="list the GPU catalogue with datasheet sources").set_defaults(func=cmd_gpus)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input: one clear line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"servesim: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("servesim: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
