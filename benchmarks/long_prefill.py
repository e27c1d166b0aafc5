"""Long prefills (4K-32K tokens): both cost models' prices against public measurements, before and after the fix.

Measurements (public, none held out): AIConfigurator's context-attention tables (aiconfigurator-core, batch 1,
bf16) for A100-SXM and H100-SXM from two frameworks: vLLM's (the tables the roofline's attention efficiency is
fitted to, sim/cost/attention_fit.py) and SGLang's (another build of FlashAttention, not fitted: an independent
check); they end at 16,384 tokens, so 32K has no measurement. Vidur's A100 op tables (../shared/measured/vidur)
end at 4,096 tokens and hold no attention: they check the rest of a layer at 4K.

"Before" is the committed HEAD's code, exported to a folder (``git archive HEAD | tar -x -C DIR``) and run there;
"after" is this working tree:

    git archive HEAD | tar -x -C /tmp/servesim-head && python benchmarks/long_prefill.py --before /tmp/servesim-head
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the simulator's package: this checkout's, or (for the "before" run) the one of the folder --before names
sys.path.insert(0, os.environ.get("LONG_PREFILL_SIM") or str(ROOT))

LENGTHS = (4096, 8192, 16384, 32768)
GPUS = {"a100-80gb": "a100_sxm", "h100-sxm": "h100_sxm"}
# (label, model, tp): tensor-parallel shards whose head counts the tables hold, and Yi-34B TP2 (28 q / 4 kv heads
# on a GPU: no table rows, the kernels model falls back to the roofline there)
SHAPES = (("Llama-3-8B / Mistral-7B TP1", "llama-3-8b", 1), ("Llama-2-7B TP1", "llama-2-7b", 1),
          ("Llama-2-70B TP4", "llama-2-70b", 4), ("Yi-34B TP2", "yi-34b", 2))
VIDUR = ROOT.parent / "shared/measured/vidur/a100"
VIDUR_OPS = ("input_layernorm", "attn_pre_proj", "attn_rope", "attn_post_proj", "post_attention_layernorm",
             "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
OUR_OPS = ("input_norm", "qkv_proj", "rotary", "o_proj", "post_attn_norm", "gate_up_proj", "act", "down_proj",
           "residual_add", "residual_add_mlp")  # Vidur's one "add" row is timed once and counts twice a layer


READING = [
    "## Reading", "",
    ("Before the fix the roofline priced prefill attention at a flat 70% of the dense peak; the measured "
    "FlashAttention kernels reach 56-61% of it on the A100 at 8-16K tokens and much less at 1-4K (each query "
    "row's fixed work: its Q tile, the online-softmax rescale, the output write, the causal diagonal tile), so "
    "long-prompt attention was under-priced 1.24-1.50x on the A100. The kernels model already read the measured "
    "table where it holds the shard's head counts; where it does not (Yi-34B TP2: 28 query / 4 KV heads a GPU) "
    "it fell back to the roofline and inherited the error; it now inherits the fix."),
    "",
    ("A whole long prefill moves less than its attention: on the A100 a 4K-32K prompt costs 2-8% more after the "
    "fix, on the H100 0-3% (attention's share of a prefill's FLOPs grows with the length: about a quarter at 16K "
    "for Llama-3-8B; the GEMMs are unchanged, and at 4K tokens Vidur's measured rest-of-layer is 7-20% above "
    "both models). The issue reports, from held-out A100-PCIe measurements of Yi-34B TP2, 8K-16K prompts taking "
    "1.35-1.47x the prediction: the public tables here explain only a few percent of that. What else could "
    "differ (the PCIe board's 300 W limit under sustained compute, the attention kernel of Sarathi-Serve's 2024 "
    "build) is in no public measurement available here; nothing was fitted to the held-out data."),
]


def predictions() -> dict:
    """Per GPU, shape and length: one layer's prefill attention and one whole prefill (seconds), both cost models,
    with whatever ``sim`` this process imports (HEAD's or the working tree's)."""
    from sim.batch import synthetic_batch
    from sim.cost.kernels.model import KernelCostModel
    from sim.cost.roofline import RooflineCostModel
    out: dict = {}
    for gpu in GPUS:
        for label, model, tp in SHAPES:
            rl = RooflineCostModel(model, gpu, tp=tp)
            kc = KernelCostModel(model, gpu, tp=tp)
            for L in LENGTHS:
                b = synthetic_batch([], [(L, 0)])
                out[f"{gpu}|{label}|{L}"] = {
                    "attn_roofline": rl.attn_prefill_cost(L, 0, L * (L + 1) // 2)[0],
                    "attn_kernels": kc.attn_prefill(b)[0],
                    "prefill_roofline": rl.stage_cost(b, 0).time, "prefill_kernels": kc.stage_cost(b, 0).time}
    return out


def measured_attention() -> dict:
    """(gpu, label, L, framework) -> seconds of one layer's prefill attention in AIConfigurator's tables."""
    from sim.catalog.models import get_model
    from sim.cost.kernels import database as db
    got = {}
    for gpu, system in GPUS.items():
        for fw in ("vllm", "sglang"):
            ref = db.resolve(system, fw, None)["context_attention"]
            t = db.read_table(ref.path)
            t = t[(t["batch_size"] == 1) & (t["kv_cache_dtype"] == "bfloat16")]
            if "window_size" in t.columns:
                t = t[t["window_size"] == 0]
            for label, model, tp in SHAPES:
                m = get_model(model)
                qh, kvh, scale = m.q_heads_per_gpu(tp), m.kv_heads_per_gpu(tp), 1.0
                rows = t[(t["num_heads"] == qh) & (t["num_key_value_heads"] == kvh) & (t["head_dim"] == m.head_dim)]
                if rows.empty:  # Yi-34B TP2: 28/4 heads; the 32/4 rows scaled by the query heads
                    rows = t[(t["num_heads"] == 32) & (t["num_key_value_heads"] == kvh) & (t["head_dim"] == m.head_dim)]
                    scale = qh / 32
                for L in LENGTHS:
                    r = rows[rows["isl"] == L]
                    if len(r):
                        got[(gpu, label, L, fw)] = (float(r["latency"].min()) * 1e-3 * scale, scale != 1.0)
    return got


def vidur_rest_of_layer() -> list[str]:
    """Vidur's measured non-attention ops of one layer at 4,096 tokens against both cost models (A100)."""
    import pandas as pd

    from sim.cost.kernels.model import KernelCostModel
    from sim.cost.roofline import RooflineCostModel
    lines = ["| model (A100) | tokens | Vidur measured (ms) | roofline (ms) | kernels (ms) |", "|---|---|---|---|---|"]
    for name, model, tp in (("meta-llama/Llama-2-7b-hf", "llama-2-7b", 1),
                            ("codellama/CodeLlama-34b-Instruct-hf", None, 2)):
        path = VIDUR / f"{name}.mlp.csv"
        if not path.exists():
            continue
        d = pd.read_csv(path)
        row = d[(d["num_tokens"] == 4096) & (d["num_tensor_parallel_workers"] == tp)]
        if row.empty:
            continue
        r = row.iloc[0]
        meas = sum(float(r[f"time_stats.{op}.median"]) for op in VIDUR_OPS) + float(r["time_stats.add.median"])
        if model is None:  # CodeLlama-34B's shape from Vidur's own columns (48 layers are not needed: one layer)
            from sim.catalog.spec import ModelSpec
            model = ModelSpec("codellama-34b", 48, int(r["n_embd"]), int(r["n_head"]), int(r["n_kv_head"]),
                              int(r["n_expanded_embd"]), int(r["vocab_size"]), 16384, source="Vidur's table columns")
        rl, kc = RooflineCostModel(model, "a100-80gb", tp=tp), KernelCostModel(model, "a100-80gb", tp=tp)
        ours_rl = sum(rl.token_op_costs(4096, 1)[op][0] for op in OUR_OPS) * 1e3
        ours_k = sum(kc.token_op_times(4096, 1)[op][0] for op in OUR_OPS) * 1e3
        lines.append(f"| {name} TP{tp} | 4096 | {meas:.3f} | {ours_rl:.3f} | {ours_k:.3f} |")
    return lines


