"""The ``servesim`` command: one parser assembled from each subcommand family's module.

The engine's and calibration's subcommands live in their own layers; the entry point finds them
by module name (``importlib``), the one place the simulator layer names them, so that
``servesim simulate`` never imports them and never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sim.cli.errors import CliParser, run_cli
from sim.version import __version__

__all__ = ["COMMANDS", "build_parser", "main", "run_cli"]

#: (module, function registering its subcommands), in the order ``servesim --help`` lists them
COMMANDS: tuple[tuple[str, str], ...] = (
    ("sim.cli.simulate", "add_simulate_parser"),
    ("sim.cli.cost", "add_cost_parser"),
    ("sim.cli.trace", "add_trace_parser"),
    ("sim.cli.report", "add_report_parser"),
    ("engine.cli", "add_engine_parser"),               # parser only: torch is imported when the command runs
    ("calibration.cli", "add_calibrate_parser"),       # parser only: torch is imported when measuring
    ("sim.cli.plan", "add_plan_parser"),               # `plan` and `capacity`
    ("calibration.validate.cli", "add_validate_parser"),
    ("sim.cli.catalog", "add_catalog_parsers"),        # `models` and `gpus`
)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``servesim`` parser (imports each command module's parser code, no torch)."""
    parser = CliParser(
        prog="servesim",
        description="Predict LLM serving latency tails, throughput and pipeline bubbles by discrete-event "
                    "simulation of Orca, vLLM, Sarathi-Serve and other schedulers.")
    parser.add_argument("--version", action="version", version=f"servesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, register in COMMANDS:
        getattr(importlib.import_module(module), register)(sub)
    return parser


def _run(argv: Sequence[str] | None) -> int:
    """Build the parser, parse ``argv`` and run the subcommand (inside run_cli, start-up included)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand under the error contract (sim.cli.errors): bad input is one line on
    stderr and exit status 2, a bug one line and 1, Ctrl-C 130; never a traceback unless SERVESIM_DEBUG=1."""
    return run_cli(_run, argv)


if __name__ == "__main__":
    sys.exit(main())
