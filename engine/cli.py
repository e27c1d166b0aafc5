"""The ``servesim engine`` command: replay a trace on the real engine and write the simulator's run files.

This module only builds the parser at import time (no torch), so ``servesim --help`` works
without PyTorch; the command itself imports the engine and says how to install torch.
"""

from __future__ import annotations

import argparse
import sys

from sim.cli.args import NO_DEFAULT as NO
from sim.cli.args import (
    add_command,
    add_kv_arguments,
    add_max_model_len_argument,
    add_run_folder_arguments,
    add_scheduler_arguments,
    check_run_folder_args,
    int_range,
    note_given_flags,
    scheduler_of,
    served_status,
    write_run_folder,
)
from sim.cli.errors import BAD_INPUT, FAILED, error
from sim.cli.workload_args import add_generator_arguments, add_trace_input_arguments, load_workload

#: warm-up iterations at most (each runs a real forward pass)
MAX_WARMUP = 10_000
TORCH_HINT = ("servesim engine needs PyTorch: pip install torch==2.13.0 "
              "(or install servesim with the engine extra: pip install -e '.[engine]')")


def add_engine_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``engine`` on the ``servesim`` subcommands; returns its parser."""

    p = add_command(subparsers, "engine", cmd_engine, "replay a trace on the real PyTorch engine and measure it")
    note_given_flags(p)  # so that a generator flag given with --trace is refused by name
    add_trace_input_arguments(p)
    p.add_argument("--offline", action="store_true",
                   help="every request arrives at t=0 (throughput run) instead of at its trace arrival time")
    p.add_argument("--out", default=None, metavar="DIR", help="folder for summary.json, requests.csv, batches.csv" + NO)
    p.add_argument("--json", action="store_true", help="print the whole summary as JSON instead of the table")
    add_run_folder_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    m = p.add_argument_group("model and device")
    m.add_argument("--model", default="tiny",
                   help="model name from the catalogue (`servesim models`) or a path to a Hugging Face "
                        "config.json or its folder")
    m.add_argument("--model-config", default=None, metavar="PATH",
                   help="Hugging Face config.json to take the model shape from (overrides --model)" + NO)
    add_max_model_len_argument(m)
    m.add_argument("--checkpoint", default=None, metavar="DIR",
                   help="load weights from the *.safetensors files in DIR (HF Llama names); default: seeded "
                        "random weights" + NO)
    m.add_argument("--device", default=None, choices=("cpu", "cuda"),
                   help="where to run (default: cuda when available, else cpu)" + NO)
    m.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                   help="weights, activations and KV cache (default: bfloat16 on cuda, float32 on cpu)" + NO)
    m.add_argument("--backend", default="auto", choices=("auto", "sdpa", "flex", "flash"),
                   help="attention: auto picks flash-attn when installed, then FlexAttention on CUDA, else "
                        "SDPA with an explicit mask (the reference)")
    m.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                   help="run decode-only iterations eagerly instead of replaying captured CUDA graphs "
                        "(graphs are on by default on CUDA)" + NO)
    m.add_argument("--warmup", type=int_range(0, MAX_WARMUP), default=3, metavar="N",
                   help="iterations run before measuring, on copies of the first requests; excluded from the "
                        "results and reported in summary.json (cost_model.warmup)")
    m.add_argument("--gpu", default=None,
                   help="GPU catalogue entry for the roofline FLOPs/bytes columns and MFU (default: detected "
                        "from the CUDA device name; none on cpu, where they are 0)" + NO)

    add_scheduler_arguments(p)
    add_kv_arguments(p, "KV capacity in blocks (default: from free GPU memory and --gpu-mem-util on cuda; on "
                        "cpu twice what every request of the trace needs at once, at most 1 GiB)")
    add_generator_arguments(p)
    return p


def cmd_engine(args: argparse.Namespace) -> int:
    """Serve a request trace with a real Llama-family model in PyTorch (random weights unless --checkpoint),
    batched by the same scheduler objects the simulator uses. Requests arrive in real time (or all at once with
    --offline). Prints a summary and writes summary.json, requests.csv and batches.csv in the simulator's
    schema, plus measured host_s and device_s per iteration, so `servesim simulate` runs of the same deployment
    join on batch_id and request_id. Without --trace, the synthetic-workload flags make the requests.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        error(TORCH_HINT)
        return BAD_INPUT
    import json
    import time

    from engine.device import EngineOutOfMemoryError
    from engine.replay import EngineConfig, replay
    from sim.outputs.run_folder import clean_json, format_summary

    check_run_folder_args(args)

    config = EngineConfig(
        model=args.model_config or args.model, max_model_len=args.max_model_len, scheduler=scheduler_of(args), token_budget=args.token_budget,
        max_batch_size=args.max_batch, chunk_align=args.chunk_align, block_size=args.block_size,
        watermark=args.watermark, gpu_memory_utilization=args.gpu_mem_util, kv_blocks=args.kv_blocks,
        strict=args.strict, seed=args.seed, device=args.device, dtype=args.dtype, backend=args.backend,
        offline=args.offline, warmup=args.warmup, cuda_graphs=args.cuda_graphs, gpu=args.gpu,
        checkpoint=args.checkpoint, enable_prefix_caching=args.enable_prefix_caching, usage_context=args.usage_context,
        kv_reservation=args.kv_reservation)
    trace, source, warnings = load_workload(args)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        result = replay(trace, config, source=source, progress=not args.quiet and sys.stderr.isatty())
    except EngineOutOfMemoryError as e:
        error(str(e))
        return FAILED
    wall = time.perf_counter() - t0
    write_run_folder(args, result)
    summary = clean_json(result.summary)
    if args.json:
        print(json.dumps(summary, indent=2))
        return served_status(summary)
    print(format_summary(summary))
    print(engine_line(summary))
    for s in summary["requests"]["skipped_examples"][:5]:
        print(f"skipped: {s}")
    print(f"\nengine run took {wall:.2f} s wall" + (f"; wrote {args.out}/summary.json, requests.csv, batches.csv"
                                                   if args.out else ""))
    return served_status(summary)


def engine_line(summary: dict) -> str:
    """One line on how the run was measured: device, dtype, backend, graphs, warm-up, host share."""
    c = summary["cost_model"]
    w = c["warmup"]
    host = c.get("host_fraction")
    return (f"engine: {c['device_name']} ({c['device']}), {c['dtype']}, attention {c['backend']}, CUDA graphs "
            f"{'on' if c['cuda_graphs'] else 'off'}; warm-up {w['iterations']} iterations ({w['wall_s']:.3f} s) "
            f"excluded; host {'-' if host is None else format(host, '.1%')} of measured iteration time")
