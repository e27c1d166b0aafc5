"""The ``servesim`` command: one parser assembled from each subcommand family's module.

The engine's and calibration's subcommands live in their own layers; the entry point finds them
by module name (``importlib``), the one place the simulator layer names them, so that
``servesim simulate`` never imports them and never imports torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

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
    ("sim.serve.cli", "add_serve_parser"),             # parser only: FastAPI and uvicorn are imported when serving
)

#: other layers' backends of ``servesim serve``, found by name: --engine's (module, factory of the parsed flags)
SERVE_BACKENDS: dict[str, tuple[str, str]] = {"engine": ("engine.serve_backend", "backend_from_args")}


def serve_backend(name: str) -> Callable[[argparse.Namespace], Any]:
    """The named ``servesim serve`` backend's factory, imported here, the one place sim/ names other layers."""
    module, factory = SERVE_BACKENDS[name]
    return getattr(importlib.import_module(module), factory)


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
    parser.set_defaults(subcommand_parsers=sub.choices)  # an unknown flag is refused under its command's usage
    return parser


def _run(argv: Sequence[str] | None) -> int:
    """Build the parser, parse ``argv`` and run the subcommand (inside run_cli, start-up included)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # the subcommand's usage, not the top level's (argparse's parse_args would print the latter)
        parser = args.subcommand_parsers.get(getattr(args, "command", None), parser)
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
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
