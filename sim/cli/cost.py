"""The ``servesim cost`` command: the price of one iteration, op by op, with the data behind each op's price."""

from __future__ import annotations

import argparse
import json
from typing import Any

from sim.cli.args import (
    add_command,
    add_cost_model_arguments,
    add_moe_and_dtype_arguments,
    cost_model_from_args,
    ep_of,
)
from sim.cli.values import MAX_BATCH, MAX_TOKENS, int_range, parallel_degree, token_count
from sim.ops import FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, MOE_OPS, STAGE_OPS

_EXAMPLES = """examples:
  servesim cost --model llama-2-7b --gpu h100-sxm --cost-model kernels --prefill 512
  servesim cost --model llama-2-7b --gpu h100-sxm --tp 2 --cost-model kernels --prefill 512 \\
      --prefill-context 1024 --decodes 32 --decode-context 2048 --json"""


def add_cost_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``cost`` on the ``servesim`` subcommands; returns its parser."""
    p = add_command(subparsers, "cost", cmd_cost, "price one iteration op by op (no trace needed)", epilog=_EXAMPLES)
    d = p.add_argument_group("deployment")
    d.add_argument("--model", default="llama-2-7b", help="model from the catalogue or a Hugging Face config.json")
    d.add_argument("--gpu", default=None, help="GPU from the catalogue (default: a100-80gb; with --profile, the "
                                               "profile's)" + "%(default).0s")
    d.add_argument("--tp", type=parallel_degree, default=1, help="tensor-parallel degree")
    d.add_argument("--pp", type=parallel_degree, default=1, help="pipeline stages (each stage is priced)")
    add_moe_and_dtype_arguments(d)
    d.add_argument("--profile", default=None, metavar="DIR", help="price from this calibration profile%(default).0s")
    add_cost_model_arguments(p)
    b = p.add_argument_group("the iteration's batch")
    b.add_argument("--prefill", type=token_count, action="append", default=[], metavar="TOKENS",
                   help="a prefill chunk of TOKENS new tokens; repeat for several chunks")
    b.add_argument("--prefill-context", type=int_range(0, MAX_TOKENS), action="append", default=[], metavar="TOKENS",
                   help="tokens already cached before each chunk, in the order of --prefill (one value: every "
                        "chunk) (default: 0)")
    b.add_argument("--decodes", type=int_range(0, MAX_BATCH), default=0, metavar="B",
                   help="decode requests in the batch")
    b.add_argument("--decode-context", type=token_count, default=1024, metavar="TOKENS",
                   help="keys each decode reads, its new one included")
    p.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    return p


def iteration_batch(prefills: list[int], contexts: list[int], decodes: int, decode_context: int) -> Any:
    """The Batch of the flags: chunks over their cached contexts, then decodes with ``decode_context`` keys each."""
    from sim.batch import synthetic_batch

    if len(contexts) not in (0, 1, len(prefills)):
        raise ValueError(f"--prefill-context: give one value or one per --prefill ({len(prefills)}), "
                         f"got {len(contexts)}")
    if any(c < 0 for c in contexts) or decodes < 0:
        raise ValueError("--prefill-context and --decodes must be >= 0")
    if not prefills and not decodes:
        raise ValueError("give --prefill TOKENS and/or --decodes B: the batch to price")
    ctx = contexts * len(prefills) if len(contexts) == 1 else contexts or [0] * len(prefills)
    return synthetic_batch([decode_context] * decodes, list(zip(prefills, ctx)), prefix="cost")


def price(cost: Any, batch: Any) -> dict[str, Any]:
    """Per-stage op times with their sources, host time and the iteration's total."""
    ops = LAYER_OPS + MOE_OPS + FIRST_STAGE_OPS + LAST_STAGE_OPS + STAGE_OPS
    stages = []
    for s in range(cost.num_stages):
        times = cost.breakdown(batch, s)
        sources = cost.breakdown_sources(batch, s) if hasattr(cost, "breakdown_sources") else {}
        stages.append({"stage": s, "device_s": cost.stage_cost(batch, s).time,
                       "ops": {op: {"seconds": times[op], "source": sources.get(op, cost.name)}
                               for op in list(times) if op in ops or times[op]}})
        if "host_overhead" in sources:
            stages[-1]["ops"]["host_overhead"] = {"seconds": 0.0, "source": sources["host_overhead"]}
    host = cost.host_time(batch)
    return {"stages": stages, "host_s": host, "iteration_s": host + sum(st["device_s"] for st in stages)}


def cmd_cost(args: argparse.Namespace) -> int:
    """Price one iteration on a deployment, op by op, and name the measured data (or the roofline) behind each
    op's price: a prefill chunk of N tokens over C cached ones, several chunks, decodes, or a mix. Layer ops are
    summed over the stage's layers.
    """
    from sim.cost.roofline import RooflineCostModel
    from sim.serving.simulator import SimConfig

    batch = iteration_batch(args.prefill, args.prefill_context, args.decodes, args.decode_context)
    config = SimConfig(model=args.model, gpu=args.gpu or "a100-80gb", tp=args.tp, pp=args.pp,
                       ep=ep_of(args), dtype=args.dtype,
                       kv_cache_dtype=args.kv_cache_dtype, router_skew=args.router_skew)
    config, cost = cost_model_from_args(args, config)
    model = config.model_spec()
    cost = cost or RooflineCostModel(model, config.gpu, **config.roofline_kwargs(model))
    res = price(cost, batch)
    d = cost.describe()
    out = {"model": d["model"], "gpu": d["gpu"], "tp": config.tp, "pp": config.pp, "cost_model": cost.name,
           "batch": {"prefill_chunks": [[it.num_new_tokens, it.num_cached_tokens] for it in batch.prefill_items],
                     "decodes": batch.num_decode_tokens, "decode_context": args.decode_context if args.decodes else 0},
           **res, "cost_model_details": d}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{d['model']} on {d['gpu']} TP{config.tp} PP{config.pp}, cost model {cost.name}: "
          f"{len(batch.prefill_items)} prefill chunk(s) {out['batch']['prefill_chunks']}, {batch.num_decode_tokens} "
          f"decode(s) at {out['batch']['decode_context']} keys")
    for st in res["stages"]:
        total = st["device_s"] or 1.0
        print(f"\nstage {st['stage']}: {st['device_s'] * 1e3:.3f} ms device")
        print(f"  {'op':<18}{'time (us)':>11}{'share':>7}  source")
        for op, v in st["ops"].items():
            if v["seconds"] > 0:
                print(f"  {op:<18}{v['seconds'] * 1e6:>11.1f}{v['seconds'] / total:>7.1%}  {v['source']}")
    host_src = res["stages"][0]["ops"].get("host_overhead", {}).get("source", "roofline")
    print(f"\nhost {res['host_s'] * 1e3:.3f} ms ({host_src}); iteration {res['iteration_s'] * 1e3:.3f} ms")
    return 0

