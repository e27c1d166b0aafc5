"""Two independent measurements, op by op: the kernels and roofline cost models against Vidur's A100 op tables.

Vidur's profiler timed each op of Llama-family layers on an A100 (``../shared/measured/vidur/a100``);
AIConfigurator measured GEMM kernels on an A100 SXM (the ``kernels`` extra). Neither was fitted to
the other. For each model, TP degree and token count in Vidur's table (1 to 4096 tokens) this
prints predicted / measured per op, the median absolute error over the points and the worst one.
The roofline is priced with its local work only (``OpRoofline``: no TP communication folded into
the embedding), as Vidur times one GPU's shard, twice: with the parameters fitted to published
measurements (``sim/catalog/gpus.toml``: GEMMs to AIConfigurator's A100 table, elementwise ops to
Vidur's tables of *other* models) and with the datasheet defaults (``fitted=False``).

    python benchmarks/kernels_vs_vidur.py --out results/kernels_vs_vidur.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from sim.cost.op_roofline import OpRoofline
from sim.cost.roofline import RooflineCostModel

VIDUR = Path(__file__).resolve().parents[1].parent / "shared" / "measured" / "vidur" / "a100" / "meta-llama"
MODELS = {"llama-2-7b": "Llama-2-7b-hf.mlp.csv", "llama-3-8b": "Meta-Llama-3-8B.mlp.csv",
          "llama-2-70b": "Llama-2-70b-hf.mlp.csv"}
#: Vidur op name -> servesim op
OPS = {"attn_pre_proj": "qkv_proj", "attn_post_proj": "o_proj", "mlp_up_proj": "gate_up_proj",
       "mlp_down_proj": "down_proj", "input_layernorm": "input_norm", "post_attention_layernorm": "post_attn_norm",
       "attn_rope": "rotary", "mlp_act": "act", "add": "residual_add", "emb": "embedding"}
GEMMS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
GPU = "a100-80gb"


def rows(model: str) -> pd.DataFrame:
    """Vidur's medians in seconds, one row per (tokens, tp), columns named by our ops."""
    raw = pd.read_csv(VIDUR / MODELS[model])
    out = raw[["num_tokens", "num_tensor_parallel_workers"]].rename(
        columns={"num_tokens": "tokens", "num_tensor_parallel_workers": "tp"})
    for v, ours in OPS.items():
        out[ours] = raw[f"time_stats.{v}.median"] * 1e-3
    return out


def compare(model: str, tp: int, table: pd.DataFrame, kernels: bool) -> list[dict]:
    """One row per op: median predicted/measured, median and worst absolute error over the token points."""
    sel = table[(table.tp == tp) & (table.tokens <= 4096)].sort_values("tokens")
    ref = OpRoofline(RooflineCostModel(model, GPU, tp=tp))
    datasheet = OpRoofline(RooflineCostModel(model, GPU, tp=tp, fitted=False))
    km = None
    if kernels:
        from sim.cost.kernels.model import KernelCostModel
        km = KernelCostModel(model, GPU, tp=tp)
    out = []
    for op in OPS.values():
        for name, price in (("roofline (fitted)", lambda n: ref.token_ops(n, n)[op][0]),
                            ("roofline (datasheet)", lambda n: datasheet.token_ops(n, n)[op][0]),
                            ("kernels", (lambda n: km.token_op_times(n, n)[op][0]) if km and op in GEMMS else None)):
            if price is None:
                continue
            ratio = np.array([price(int(n)) / t for n, t in zip(sel.tokens, sel[op])])
            err = np.abs(ratio - 1)
            worst = int(np.argmax(err))
            out.append({"model": model, "tp": tp, "op": op, "cost_model": name, "points": len(ratio),
                        "median_ratio": float(np.median(ratio)), "median_abs_err": float(np.median(err)),
                        "worst_abs_err": float(err[worst]), "worst_tokens": int(sel.tokens.iloc[worst])})
    return out


def markdown(df: pd.DataFrame) -> str:
    lines = ["| model | TP | op | cost model | points | median pred/meas | median abs err | worst (tokens) |",
             "|---|---:|---|---|---:|---:|---:|---|"]
    for r in df.itertuples(index=False):
        lines.append(f"| {r.model} | {r.tp} | {r.op} | {r.cost_model} | {r.points} | {r.median_ratio:.2f} | "
                     f"{r.median_abs_err:.1%} | {r.worst_abs_err:.1%} ({r.worst_tokens}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None, metavar="FILE.md", help="also write the tables as Markdown")
    args = ap.parse_args(argv)
    if not VIDUR.is_dir():
        print(f"{VIDUR} not present: nothing to compare", file=sys.stderr)
        return 1
    try:
        from sim.cost.kernels.database import data_dir
        data_dir()
        kernels = True
    except Exception as e:  # noqa: BLE001 - the extra is optional: compare the roofline alone
        print(f"kernels model unavailable ({e}); comparing the roofline only", file=sys.stderr)
        kernels = False
    results = []
    for model in MODELS:
        table = rows(model)
        for tp in (1, 2, 4):
            if (table.tp == tp).any():
                results += compare(model, tp, table, kernels)
    df = pd.DataFrame(results)
    summary = (df.groupby(["cost_model", "op"])
               .agg(median_abs_err=("median_abs_err", "median"), worst_abs_err=("worst_abs_err", "max"),
                    median_ratio=("median_ratio", "median"))
               .reset_index())
    text = ["## Per op, over models and TP degrees (median of the per-case medians; worst of all points)", "",
            "| cost model | op | median pred/meas | median abs err | worst abs err |", "|---|---|---:|---:|---:|"]
    text += [f"| {r.cost_model} | {r.op} | {r.median_ratio:.2f} | {r.median_abs_err:.1%} | {r.worst_abs_err:.1%} |"
             for r in summary.itertuples(index=False)]
    text += ["", "## Every case", "", markdown(df)]
    out = "\n".join(text)
    print(out)
    if args.out:
        Path(args.out).write_text(out + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
