"""``servesim models`` and ``servesim gpus``: the catalogues, listed."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from sim.cli.args import add_command


def _params(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def _variant(m) -> str:
    """What departs from a dense bf16 Llama layer: experts, MLA, the checkpoint dtype."""
    parts = []
    if m.moe:
        parts.append(f"MoE {m.moe.num_experts}x top-{m.moe.top_k} (expert ffn {m.moe.expert_intermediate_size}"
                     + (f", shared {m.moe.shared_intermediate_size}" if m.moe.shared_intermediate_size else "")
                     + (f", first {m.moe.first_dense_layers} dense" if m.moe.first_dense_layers else "") + ")")
    if m.mla:
        parts.append(f"MLA latent {m.mla.latent_dim}")
    if m.dtype != "bf16":
        parts.append(m.dtype)
    return ", ".join(parts)


def _print_table(columns: list[tuple[str, str]], rows: list[tuple]) -> None:
    """Rows under their headers; a column is (header, format spec of its values, e.g. '<14' or '>8.0f')."""
    def width(spec: str) -> str:
        return spec.split(".")[0].rstrip("fd")

    print("".join(f"{h:{width(spec)}}" for h, spec in columns))
    for row in rows:
        print("".join(f"{v:{spec}}" for v, (_, spec) in zip(row, columns)))


def _print_json(entries: dict[str, Any], extra: tuple[str, ...] = ()) -> None:
    """Each catalogue entry's fields (dataclass) plus the derived ``extra`` properties, as one JSON object."""
    print(json.dumps({name: {**dataclasses.asdict(e), **{k: getattr(e, k) for k in extra}}
                      for name, e in entries.items()}, indent=2))


def cmd_models(args: argparse.Namespace) -> int:
    """List the model catalogue: shapes and parameter counts (`--json` for every field)."""
    from sim.catalog.models import MODELS
    if args.json:
        _print_json(MODELS, ("num_params", "active_params"))
        return 0
    cols = [("name", "<16"), ("layers", ">7"), ("hidden", ">8"), ("heads", ">6"), ("kv", ">4"), ("ffn", ">7"),
            ("vocab", ">8"), ("ctx", ">8"), ("params", ">9"), ("active", ">9"), ("  variant", "")]
    _print_table(cols, [(m.name, m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads, m.intermediate_size,
                         m.vocab_size, m.max_context, _params(m.num_params), _params(m.active_params),
                         "  " + _variant(m)) for m in MODELS.values()])
    return 0


def cmd_gpus(args: argparse.Namespace) -> int:
    """List the GPU catalogue with datasheet sources and default hourly prices (`--json` for every field)."""
    from sim.catalog.hardware import GPUS
    if args.json:
        _print_json(GPUS)
        return 0
    cols = [("name", "<11"), ("bf16 TFLOP/s", ">13.0f"), ("HBM GB/s", ">10.0f"), ("mem GiB", ">8.0f"),
            ("link GB/s", ">10.0f"), ("$/h", ">6.2f"), ("  source", "")]
    _print_table(cols, [(g.name, g.bf16_flops / 1e12, g.mem_bandwidth / 1e9, g.mem_bytes / 2**30,
                         g.interconnect_bw / 1e9, g.hourly_price_usd, "  " + g.source) for g in GPUS.values()])
    return 0


def add_catalog_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``models`` and ``gpus`` on the ``servesim`` subcommands."""
    for name, func, text in (("models", cmd_models, "list the model catalogue"),
                             ("gpus", cmd_gpus, "list the GPU catalogue with datasheet sources")):
        p = add_command(subparsers, name, func, text)
        p.add_argument("--json", action="store_true", help="every field of every entry as JSON")
