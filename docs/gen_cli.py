"""The CLI reference page, generated from ``servesim``'s own argparse parsers so that it cannot drift.

Every subcommand's ``--help`` (those registered from engine/ and calibration/ included, nested ones such as
``trace generate`` too) is printed at a fixed width into one Markdown page. The MkDocs hook (docs/hooks.py)
calls :func:`cli_reference` at build time; ``python docs/gen_cli.py`` prints the same page.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: help is wrapped at this many columns whatever the terminal, so the page is the same on every machine
WIDTH = 100


def _subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(name, parser) of each direct subcommand, in the order ``--help`` lists them (aliases once)."""
    seen: set[int] = set()
    for action in parser._actions:  # argparse exposes subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield name, sub


def walk(parser: argparse.ArgumentParser,
         path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser under ``parser``, depth first, with its command path (``()`` for the top level)."""
    yield path, parser
    for name, sub in _subcommands(parser):
        yield from walk(sub, path + (name,))


def _help(parser: argparse.ArgumentParser) -> str:
    """``parser``'s help at :data:`WIDTH` columns (argparse reads the width from $COLUMNS)."""
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(WIDTH + 2)
    try:
        return parser.format_help().rstrip()
    finally:
        if old is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = old


def cli_reference() -> str:
    """The whole reference page as Markdown: an index of the commands, then each command's ``--help``."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from sim.cli.main import build_parser

    commands = list(walk(build_parser()))
    lines = ["# Command-line reference", "",
             "Generated from servesim's argparse parsers when the site is built (`docs/gen_cli.py`), so it always",
             "matches the code. Each section is the command's `--help`.", ""]
    lines += [f"- [`{' '.join(('servesim',) + p)}`](#{_anchor(p)})" for p, _ in commands]
    for path, parser in commands:
        lines += ["", f"## `{' '.join(('servesim',) + path)}` {{ #{_anchor(path)} }}", "", "```text",
                  _help(parser), "```"]
    return "\n".join(lines) + "\n"


def _anchor(path: tuple[str, ...]) -> str:
    """A stable heading id for a command path (``servesim-trace-generate``)."""
    return "-".join(("servesim",) + path)


if __name__ == "__main__":
    sys.stdout.write(cli_reference())
