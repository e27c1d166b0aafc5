"""The documentation works: the site builds under ``mkdocs build --strict``, every documented command runs.

A fenced shell block in README.md or docs/ carries a marker on the line before it: ``<!-- run -->`` (the block
is executed here verbatim, with ``bash -e``, in a scratch folder holding copies of ``traces/`` and
``calibration/profiles/`` and ``../shared`` beside it) or ``<!-- skip: REASON -->`` (installs packages, needs
torch's engine or a GPU, or runs for more than about ten seconds; listed as skipped with its reason). A marked
``python`` block runs as a script. Nothing here times anything: a command passes when it exits 0.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.paths import ROOT, SHARED

DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"^\s*<!--\s*(run|skip)\s*(?::\s*(.*?))?\s*-->\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)")
#: generous: a documented command that hangs fails; none of this is a speed check
PAGE_TIMEOUT_S = 600


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its language, text, marker (run, skip or None) and skip reason."""

    page: Path
    line: int
    lang: str
    text: str
    marker: str | None
    reason: str


def blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page``, each with the marker on the nearest non-blank line before it."""
    out: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang, start = m.group(1), m.group(2).lower(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i].removeprefix(indent))
            i += 1
        prev = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        mk = MARKER.match(prev)
        out.append(Block(page, start + 1, lang, "\n".join(body) + "\n", mk and mk.group(1),
                         (mk.group(2) or "") if mk else ""))
        i += 1
    return out


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


ALL = [b for p in PAGES for b in blocks(p)]
RUN_PAGES = [p for p in PAGES if any(b.marker == "run" for b in blocks(p))]
SKIPPED = [b for b in ALL if b.marker == "skip"]


def test_every_block_has_a_language_and_every_command_a_marker():
    """An unmarked shell block would silently go untested; an untagged block could hide one."""
    assert PAGES[0].name == "README.md" and len(PAGES) > 10
    problems = []
    for b in ALL:
        where = f"{_rel(b.page)}:{b.line}"
        if not b.lang:
            problems.append(f"{where}: fenced block without a language (use text for output)")
        elif b.lang in SHELL and b.marker is None:
            problems.append(f"{where}: shell block without <!-- run --> or <!-- skip: REASON -->")
        elif b.marker == "skip" and len(b.reason) < 10:
            problems.append(f"{where}: skip marker without a reason")
        elif b.marker == "run" and b.lang not in SHELL | {"python"}:
            problems.append(f"{where}: only shell and python blocks can run")
    for page in PAGES:  # indented code blocks are not fenced, so no marker could reach them
        fenced = False
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip().startswith("```"):
                fenced = not fenced
            elif not fenced and re.match(r"^( {4}|\t)(servesim|python|pip) ", line):
                problems.append(f"{_rel(page)}:{n}: indented command: put it in a marked fenced block")
    assert not problems, "\n".join(problems)


def test_the_blocks_are_found():
    """The parser sees the README's set-up commands and a run block on most pages (guards the tests below)."""
    readme = blocks(ROOT / "README.md")
    assert [b.marker for b in readme[:2]] == ["skip", "skip"]
    assert any(b.marker == "run" for b in readme)
    assert len(RUN_PAGES) >= 10


def test_readme_keeps_the_set_up_commands_and_stays_short():
    """The quick start's two commands are the main job's and .ci/run's test command, verbatim; <= 200 lines."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    main_job, test_cmd = (b.text.strip() for b in blocks(ROOT / "README.md")[:2])
    assert main_job == ("pip install -e . && servesim simulate --trace traces/example_sharegpt_poisson.jsonl "
                        "--model llama-2-7b --gpu a100-80gb --scheduler sarathi --token-budget 512 --out runs/example")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test_cmd == ci[ci.index("# README test command:") + 1].strip()


def _sandbox(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A scratch checkout (copies of the data documented commands read) and an environment whose ``servesim``
    and ``python`` are this checkout's, whatever is installed."""
    work = tmp / "main"
    shutil.copytree(ROOT / "traces", work / "traces")
    shutil.copytree(ROOT / "calibration" / "profiles", work / "calibration" / "profiles")
    if SHARED.is_dir():
        (tmp / "shared").symlink_to(SHARED, target_is_directory=True)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for name, line in (("servesim", f'exec "{sys.executable}" -m sim.cli.main "$@"'),
                       ("python", f'exec "{sys.executable}" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{line}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", MPLBACKEND="Agg",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("SERVESIM_DEBUG", None)
    return work, env


@pytest.mark.parametrize("page", RUN_PAGES, ids=_rel)
def test_documented_commands_run(page: Path, tmp_path: Path):
    """Each ``<!-- run -->`` block of the page, in order, in one scratch folder, exits 0."""
    work, env = _sandbox(tmp_path)
    needs_shared = []
    for b in blocks(page):
        if b.marker != "run":
            continue
        if "../shared" in b.text and not SHARED.is_dir():
            needs_shared.append(b.line)
            continue
        if b.lang == "python":
            script = tmp_path / f"block_{b.line}.py"
            script.write_text(b.text)
            cmd = [sys.executable, str(script)]
        else:
            cmd = ["bash", "-e", "-o", "pipefail", "-c", b.text]
        r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S,
                           stdin=subprocess.DEVNULL, check=False)
        assert r.returncode == 0, (f"{_rel(page)}:{b.line} exited {r.returncode}\n{b.text}\n"
                                   f"{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
        assert "Traceback" not in r.stderr, f"{_rel(page)}:{b.line}\n{r.stderr[-3000:]}"
    if needs_shared:
        pytest.skip(f"blocks at lines {needs_shared} read ../shared, which is not beside the clone")


@pytest.mark.parametrize("block", SKIPPED, ids=lambda b: f"{_rel(b.page)}:{b.line}")
def test_skipped_by_design(block: Block):
    """Commands not run here, each listed with why (installs packages, needs torch or a GPU, runs long)."""
    assert block.reason
    pytest.skip(f"by design ({_rel(block.page)}:{block.line}): {block.reason}")


def _gen_cli():
    spec = importlib.util.spec_from_file_location("gen_cli", DOCS / "gen_cli.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_cli_reference_covers_every_command_of_the_parser():
    """Generated from build_parser(): the engine's, calibration's and nested subcommands included, same twice."""
    from sim.cli.main import build_parser

    gen = _gen_cli()
    page = gen.cli_reference()
    paths = [p for p, _ in gen.walk(build_parser())]
    for path in paths:
        assert f"## `{' '.join(('servesim',) + path)}`" in page
    for name in ("simulate", "engine", "calibrate", "validate", "plan", "capacity", "trace generate"):
        assert f"## `servesim {name}`" in page
        assert f"usage: servesim {name}" in page
    assert page == gen.cli_reference()


def test_mkdocs_builds_strict(tmp_path: Path):
    """The site builds with no warning (broken links and anchors included), with the generated reference."""
    missing = [m for m in ("mkdocs", "material") if importlib.util.find_spec(m) is None]
    assert not missing, f"{missing} not installed: the test extra installs the docs extra (pip install -e '.[test]')"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"),
                        "-d", str(site)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=PAGE_TIMEOUT_S,
                       check=False)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "WARNING" not in r.stderr
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    assert "servesim-trace-generate" in cli and "usage: servesim validate" in cli
    assert (site / "results" / "index.html").is_file()
    assert 'href="workloads/"' in (site / "index.html").read_text(encoding="utf-8")  # README's docs/ links fixed
