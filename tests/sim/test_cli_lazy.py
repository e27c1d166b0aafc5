"""The command about to run builds only its own module's parser (issue 34: start-up), with the same parsers and help."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from sim.cli.main import COMMANDS, build_parser
from tests.paths import ROOT


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _helps(parser: argparse.ArgumentParser, path: str = "") -> dict[str, str]:
    """Every nested parser's --help, by command path."""
    out = {path: parser.format_help()}
    for name, sub in (_subparsers(parser).items() if any(isinstance(a, argparse._SubParsersAction)
                                                          for a in parser._actions) else ()):
        out.update(_helps(sub, f"{path} {name}"))
    return out


def test_each_module_registers_exactly_the_commands_listed_for_it():
    """COMMANDS' names are the truth: building for one command registers its module's commands, no other."""
    listed = [name for _, _, names in COMMANDS for name in names]
    assert list(_subparsers(build_parser())) == listed  # the full parser: every command, in the listed order
    for _, _, names in COMMANDS:
        for name in names:
            assert list(_subparsers(build_parser(name))) == list(names)


@pytest.mark.parametrize("command", [name for _, _, names in COMMANDS for name in names])
def test_a_command_built_alone_has_the_help_of_the_whole_parser(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    whole, alone = _helps(build_parser()), _helps(build_parser(command))
    mine = [path for path in whole if path.split(" ")[1:2] == [command]]
    assert mine and set(mine) <= set(alone)
    for path, text in alone.items():
        if path:  # the top level lists fewer commands, by design: it only runs when a command is named
            assert text == whole[path], path


def test_an_unknown_command_or_an_option_first_builds_the_whole_parser():
    everything = [name for _, _, names in COMMANDS for name in names]
    for first in (None, "simulat", "--version"):
        assert list(_subparsers(build_parser(first))) == everything


def test_simulate_imports_no_other_commands_modules():
    """A whole `servesim simulate` process (python -m sim.cli) imports neither plan, capacity, serve, nor the engine's
    or calibration's command modules."""
    code = ("import runpy, sys\n"
            "sys.argv = ['servesim', 'simulate', '-n', '5', '--model', 'tiny', '--qps', '50', '-q']\n"
            "try:\n"
            "    runpy.run_module('sim.cli', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    assert e.code == 0, e.code\n"
            "others = sorted(m for m in sys.modules if m.split('.')[0] in ('engine', 'calibration') or m.startswith("
            "('sim.cli.plan', 'sim.cli.capacity', 'sim.cli.trace', 'sim.cli.cost', 'sim.capacity', 'sim.serve')))\n"
            "assert not others, others\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]


def test_simulate_help_imports_no_pandas():
    """Asking simulate for its flags does not pay for pandas (0.3 s of start-up): only reading an Azure trace's
    timestamps needs it among the modules its parser imports."""
    code = ("import contextlib, io, sys\n"
            "from sim.cli.main import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            "        main(['simulate', '--help'])\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0\n"
            "assert 'pandas' not in sys.modules\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.parametrize("extra", [[], ["--scheduler", "vllm_v1", "--enable-prefix-caching", "--pp", "2"],
                                   ["--disaggregated"]])
def test_a_simulate_run_writing_its_folder_imports_no_pandas(extra, tmp_path):
    """A whole `servesim simulate --out` run (summary, requests.csv, batches.csv) computes and writes its tables
    without pandas (``sim.table``: 0.3 s of each process, issue 34); the Python API's frames still are DataFrames."""
    code = ("import sys\n"
            "from sim.cli.main import main\n"
            f"rc = main(['simulate', '-n', '40', '--model', 'tiny', '--qps', '50', '-q', '--out', {str(tmp_path)!r}, "
            f"*{extra!r}])\n"
            "assert rc == 0, rc\n"
            "assert 'pandas' not in sys.modules, 'pandas imported'\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "batches.csv").stat().st_size > 0 and (tmp_path / "manifest.json").exists()
