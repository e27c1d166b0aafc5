"""The ``servesim report`` command: compare run folders side by side (``sim.outputs.report`` writes the report)."""

from __future__ import annotations

import argparse

from sim.cli.args import add_command


def cmd_report(args: argparse.Namespace) -> int:
    """Compare run folders written by `servesim simulate --out` or by the engine: a table of summary metrics (one
    column per run) and overlaid TTFT, TBT, end-to-end and scheduling-delay CDFs, as report.md with PNGs beside
    it and report.html with the images inlined.
    """
    from sim.outputs.report import write_report
    from sim.outputs.run_folder import check_run, prepare_out_dir
    for d in args.run_dirs:  # every folder complete, and the output writable, before any work
        check_run(d)
    prepare_out_dir(args.out)
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    md, page = write_report(args.run_dirs, args.out, labels=labels, title=args.title, run_plots=args.run_plots)
    print(f"wrote {md} and {page}")
    return 0


def add_report_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register `servesim report` on the main parser's subparsers."""
    p = add_command(subparsers, "report", cmd_report,
                    "compare run folders side by side (Markdown + self-contained HTML)",
                    epilog="example: servesim report runs/orca runs/vllm runs/sarathi --out runs/compare")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (summary.json, requests.csv, batches.csv)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder for report.md, report.html and the PNGs")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="comma-separated run labels (default: the folder names)")
    p.add_argument("--title", default="servesim run comparison", help="report title")
    p.add_argument("--run-plots", action="store_true",
                   help="also include each run's own plots (latency over time, batches, KV cache, stage Gantt)")
    return p
