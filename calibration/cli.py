"""The ``servesim calibrate`` command: measure a profile, or report on one (torch is imported only to measure)."""

from __future__ import annotations

import argparse
from pathlib import Path

from sim.cli.args import add_command, name_list
from sim.cli.errors import BAD_INPUT, error
from sim.cli.values import MAX_PARALLEL, budget_seconds, int_list_in, int_range

DEFAULT_PROFILES = Path("calibration/profiles")
#: sweeps of the grid at most (--rounds), and torch threads at most (--threads)
MAX_ROUNDS = 100
MAX_THREADS = 1024
_tp_degrees = int_list_in(1, MAX_PARALLEL)


def _tp_list(s: str) -> list[int]:
    """Comma-separated TP degrees, sorted and without repeats."""
    return sorted(set(_tp_degrees(s)))


def _ops_list(s: str) -> tuple[str, ...]:
    return tuple(name_list(s))


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``calibrate`` on the ``servesim`` sub-command parser."""
    p = add_command(subparsers, "calibrate", cmd_calibrate,
                    "time the engine's ops on this device into a profile, or report on a profile", show_defaults=False)
    p.add_argument("--report", metavar="PROFILE", default=None,
                   help="print (and write to PROFILE/report.md) the leave-out interpolation error and the roofline "
                        "error per op of an existing profile, then exit")
    p.add_argument("--model", default="llama-2-7b",
                   help="model from the catalogue (`servesim models`) or a config.json (default: %(default)s)")
    p.add_argument("--tp", type=_tp_list, default=[1], metavar="1[,2,4,8]",
                   help="tensor-parallel degrees whose shard shapes to measure, all on this one device (default: 1)")
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"),
                   help="torch device (default: auto = cuda when available)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"),
                   help="weights and activations (default: auto = bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help=f"profile folder (default: {DEFAULT_PROFILES}/MODEL-DEVICE[-quick])")
    p.add_argument("--budget-s", type=budget_seconds, default=None, metavar="S",
                   help="stop after S seconds, keeping what was measured (rerun to resume) (default: no limit)")
    p.add_argument("--quick", action="store_true",
                   help="small grid and few repeats (tests, CPU smoke runs); the default grid is full (CUDA) or "
                        "full-cpu (decode batches up to 128k cached tokens)")
    p.add_argument("--backend", default="auto", choices=("auto", "sdpa", "flex", "flash"),
                   help="attention backend (default: auto, as the engine selects it: flash, then flex on CUDA; "
                        "sdpa on CPU)")
    p.add_argument("--threads", type=int_range(1, MAX_THREADS), default=1, metavar="N",
                   help="CPU only: torch intra-op threads while timing (one thread keeps timings stable on a "
                        "shared machine; match the engine's setting when comparing) (default: %(default)s)")
    p.add_argument("--rounds", type=int_range(1, MAX_ROUNDS), default=None, metavar="R",
                   help="sweep the points R times and keep each point's best (lowest-median) sweep (default: 3 "
                        "on a CPU, whose timings other processes disturb; 1 on CUDA)")
    p.add_argument("--cuda-graphs", dest="cuda_graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="time decode-only forward passes through CUDA graphs, as the engine runs them (forward_graph "
                        "rows; the profiled cost model prices TP1 decode iterations from them) (default: on CUDA; "
                        "--no-cuda-graphs for a profile of an engine run with --no-cuda-graphs)")
    p.add_argument("--ops", type=_ops_list, default=None, metavar="OP[,OP]",
                   help="measure only these ops of sim.ops (default: all the model runs: a mixture of experts' MoE "
                        "ops, the dense MLP's only where a layer is dense)")
    p.add_argument("--fresh", action="store_true", help="discard an existing profile in --out instead of resuming")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan and the time estimate without measuring (needs no torch)")
    p.add_argument("--gpu", default=None, metavar="GPU",
                   help="with --report: also list the per-op factors a transfer to this catalogue GPU applies; with "
                        "--import-vidur: the GPU Vidur measured on")
    p.add_argument("--import-vidur", default=None, metavar="MLP.csv",
                   help="write a profile (--out, --model, --gpu) from Vidur's measured op table (e.g. "
                        "../shared/measured/vidur/a100/meta-llama/Llama-2-7b-hf.mlp.csv); the ops it lacks come "
                        "from the kernel databases when installed, else the roofline (profile.json says which)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _import_vidur(args: argparse.Namespace) -> int:
    from calibration.vidur_import import import_vidur
    from sim.catalog.models import get_model

    if not args.gpu or not args.out:
        raise ValueError("--import-vidur needs --gpu (the GPU Vidur measured on) and --out DIR")
    out = import_vidur(args.import_vidur, args.model, args.gpu, args.out)
    print(f"wrote profile {out} from Vidur's {args.import_vidur} ({get_model(args.model).name} on {args.gpu}); "
          f"see profile.json op_sources for what came from where")
    return _report(str(out), None)


def _report(path: str, gpu: str | None) -> int:
    from calibration.report import fit_report, format_report, transfer_factors
    from sim.cost.profile_format import REPORT_MD, read_profile

    prof = read_profile(path)
    df = fit_report(prof)
    factors = transfer_factors(prof, gpu) if gpu else None
    text = format_report(prof, df, gpu, factors)
    from sim.outputs.run_folder import naming
    with naming(prof.path / REPORT_MD):
        (prof.path / REPORT_MD).write_text(text)
    print(text, end="")
    print(f"\nwrote {prof.path / REPORT_MD}")
    return 0


def _dry_run(args: argparse.Namespace) -> int:
    from calibration.grid import PlanSummary, default_grid, estimate_seconds, plan
    from sim.catalog.models import get_model

    model = get_model(args.model)
    device = "cpu" if args.device == "cpu" else "cuda"
    spec = default_grid(device, args.quick)
    graphs = device == "cuda" if args.cuda_graphs is None else args.cuda_graphs  # plan() drops them for MoE models
    pts = plan(model, args.tp, spec, args.ops, graphs=graphs)
    timing = (2, 5, 15, 0.004) if args.quick else (3, 5, 50, 0.02)
    rounds = args.rounds or (3 if device == "cpu" else 1)
    est = rounds * estimate_seconds(pts, model, "h100-sxm" if device == "cuda" else None, device, timing)
    print(f"{model.name} TP {','.join(map(str, args.tp))}, grid {spec.name}: {len(pts)} points ({PlanSummary.of(pts)})")
    print(f"estimated {est:.0f} s on {'an H100' if device == 'cuda' else 'a CPU'} ({rounds} round(s) of roofline call "
          f"times plus per-call and per-point overheads; communication not included)")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    """Time every op of one decoder layer (and of each TP shard's shapes) through the engine's own op
    implementations on the torch device here, plus the host overhead per iteration, and write a profile folder
    (profile.json, measurements.csv, report.md) for `servesim simulate --profile`. Measurements are written as
    they are taken; rerunning the same command resumes. With --report, print the fit report of an existing
    profile instead. Exit status 3: stopped at --budget-s with points left.
    """
    if args.report:
        return _report(args.report, args.gpu)
    if args.import_vidur:
        return _import_vidur(args)
    if args.dry_run:
        return _dry_run(args)
    try:
        import torch  # noqa: F401
    except ImportError:
        error("measuring needs torch (pip install torch==2.13.0); --report and --dry-run do not")
        return BAD_INPUT
    from calibration.device_info import resolve_device
    from calibration.profiler import calibrate, calibration_config

    device = resolve_device(args.device)
    out = args.out or str(DEFAULT_PROFILES / f"{Path(args.model).name}-{device.type}{'-quick' if args.quick else ''}")
    cfg = calibration_config(args.model, args.tp, out, quick=args.quick, device=str(device), dtype=args.dtype,
                             backend=args.backend, budget_s=args.budget_s, ops=args.ops, fresh=args.fresh,
                             threads=args.threads, rounds=args.rounds, progress=not args.quiet,
                             cuda_graphs=args.cuda_graphs)
    res = calibrate(cfg)
    print(f"measured {res.measured} point(s) in {res.wall_s:.1f} s (estimate was {res.estimate_s:.0f} s); "
          f"profile {'complete' if res.complete else 'partial'}: {res.path}")
    if res.complete and args.ops is None:
        return _report(str(res.path), None)
    return 0 if res.complete else 3
