"""The ``servesim`` command: one parser assembled from each subcommand family's module.

The engine's and calibration's subcommands live in their own layers; the entry point finds them
by module name (``importlib``), the one place the simulator layer names them, so that
``servesim simulate`` never imports them and never imports torch.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from sim.cli.errors import CliParser, run_cli
from sim.version import __version__

__all__ = ["COMMANDS", "build_parser", "main", "run", "run_cli"]

#: (module, function registering its subcommands, the commands it registers), in the order ``servesim --help``
#: lists them; a command about to run imports only its own module (tests/sim/test_cli_lazy.py checks the names)
COMMANDS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("sim.cli.simulate", "add_simulate_parser", ("simulate",)),
    ("sim.cli.cost", "add_cost_parser", ("cost",)),
    ("sim.cli.trace", "add_trace_parser", ("trace",)),
    ("sim.cli.report", "add_report_parser", ("report",)),
    ("engine.cli", "add_engine_parser", ("engine",)),  # parser only: torch is imported when the command runs
    ("calibration.cli", "add_calibrate_parser", ("calibrate",)),  # parser only: torch is imported when measuring
    ("sim.cli.plan", "add_plan_parser", ("plan", "capacity")),
    ("calibration.validate.cli", "add_validate_parser", ("validate",)),
    ("sim.cli.catalog", "add_catalog_parsers", ("models", "gpus")),
    ("sim.serve.cli", "add_serve_parser", ("serve",)),  # parser only: FastAPI and uvicorn are imported when serving
)

#: other layers' backends of ``servesim serve``, found by name: --engine's (module, factory of the parsed flags)
SERVE_BACKENDS: dict[str, tuple[str, str]] = {"engine": ("engine.serve_backend", "backend_from_args")}


def serve_backend(name: str) -> Callable[[argparse.Namespace], Any]:
    """The named ``servesim serve`` backend's factory, imported here, the one place sim/ names other layers."""
    module, factory = SERVE_BACKENDS[name]
    return getattr(importlib.import_module(module), factory)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``servesim`` parser (no torch): every command's, or only ``command``'s where one of COMMANDS registers it
    (its module alone imported: ``servesim simulate`` skipped 32 modules of the other commands; its parser and
    ``--help`` are the same either way)."""
    parser = CliParser(
        prog="servesim",
        description="Predict LLM serving latency tails, throughput and pipeline bubbles by discrete-event "
                    "simulation of Orca, vLLM, Sarathi-Serve and other schedulers.")
    parser.add_argument("--version", action="version", version=f"servesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = [entry for entry in COMMANDS if command in entry[2]] or COMMANDS
    for module, register, _names in chosen:
        getattr(importlib.import_module(module), register)(sub)
    parser.set_defaults(subcommand_parsers=sub.choices)  # an unknown flag is refused under its command's usage
    return parser


def _run(argv: Sequence[str] | None) -> int:
    """Build the parser, parse ``argv`` and run the subcommand (inside run_cli, start-up included)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv[0] if argv and not argv[0].startswith("-") else None)
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


def run() -> NoReturn:
    """The process's entry (the ``servesim`` script, ``python -m sim.cli``): main(), then exit with the objects left
    frozen (gc.freeze), which the interpreter's shutdown then does not collect over: 0.15-0.3 s of a whole
    ``servesim simulate`` on the 2-core VM, most of it pandas' own objects (measured, issue 34). Safe because
    every command closes its files itself; only finalizers of objects still alive at exit may not run, which
    Python never promises anyway."""
    status = main()
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    run()