def run_before(folder: str) -> dict:
    """This script's predictions() run with the ``sim`` package of ``folder`` (HEAD's code)."""
    env = {**os.environ, "LONG_PREFILL_SIM": os.path.abspath(folder)}
    res = subprocess.run([sys.executable, os.path.abspath(__file__), "--emit-json"], cwd=folder, env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(res.stdout)


def head() -> str:
    """The checkout's HEAD commit (short), which the "before" folder was exported from."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or "HEAD"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.3f}"


def summary(before: dict, after: dict, meas: dict) -> list[str]:
    """Per GPU and framework, the range of measured / predicted attention at 4K-16K, before and after."""
    out = []
    for gpu in GPUS:
        for fw in ("vllm", "sglang"):
            for name, preds in (("before", before), ("after", after)):
                r = [m / preds[f"{g}|{lab}|{L}"]["attn_roofline"] for (g, lab, L, f), (m, _) in meas.items()
                     if g == gpu and f == fw and f"{g}|{lab}|{L}" in preds]
                if r:
                    out.append(f"- {gpu}, {fw} table{' (fitted to)' if fw == 'vllm' else ' (independent)'}, "
                               f"roofline {name}: measured / predicted {min(r):.2f}-{max(r):.2f}")
    return out


def report(before: dict, after: dict) -> list[str]:
    meas = measured_attention()
    lines = ["## Summary: roofline prefill attention at 4K-16K tokens", "", *summary(before, after, meas), "",
             "## One layer's prefill attention, batch 1 (ms); ratio = measured / predicted", "",
             ("| GPU | shape | tokens | measured vLLM | measured SGLang | roofline before | roofline after | "
             "kernels before | kernels after | vLLM / roofline before | vLLM / roofline after | "
             "SGLang / roofline after | vLLM / kernels after |"), "|---" * 13 + "|"]
    for key, a in after.items():
        gpu, label, L = key.split("|")
        b = before.get(key, {})
        mv, scaled = meas.get((gpu, label, int(L), "vllm"), (None, False))
        msg = meas.get((gpu, label, int(L), "sglang"), (None, False))[0]
        r = lambda m, p: "-" if m is None or not p else f"{m / p:.2f}"
        star = "*" if scaled else ""
        lines.append(f"| {gpu} | {label} | {L} | {ms(mv)}{star} | {ms(msg)}{star} | {ms(b.get('attn_roofline'))} | "
                     f"{ms(a['attn_roofline'])} | {ms(b.get('attn_kernels'))} | {ms(a['attn_kernels'])} | "
                     f"{r(mv, b.get('attn_roofline'))} | {r(mv, a['attn_roofline'])} | {r(msg, a['attn_roofline'])} | "
                     f"{r(mv, a['attn_kernels'])} |")
    lines += ["", "\\* no table rows for 28 query / 4 KV heads: the 32/4 rows scaled by 28/32.", "",
              "## One whole prefill of one prompt on the replica (ms, every layer, simulated)", "",
              ("The kernels model is itself a composite of measured kernels (GEMMs and attention from AIConfigurator's "
              "tables, elementwise ops from the roofline): no end-to-end measurement of a prefill is available here."),
              "", ("| GPU | shape | tokens | roofline before | roofline after | after / before | kernels before | "
              "kernels after | after / before |"), "|---" * 9 + "|"]
    for key, a in after.items():
        gpu, label, L = key.split("|")
        b = before.get(key, {})
        rb, kb = b.get("prefill_roofline"), b.get("prefill_kernels")
        lines.append(f"| {gpu} | {label} | {L} | {ms(rb)} | {ms(a['prefill_roofline'])} | "
                     f"{a['prefill_roofline'] / rb:.3f} | {ms(kb)} | {ms(a['prefill_kernels'])} | "
                     f"{a['prefill_kernels'] / kb:.3f} |" if rb and kb else f"| {gpu} | {label} | {L} | - |||||||")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", help="a folder holding HEAD's code (git archive HEAD | tar -x -C DIR)")
    ap.add_argument("--emit-json", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="results/long_prefill.md")
    args = ap.parse_args()
    if args.emit_json:
        print(json.dumps(predictions()))
        return
    after = predictions()
    before = run_before(args.before) if args.before else {}
    from sim.cost.attention_fit import FITS
    lines = ["# Long prefills: predicted against public measurements, before and after the attention fix", "",
             "Command: `python " + " ".join(["benchmarks/long_prefill.py", *sys.argv[1:]]) + "`"
             + (f" (the folder: `git archive {head()} | tar -x -C {args.before}`)" if args.before else ""), "",
             ("Predictions are servesim's (simulated); measurements are AIConfigurator's published kernel tables "
             "(aiconfigurator-core 0.12.0) and Vidur's op tables. The fix: prefill attention at a compute "
             "efficiency rising with the keys per query (sim/cost/attention_fit.py), fitted to the vLLM tables:"), ""]
    lines += [f"- {k}: peak efficiency {f.peak_efficiency}, half_keys {f.half_keys:g} ({f.source})"
              for k, f in FITS.items()]
    lines += ["", *report(before, after), "", "## The rest of a layer at 4,096 tokens (Vidur's longest, A100)", "",
              *vidur_rest_of_layer(), "", *READING]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
