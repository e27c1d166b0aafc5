"""The example trace simulated on three cost models of Llama-2-7B on an A100-80GB, side by side (all simulated).

1. a profile imported from Vidur's measured A100 op tables (``servesim calibrate --import-vidur``; the
   ops Vidur lacks from AIConfigurator's kernel tables, or the roofline without the kernels extra);
2. the kernel-database model (AIConfigurator's measured A100 GEMM, attention and all-reduce kernels);
3. the roofline with its parameters fitted to those published measurements (the default), and
4. the roofline from datasheet rates alone (``fitted=False``).

    python benchmarks/cost_models_example.py [--scheduler sarathi --token-budget 512]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "traces" / "example_sharegpt_poisson.jsonl"
VIDUR = ROOT.parent / "shared" / "measured" / "vidur" / "a100" / "meta-llama" / "Llama-2-7b-hf.mlp.csv"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scheduler", default="sarathi")
    ap.add_argument("--token-budget", type=int, default=512)
    args = ap.parse_args(argv)

    from calibration.vidur_import import import_vidur
    from sim.cost.profiled import ProfiledCostModel
    from sim.serving import SimConfig, simulate
    from sim.workload.trace import read_trace

    trace = read_trace(TRACE).requests
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=args.scheduler, token_budget=args.token_budget)
    models = []
    if VIDUR.is_file():
        with tempfile.TemporaryDirectory() as tmp:
            prof = import_vidur(VIDUR, cfg.model, cfg.gpu, Path(tmp) / "vidur")
            models.append(("vidur profile", ProfiledCostModel(prof, cfg.model, tp=1)))
    else:
        print(f"{VIDUR} not present: no Vidur profile", file=sys.stderr)
    try:
        from sim.cost.kernels.model import KernelCostModel
        models.append(("kernels", KernelCostModel(cfg.model, cfg.gpu)))
    except (ImportError, ValueError) as e:
        print(f"no kernels model ({e})", file=sys.stderr)
    from sim.cost.roofline import RooflineCostModel
    models.append(("roofline (fitted)", None))
    models.append(("roofline (datasheet)", RooflineCostModel(cfg.model, cfg.gpu, fitted=False)))

    print(f"{TRACE.name}: {len(trace)} requests, {cfg.model} on {cfg.gpu}, {cfg.scheduler} budget "
          f"{cfg.token_budget} (simulated)\n")
    print("| cost model | TTFT p50 | TTFT p99 | TBT p50 | TBT p99 | E2E p50 | iterations | data behind the prices |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for label, cost in models:
        s = simulate(trace, cfg, cost_model=cost).summary
        lat = s["latency_s"]
        d = s["cost_model"]
        data = {"vidur profile": lambda: "Vidur A100 op tables (projections, norms, rotary, act, add, emb); "
                                         f"attention, lm head: {d['op_sources']['attn_prefill']}; sampling, host: "
                                         "roofline",
                "kernels": lambda: f"AIConfigurator {d['system']} {d['framework']} {d['version']} GEMM, attention, "
                                   "all-reduce tables; other ops: roofline",
                "roofline (fitted)": lambda: "A100-80GB datasheet rates with efficiencies fitted to AIConfigurator's "
                                             "GEMMs and Vidur's elementwise ops of other models",
                "roofline (datasheet)": lambda: "A100-80GB datasheet rates, uniform default efficiencies"}[label]()
        print(f"| {label} | {lat['ttft']['p50'] * 1e3:.0f} ms | {lat['ttft']['p99'] * 1e3:.0f} ms | "
              f"{lat['tbt']['p50'] * 1e3:.1f} ms | {lat['tbt']['p99'] * 1e3:.1f} ms | {lat['e2e']['p50']:.2f} s | "
              f"{s['batches']['iterations']} | {data} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
