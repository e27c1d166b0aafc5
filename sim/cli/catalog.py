"""``servesim models`` and ``servesim gpus``: the catalogues, listed."""

from __future__ import annotations

import argparse


def _params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def cmd_models(args: argparse.Namespace) -> int:
    from sim.catalog.models import MODELS
    print(f"{'name':<14}{'layers':>7}{'hidden':>8}{'heads':>6}{'kv':>4}{'ffn':>7}{'vocab':>8}{'ctx':>7}{'params':>9}")
    for m in MODELS.values():
        print(f"{m.name:<14}{m.num_layers:>7}{m.hidden_size:>8}{m.num_heads:>6}{m.num_kv_heads:>4}"
              f"{m.intermediate_size:>7}{m.vocab_size:>8}{m.max_context:>7}{_params(m.num_params):>9}")
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    from sim.catalog.hardware import GPUS
    print(f"{'name':<11}{'bf16 TFLOP/s':>13}{'HBM GB/s':>10}{'mem GiB':>8}{'link GB/s':>10}{'$/h':>6}  source")
    for g in GPUS.values():
        print(f"{g.name:<11}{g.bf16_flops / 1e12:>13.0f}{g.mem_bandwidth / 1e9:>10.0f}{g.mem_bytes / 2**30:>8.0f}"
              f"{g.interconnect_bw / 1e9:>10.0f}{g.hourly_price_usd:>6.2f}  {g.source}")
    return 0


def add_catalog_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``models`` and ``gpus`` on the ``servesim`` subcommands."""
    subparsers.add_parser("models", help="list the model catalogue").set_defaults(func=cmd_models)
    subparsers.add_parser("gpus", help="list the GPU catalogue with datasheet sources").set_defaults(func=cmd_gpus)
