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

from sim.version import __version__

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
    parser = argparse.ArgumentParser(
        prog="servesim",
        description="Predict LLM serving latency tails, throughput and pipeline bubbles by discrete-event "
                    "simulation of Orca, vLLM, Sarathi-Serve and other schedulers.")
    parser.add_argument("--version", action="version", version=f"servesim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, register in COMMANDS:
        getattr(importlib.import_module(module), register)(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; bad input gets one line on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError) as e:  # bad input: one clear line, no traceback
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"servesim: error: {msg}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional or missing dependency: name it and how to get it
        hint = "pip install torch==2.13.0" if e.name == "torch" else f"pip install {e.name}"
        print(f"servesim: error: this command needs the Python package {e.name!r}, which is not installed "
              f"({hint})", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:  # a file we cannot read or write (permissions, a full disk, a folder where a file goes)
        where = f"{e.filename}: " if e.filename else ""
        print(f"servesim: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("servesim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
