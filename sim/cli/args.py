"""Flag groups and value types shared by the subcommands (simulate, engine, capacity, plan, validate, calibrate).

Every name here is public: the engine's and calibration's commands build on them too.
"""

from __future__ import annotations

import argparse
import inspect
import textwrap
from collections.abc import Callable
from typing import Any

from sim.catalog.models import DTYPE_BYTES
from sim.cli.values import (  # noqa: F401 - the value types are re-exported: the engine's and calibration's
    MAX_REQUESTS,  # commands import them from here
    MAX_TOKENS,
    batch_size,
    block_count,
    block_size,
    float_list,
    float_range,
    fraction,
    free_fraction,
    int_list,
    int_range,
    name_list,
    nonneg_float,
    nonneg_int,
    parallel_degree,
    positive_int,
    replica_count,
    seconds_or,
    token_count,
)

MAIN_SCHEDULERS = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
KV_RESERVATIONS = ("max-model-len", "oracle")  # sim.schedulers.base.KV_RESERVATIONS (the CLI imports no policy)
#: in a help text: prints nothing but keeps ArgumentDefaultsHelpFormatter from adding "(default: None)"
NO_DEFAULT = "%(default).0s"


# ---- which flags were given ----------------------------------------------------------------------

class _StoreNoted(argparse.Action):
    """argparse's store, also noting (dest, flag as typed) in the namespace's ``given_flags``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given_flags = (*getattr(namespace, "given_flags", ()), (self.dest, option_string))


class _StoreTrueNoted(_StoreNoted):
    """argparse's store_true, noted as given."""

    def __init__(self, option_strings: list[str], dest: str, default: bool = False, required: bool = False,
                 help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, const=True, default=default, required=required, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        super().__call__(parser, namespace, True, option_string)


def note_given_flags(p: argparse.ArgumentParser) -> None:
    """Make the store and store_true flags added to ``p`` from now on note that they were given (``flags_given``)."""
    for name, action in ((None, _StoreNoted), ("store", _StoreNoted), ("store_true", _StoreTrueNoted)):
        p.register("action", name, action)
    p.set_defaults(given_flags=())


def given_by_dest(args: argparse.Namespace, *adders: Callable[[argparse.ArgumentParser], None]) -> dict[str, str]:
    """{dest: flag as typed} of the flags that ``adders`` register which the command line gave, or which left
    their default (for parsers without ``note_given_flags``)."""
    scratch = argparse.ArgumentParser(add_help=False)
    for add in adders:
        add(scratch)
    defaults = vars(scratch.parse_args([]))
    noted = dict(getattr(args, "given_flags", ()))
    return {d: noted.get(d) or "--" + d.replace("_", "-") for d in defaults
            if d in noted or getattr(args, d, defaults[d]) != defaults[d]}


def flags_given(args: argparse.Namespace, *adders: Callable[[argparse.ArgumentParser], None]) -> list[str]:
    """The flags that ``adders`` register which the command line gave (as typed), or which left their default."""
    return list(given_by_dest(args, *adders).values())


# ---- flag groups --------------------------------------------------------------------------------

def add_max_model_len_argument(g: Any) -> None:
    """--max-model-len (vLLM's flag) on a parser or argument group."""
    g.add_argument("--max-model-len", type=token_count, default=None, metavar="N",
                   help="the model's context length, overriding the catalogue's or config.json's (long-context "
                        "variants; prompt + output above it are skipped) (default: the model's own)" + NO_DEFAULT)


def add_deployment_arguments(p: argparse.ArgumentParser) -> None:
    """Model, hardware, parallelism and scheduler flags (simulate, capacity)."""
    g = p.add_argument_group("deployment")
    g.add_argument("--model", default="llama-2-7b",
                   help="model name from the catalogue (`servesim models`) or a path to a Hugging Face "
                        "config.json or its folder (default: %(default)s)")
    g.add_argument("--model-config", default=None, metavar="PATH",
                   help="Hugging Face config.json to take the model shape from (overrides --model)")
    add_max_model_len_argument(g)
    g.add_argument("--gpu", default=None, help="GPU from the catalogue (`servesim gpus`) (default: a100-80gb; with "
                                               "--profile, the profile's GPU)%(default).0s")
    g.add_argument("--tp", type=parallel_degree, default=1, help="tensor-parallel degree (default: %(default)s)")
    g.add_argument("--pp", type=parallel_degree, default=1, help="pipeline-parallel stages (default: %(default)s)")
    g.add_argument("--replicas", type=replica_count, default=1,
                   help="independent model replicas behind the router (default: %(default)s)")
    g.add_argument("--router", choices=("round_robin", "least_outstanding", "cache_aware"), default="round_robin",
                   help="how arriving requests are assigned to replicas; cache_aware (with prefix caching): the "
                        "replica where the prompt left to prefill after its cached prefix, plus "
                        "--router-cache-weight tokens per outstanding request, is least (default: %(default)s)")
    g.add_argument("--router-cache-weight", type=float_range(0.0, MAX_TOKENS), default=1024.0, metavar="TOKENS",
                   help="cache_aware routing: prefill tokens one outstanding request counts as (default: %(default)s)")
    add_moe_and_dtype_arguments(g)
    add_scheduler_arguments(p)
    p.add_argument("--async-scheduling", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM V1's async engine loop: step N+1 is scheduled while step N runs (host time hidden "
                        "under the device step; a request arriving mid-step first runs a step later); default: on "
                        "for vllm_v1 with one pipeline stage, as vLLM 0.11+; the v0-era policies run serially")
    p.add_argument("--virtual-engines", action=argparse.BooleanOptionalAction, default=None,
                   help="vllm (v0) with --pp > 1: one scheduler per virtual engine, each with its share of the KV "
                        "blocks and its own queues, a request pinned to the least loaded, one micro-batch in flight "
                        "each, as vLLM v0; --no-virtual-engines: one scheduler over the whole cache with up to --pp "
                        "micro-batches in flight, as Sarathi-Serve's vLLM baseline (default: on for vllm)")
    p.add_argument("--frontend", default=None, metavar="vllm|none|custom:REQ_MS:PROMPT_US:TOKEN_US:DONE_MS",
                   help="the API server between clients and the engine, so that latencies are the client's: vllm "
                        "(vLLM's OpenAI server: 1.6 ms a request, 1.5 us a prompt token, 60 us a streamed token, "
                        "0.2 ms at the end; sources in sim/serving/frontend.py), none, or custom costs; default: "
                        "vllm for vllm_v1 with --usage-context api-server, else none (the engine's own times)")
    add_kv_arguments(p, "override the computed KV capacity (blocks per replica)")
    add_speculative_arguments(p)


def add_speculative_arguments(p: argparse.ArgumentParser) -> None:
    """vLLM's --speculative-config and the acceptance model behind it (simulate, capacity; sim.spec)."""
    g = p.add_argument_group("speculative decoding (vllm_v1)")
    g.add_argument("--speculative-config", default=None, metavar="JSON",
                   help='vLLM\'s speculative decoding config, e.g. \'{"method": "eagle3", "num_speculative_tokens": 3}\'; '
                        "method eagle, eagle3, mtp (a one-layer head priced as a target layer per proposed token), "
                        "ngram (host time only) or draft_model (with \"model\": a catalogue model or config.json, "
                        "priced by the same cost model) (default: off)" + NO_DEFAULT)
    g.add_argument("--spec-acceptance", default=None, metavar="RATES",
                   help="acceptance as vLLM logs it: per-position rates (e.g. 0.8,0.6,0.45), or one rate a of a "
                        "geometric model (position i accepted with probability a^i); seeded by --seed; default: the "
                        "method's published figure (eagle3 0.65, mtp 0.875; sources in sim/spec/config.py), "
                        "required for ngram and draft_model" + NO_DEFAULT)


def add_moe_and_dtype_arguments(g: argparse._ArgumentGroup) -> None:
    """Expert parallelism, routing skew and the weight / KV-cache dtypes (vLLM's names where vLLM has them)."""
    g.add_argument("--ep", type=parallel_degree, default=1, metavar="N",
                   help="expert-parallel degree of a MoE model: its routed experts spread whole over N GPUs, with "
                        "all-to-all dispatch and combine; the EP group is the TP group (vLLM's "
                        "--enable-expert-parallel), so N = --tp (default: 1, experts split by TP)")
    g.add_argument("--enable-expert-parallel", action="store_true",
                   help="vLLM's flag: --ep equal to --tp")
    add_dtype_arguments(g)


def add_dtype_arguments(g: argparse._ArgumentGroup) -> None:
    """Routing skew and the weight / KV-cache dtypes (also for plan, which searches EP itself)."""
    g.add_argument("--router-skew", type=float_range(0.0, 100.0), default=0.0, metavar="S",
                   help="MoE routing skew: expert popularity Zipf-like with exponent S (default: 0, uniform)")
    g.add_argument("--dtype", "--quantization", dest="dtype", choices=("auto", *DTYPE_BYTES),
                   default="auto",
                   help="weight dtype: auto (the checkpoint's: bf16, fp8 for DeepSeek-V3), bf16, fp16 or fp8 (one "
                        "byte per weight; GEMMs at the GPU's FP8 peak, weight-only on GPUs without FP8 tensor cores, "
                        "as vLLM's Marlin kernels) (default: %(default)s)")
    g.add_argument("--kv-cache-dtype", choices=("auto", "fp8"), default="auto",
                   help="KV-cache element dtype, as vLLM's flag: auto (the activation dtype, 2 bytes) or fp8 "
                        "(1 byte; about twice the blocks) (default: %(default)s)")


def ep_of(args: argparse.Namespace) -> int:
    """The expert-parallel degree the flags give: --ep, or --tp with vLLM's --enable-expert-parallel."""
    return args.tp if getattr(args, "enable_expert_parallel", False) else getattr(args, "ep", 1)


def deployment_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The SimConfig fields the deployment flags give (model, GPU, parallelism, dtypes, scheduler, KV)."""
    ep = ep_of(args)
    if getattr(args, "kv_reservation", None) == "oracle" and not getattr(args, "disaggregated", False):
        from sim.schedulers import scheduler_class
        if not scheduler_class(scheduler_of(args)).reserves_max_length:  # a no-op would pass silently
            raise ValueError(f"--kv-reservation oracle sets what Orca and FasterTransformer reserve per request; "
                             f"--scheduler {scheduler_of(args)} reserves none: use orca or faster_transformer, "
                             "or drop it")
    return {"model": args.model_config or args.model, "max_model_len": args.max_model_len,
            "gpu": args.gpu or "a100-80gb", "tp": args.tp, "pp": args.pp, "replicas": args.replicas, "ep": ep,
            "dtype": args.dtype, "kv_cache_dtype": args.kv_cache_dtype, "router_skew": args.router_skew,
            "scheduler": scheduler_of(args), "token_budget": args.token_budget, "max_batch_size": args.max_batch,
            "chunk_align": args.chunk_align, "block_size": args.block_size, "watermark": args.watermark,
            "gpu_memory_utilization": args.gpu_mem_util, "kv_blocks": args.kv_blocks, "router": args.router,
            "router_cache_weight": args.router_cache_weight,
            "enable_prefix_caching": args.enable_prefix_caching, "async_scheduling": args.async_scheduling,
            "usage_context": args.usage_context, "frontend": args.frontend,
            "kv_reservation": getattr(args, "kv_reservation", "max-model-len"),
            "virtual_engines": getattr(args, "virtual_engines", None),
            **{k: v for k in ("speculative_config", "spec_acceptance") if (v := getattr(args, k, None)) is not None}}


def add_scheduler_arguments(p: argparse.ArgumentParser) -> None:
    """The scheduler policy and its knobs (simulate, engine, capacity)."""
    s = p.add_argument_group("scheduler")
    s.add_argument("--scheduler", default="sarathi",
                   help=f"batching policy: {', '.join(MAIN_SCHEDULERS)} (default: %(default)s)")
    s.add_argument("--token-budget", "--max-num-batched-tokens", dest="token_budget", type=token_count,
                   default=None, metavar="T",
                   help="max tokens per iteration (vLLM's max_num_batched_tokens): Sarathi's budget (default 512), "
                        "vLLM v1's (default vLLM's: see --usage-context), vLLM v0's (default max(max_model_len, 2048), as vLLM); "
                        "Orca/FasterTransformer: optional cap on prefill tokens" + NO_DEFAULT)
    s.add_argument("--max-batch", "--max-num-seqs", dest="max_batch", type=batch_size, default=None, metavar="B",
                   help="max requests running at once (vLLM's max_num_seqs, Orca's batch size); default: the "
                        "original's: 256 for vllm (vLLM v0), 128 for sarathi, orca and faster_transformer "
                        "(Sarathi-Serve's), and for vllm_v1 vLLM's by GPU and --usage-context (1024 on GPUs of "
                        "70 GiB or more that are not A100s, else 256)")
    s.add_argument("--usage-context", choices=("api-server", "offline"), default="api-server",
                   help="vllm_v1's defaults as vLLM sets them for its API server (vllm serve) or its offline LLM "
                        "class: --max-num-batched-tokens 8192 or 16384 on large GPUs, else 2048 or 8192 "
                        "(default: %(default)s)")
    s.add_argument("--enable-chunked-prefill", action="store_true",
                   help="vLLM's flag: with --scheduler vllm, run vLLM v0's chunked-prefill scheduler, which is "
                        "Sarathi-Serve's policy (stall-free, decodes first, prefills chunked to the budget; "
                        "--scheduler sarathi)")
    s.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=None,
                   help="automatic prefix caching (vLLM's flags): full KV blocks shared by their prefix hash, "
                        "reference-counted, evicted least recently used; default: on for vllm_v1 (as vLLM v1), "
                        "off for the other policies")
    s.add_argument("--chunk-align", type=int_range(0, MAX_TOKENS), default=0, metavar="TILE",
                   help="Sarathi: round chunked batches down to a multiple of TILE tokens (default: 0, off)"
                        + NO_DEFAULT)
    s.add_argument("--kv-reservation", choices=KV_RESERVATIONS, default="max-model-len",
                   help="KV blocks Orca and FasterTransformer reserve per request at admission: max-model-len (as "
                        "Sarathi-Serve's implementations) or oracle (a what-if: each request's own prompt + output, "
                        "as if its output length were known) (default: %(default)s)")


def scheduler_of(args: argparse.Namespace) -> str:
    """The policy --scheduler names, with vLLM's --enable-chunked-prefill mapped onto Sarathi-Serve's."""
    if not getattr(args, "enable_chunked_prefill", False):
        return args.scheduler
    if args.scheduler not in ("vllm", "sarathi"):
        raise ValueError(f"--enable-chunked-prefill applies to --scheduler vllm (got {args.scheduler!r}); vllm_v1 "
                         f"always chunks, Orca and FasterTransformer never do")
    return "sarathi"


def add_kv_arguments(p: argparse.ArgumentParser, kv_blocks_help: str) -> None:
    """KV-cache block size, capacity and admission watermark."""
    k = p.add_argument_group("KV cache")
    k.add_argument("--block-size", type=block_size, default=16, help="tokens per KV block (default: %(default)s)")
    k.add_argument("--gpu-mem-util", "--gpu-memory-utilization", dest="gpu_mem_util", type=fraction, default=0.9,
                   metavar="F",
                   help="fraction of GPU memory for weights, activations and KV cache (default: %(default)s)")
    k.add_argument("--kv-blocks", type=block_count, default=None, metavar="N", help=kv_blocks_help + NO_DEFAULT)
    k.add_argument("--watermark", type=free_fraction, default=0.01,
                   help="fraction of blocks kept free at admission (default: %(default)s)")


def add_cost_model_arguments(p: argparse.ArgumentParser) -> None:
    """--cost-model and --kernel-db: which measured data prices the ops (simulate, cost)."""
    c = p.add_argument_group("cost model")
    c.add_argument("--cost-model", choices=("roofline", "kernels"), default="roofline",
                   help="roofline: datasheet rates, with efficiencies fitted to published measurements where the GPU has "
                        "them (the embedded default); kernels: measured kernel latencies from "
                        "AIConfigurator's databases (needs the kernels extra; GPUs: " + ", ".join(_kernel_gpus())
                        + "), roofline for the ops they lack. --profile DIR prices from a calibration profile instead")
    c.add_argument("--kernel-db", default=None, metavar="FRAMEWORK[:VERSION]",
                   help="with --cost-model kernels: whose measurements (default: vllm, its newest version measured "
                        "on the GPU)" + NO_DEFAULT)


def _kernel_gpus() -> list[str]:
    from sim.catalog.hardware import GPUS
    return [name for name, g in GPUS.items() if g.kernel_db]


def check_cost_model_args(args: argparse.Namespace) -> None:
    """Refuse --profile with --cost-model kernels, and --kernel-db without it."""
    if getattr(args, "profile", None) and args.cost_model != "roofline":
        raise ValueError("--profile and --cost-model kernels both choose the prices: give one")
    if args.kernel_db and args.cost_model != "kernels":
        raise ValueError("--kernel-db chooses the measurements of --cost-model kernels: add --cost-model kernels")


def cost_model_from_args(args: argparse.Namespace, config: Any) -> tuple[Any, Any]:
    """(config, cost model or None for the roofline) from --profile / --cost-model / --kernel-db, with --gpu."""
    check_cost_model_args(args)
    profile = getattr(args, "profile", None)
    if profile:
        import sys

        from sim.cost.profiled import for_simulation
        config, cost_model = for_simulation(profile, config, args.gpu)
        if cost_model.transfer_note():
            print(cost_model.transfer_note(), file=sys.stderr)
        return config, cost_model
    if args.cost_model == "kernels":
        from sim.cost.kernels.model import for_simulation as kernels_for_simulation
        return config, kernels_for_simulation(config, args.kernel_db)
    return config, None


def add_run_folder_arguments(p: argparse.ArgumentParser) -> None:
    """--plots and --timeline: extra files written into --out (simulate and engine)."""
    p.add_argument("--plots", action="store_true",
                   help="also write PNG plots into --out (TTFT/TBT CDFs, latency over time, batch composition, "
                        "KV cache, stage Gantt)")
    p.add_argument("--timeline", action="store_true",
                   help="also write --out/timeline.json (Chrome trace events; open in https://ui.perfetto.dev)")
    p.add_argument("--timeline-requests", type=int_range(0, MAX_REQUESTS), default=1000, metavar="N",
                   help="request slices in the timeline: the first N requests by arrival (0: all)")
    p.add_argument("--format", dest="table_format", choices=("csv", "parquet"), default="csv",
                   help="requests and batches tables in --out as CSV or Parquet (full float64 precision, "
                        "smaller; needs pyarrow)")


def check_run_folder_args(args: argparse.Namespace) -> None:
    """Refuse --plots/--timeline without --out, and an --out that cannot be written, before any work is done;
    a previous run's manifest in --out goes now, so that an interrupted run never leaves it looking complete."""
    if (args.plots or args.timeline) and not args.out:
        raise ValueError("--plots and --timeline write into the run folder: give --out DIR")
    if getattr(args, "table_format", "csv") == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise ValueError("--format parquet needs pyarrow: pip install pyarrow") from None
    if args.out:
        from sim.outputs.run_folder import claim_run_folder
        claim_run_folder(args.out)


def write_run_folder(args: argparse.Namespace, result: Any) -> None:
    """summary.json, requests.csv, batches.csv, and the plots / timeline asked for, into --out."""
    if not args.out:
        return
    from sim.outputs.run_folder import write_run
    write_run(args.out, result.summary, result.table("requests"), result.table("batches"),  # as made: no pandas
              getattr(args, "table_format", "csv"))
    if args.plots:
        from sim.outputs.plots import write_plots
        write_plots(args.out)
    if args.timeline:
        from sim.outputs.timeline import write_timeline
        write_timeline(args.out, max_requests=args.timeline_requests if args.timeline_requests > 0 else None)


def served_status(summary: dict) -> int:
    """Exit status of a finished run: 0, or 1 with one line on stderr when the trace had requests and none of them
    could be served (each skipped as too long for the context, the KV cache or the budget)."""
    req = summary["requests"]
    if not req["in_trace"] or req["simulated"]:
        return 0
    from sim.cli.errors import FAILED, error
    reasons = ", ".join(f"{k}: {v}" for k, v in req["skipped_by_reason"].items())
    error(f"none of the {req['in_trace']} requests can be served by this deployment ({reasons}); see the reasons "
          f"above")
    return FAILED


# ---- subcommands --------------------------------------------------------------------------------

class _ParagraphFill:
    """Fills each paragraph of a description or epilog to the terminal; indented lines (examples) stay as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out: list[str] = []
        para: list[str] = []

        def flush() -> None:
            if para:
                out.append(textwrap.fill(" ".join(para), width, initial_indent=indent, subsequent_indent=indent))
                para.clear()

        for line in text.splitlines():
            if line.strip() and not line[0].isspace():
                para.append(line.strip())
                continue
            flush()
            out.append(indent + line if line.strip() else "")
        flush()
        return "\n".join(out)


class HelpFormatter(_ParagraphFill, argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default appended to its help; paragraphs filled, examples kept.

    Not for on/off switches (a store_false's "default: True" reads as the opposite), nor for a None default,
    nor for a help text that already says its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.nargs == 0 or action.default is None or "default" in text:  # "None" says nothing
            return text
        return super()._get_help_string(action)


class PlainHelpFormatter(_ParagraphFill, argparse.HelpFormatter):
    """For commands whose help texts state their defaults themselves."""


def add_command(subparsers: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int],
                help: str, epilog: str | None = None, show_defaults: bool = True) -> argparse.ArgumentParser:
    """Register subcommand ``name`` that runs ``func``; its ``--help`` description is ``func``'s docstring.

    ``show_defaults`` appends each flag's default to its help (off where the help texts state them).
    """
    p = subparsers.add_parser(name, help=help, description=inspect.cleandoc(func.__doc__ or help), epilog=epilog,
                              formatter_class=HelpFormatter if show_defaults else PlainHelpFormatter)
    p.set_defaults(func=func)
    return p


def add_kv_link_arguments(g: argparse._ArgumentGroup) -> None:
    """The KV link between a prefill and a decode pool (simulate --disaggregated, plan --disaggregated)."""
    g.add_argument("--kv-link", choices=("network", "nvlink"), default=None,
                   help="the KV cache's path: network (the GPUs' NICs, across nodes) or nvlink (within one node) "
                        "(default: network)")
    g.add_argument("--kv-link-bandwidth", type=float_range(0.0, 1e6, low_open=True), default=None, metavar="GBPS",
                   help="link bandwidth in GB/s (1e9 bytes/s) per GPU (default: the prefill GPU's NIC or NVLink "
                        "rate)")
    g.add_argument("--kv-link-latency-us", type=float_range(0.0, 1e9), default=None, metavar="US",
                   help="fixed latency per transfer, microseconds (default: 10)")
    g.add_argument("--kv-transfer-overlap", action="store_true",
                   help="transfer the KV cache layer by layer during the prefill (only the last layer's share after it)")


def kv_link_section(args: argparse.Namespace) -> dict[str, Any]:
    """The deployment file's ``link`` keys the KV link flags give (only those given)."""
    link = {"kind": args.kv_link, "bandwidth_GBps": args.kv_link_bandwidth, "latency_us": args.kv_link_latency_us,
            "overlap": args.kv_transfer_overlap or None}
    return {k: v for k, v in link.items() if v is not None}

