"""Tail fidelity on the CPU: the validation matrix of issue 14, with its targets, met or not.

Two CPU models (``tiny``, and ``small``: about 30M parameters, where compute rather than Python
dominates an iteration) x three schedulers (Orca, vLLM, Sarathi-Serve) x two loads (0.5 and 0.9 of the
simulator's predicted capacity) x three engine repeats (the median repeat reported, the spread kept),
each against the committed calibration profile of the same machine. Targets on a quiet machine: TTFT
and TBT P50/P99 within 10% of measured, median batch error per kind within 5%, throughput within 3%.
Every figure is printed; a miss is marked. Writes ``results/validate_cpu.md`` (``--out``) and the
validation folders under ``--work``.

    python benchmarks/validate_cpu.py [--requests 200] [--repeats 3] [--out results/validate_cpu.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: (model, profile, prompt lengths, output lengths): the small model's are shorter so that its capacity
#: (about 13 req/s with Orca) lets 200 requests at load 0.5 arrive within half a minute
MODELS = (("tiny", ROOT / "calibration" / "profiles" / "tiny-cpu", "uniform:16:400", "uniform:8:64"),
          ("small", ROOT / "calibration" / "profiles" / "small-cpu", "uniform:16:200", "uniform:8:32"))
TAILS = (("ttft_p50", "TTFT P50", 0.10), ("ttft_p99", "TTFT P99", 0.10), ("tbt_p50", "TBT P50", 0.10),
         ("tbt_p99", "TBT P99", 0.10), ("throughput", "throughput", 0.03))
KINDS = (("prefill", 0.05), ("decode", 0.05), ("mixed", 0.05))


def _cell(err: float | None, target: float) -> str:
    if err is None:
        return "-"
    return f"{err:+.1%}" + ("" if abs(err) <= target else " (miss)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--loads", default="0.5,0.9")
    ap.add_argument("--models", default="tiny,small")
    ap.add_argument("--work", default="runs/validate_cpu")
    ap.add_argument("--out", default=None, metavar="FILE.md")
    args = ap.parse_args(argv)

    from calibration.validate.config import ValidateConfig
    from calibration.validate.run import validate
    from sim.workload.generator import generate_trace

    loads = tuple(float(x) for x in args.loads.split(","))
    t_start = time.perf_counter()
    rows, kind_rows, notes = [], [], []
    shape_rows = []
    for model, profile, prompts, outputs in MODELS:
        if model not in args.models.split(","):
            continue
        if not profile.is_dir():
            notes.append(f"{model}: no profile at {profile.relative_to(ROOT)}; skipped")
            continue
        trace = generate_trace(args.requests, arrival="static", prompt_len=prompts, output_len=outputs,
                               seed=1)
        cfg = ValidateConfig(model=model, device="cpu", dtype="float32", backend="sdpa", loads=loads,
                             repeats=args.repeats, plots=False, timeline=False, op_check=0, warmup=10)
        t0 = time.perf_counter()
        res = validate(trace, cfg, profile, out=Path(args.work) / model, source=f"generated prompts {prompts}, outputs {outputs}")
        notes.append(f"{model}: {time.perf_counter() - t0:.0f} s")
        for r in res.runs:
            d = r.to_dict()
            cap = d["level"].get("capacity")
            rows.append([f"{model} {r.name}", f"{cap:.3g}" if cap else "-",
                         *(_cell(d["tails"][k]["error"], tgt) for k, _, tgt in TAILS),
                         "drifted" if d["drifted"] else f"{d['probe']['drift']:.0%}"])
            kind_rows.append([f"{model} {r.name}", *(_cell(d["batch_error_by_kind"].get(k), tgt) for k, tgt in KINDS),
                              f"{d['batch_error']['total']['median']:+.1%}"])
            shape_rows.append([f"{model} {r.name}", *(f"{v:+.1%}" if v is not None else "-"
                                                       for v in d["shape_errors"].values())])
    wall = time.perf_counter() - t_start
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout
    out = [f"Command: `python benchmarks/validate_cpu.py --requests {args.requests} --repeats {args.repeats}` "
           f"(commit {commit.strip()}), {wall / 60:.1f} min on this machine; " + "; ".join(notes) + ".", "",
           "Tails (median repeat of each pair; error = predicted / measured - 1; targets: 10%, throughput 3%):", "",
           "| run | predicted capacity (req/s) | " + " | ".join(h for _, h, _ in TAILS) + " | machine drift |",
           "|---|---:|" + "---:|" * len(TAILS) + "---:|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "Batch-level error by kind (median; target 5%), all batches last:", "",
            "| run | prefill-only | decode-only | mixed | all batches |", "|---|---:|---:|---:|---:|"]
    out += ["| " + " | ".join(r) + " |" for r in kind_rows]
    out += ["", "Drift-robust shape errors (ratios of medians, calibration.validate.errors.shape_errors; the test "
            "gate's bands: 45%, 35%, 35%):", "", "| run | prefill/decode | host/forward, prefill | host/forward, decode |",
            "|---|---:|---:|---:|"]
    out += ["| " + " | ".join(r) + " |" for r in shape_rows]
    text = "\n".join(out)
    if args.out:  # written first: a long matrix's figures are kept even if the console goes away
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
