"""The architecture holds: three layers (sim < engine < calibration), no import circles, a torch-free simulator.

The import graph is read from the source with ``ast`` (every import statement, inside functions
and ``TYPE_CHECKING`` blocks too), so a lazy import cannot hide a circle or a layer violation.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.paths import ROOT

PACKAGES = ("sim", "engine", "calibration")
LAYER = {"sim": 0, "engine": 1, "calibration": 2}
#: the one place in sim/ allowed to name the upper layers: the entry point finds their subcommands by module name
ENTRY_POINT = "sim.cli.main"
MAX_LINES = 450


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the three packages."""
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = f
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module (None for third-party names)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def import_graph() -> dict[str, set[str]]:
    """Module -> project modules it imports (``from pkg import sub`` counts as an import of ``pkg.sub``)."""
    modules = module_files()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, f in modules.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    pkg = pkg[:len(pkg) - node.level + 1]
                    base = ".".join(pkg + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                r = _resolve(t, modules)
                if r is not None and r != mod:
                    graph[mod].add(r)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_sees_lazy_imports():
    g = import_graph()
    # sim.cli.simulate imports the simulator inside its command function only
    assert "sim.serving.simulator" in g["sim.cli.simulate"]
    assert "sim.schedulers.base" in g["sim.schedulers.sarathi"]


def test_the_cycle_finder_finds_a_planted_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_layers_import_only_downwards():
    bad = [f"{m} imports {t}" for m, ts in import_graph().items() for t in sorted(ts)
           if LAYER[t.split(".")[0]] > LAYER[m.split(".")[0]]]
    assert not bad, "layer violations: " + "; ".join(bad)


def test_only_the_entry_point_names_upper_layers():
    """sim/ may name engine/calibration modules as strings (import_module) only in the command-line entry point."""
    offenders = []
    for mod, f in module_files().items():
        if not mod.startswith("sim"):
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in
                    ("import_module", "__import__") and mod != ENTRY_POINT):
                offenders.append(mod)
    assert not offenders, f"dynamic imports outside {ENTRY_POINT}: {offenders}"


def test_modules_are_small_enough_to_read_in_one_sitting():
    big = {m: n for m, f in module_files().items() if (n := len(f.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


#: modules at the simulator's root, its shared vocabulary (request, batch, ops, metrics...): each family of
#: mechanics (the KV cache, the run of a deployment, cost models, schedulers...) lives in its own package
MAX_SIM_ROOT_MODULES = 10


def test_the_simulator_root_holds_only_its_shared_vocabulary():
    root = sorted(f.name for f in (ROOT / "sim").glob("*.py") if f.name != "__init__.py")
    assert len(root) <= MAX_SIM_ROOT_MODULES, f"{len(root)} modules at sim/ root: {root}"


def _fresh_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_the_simulator_imports_neither_torch_nor_the_upper_layers():
    _fresh_python("import sim, sim.cli, sim.serving.simulator; import sys; "
                  "assert 'torch' not in sys.modules and 'calibration' not in sys.modules "
                  "and 'engine' not in sys.modules, sorted(m for m in sys.modules if m.split('.')[0] in "
                  "('torch', 'engine', 'calibration'))")


def test_building_the_whole_command_line_does_not_import_torch():
    """`servesim simulate` (and `--help` of every subcommand) never pays for torch."""
    _fresh_python("import sys; from sim.cli.main import build_parser; build_parser(); "
                  "assert 'torch' not in sys.modules; "
                  "from sim.cli.main import main; "
                  "rc = main(['simulate', '-n', '5', '--model', 'tiny', '--qps', '50', '-q']); "
                  "assert rc == 0 and 'torch' not in sys.modules")


def test_the_command_line_builds_without_simpy_and_names_it_when_a_simulation_needs_it():
    """The GPU machine has no simpy: calibrate, engine and validate must still start (issue 15), and a
    simulation without it stops with one line naming the package."""
    code = ("import builtins, contextlib, io, sys\n"
            "real = builtins.__import__\n"
            "def imp(name, *a, **k):\n"
            "    if name.split('.')[0] == 'simpy':\n"
            "        raise ModuleNotFoundError(\"No module named 'simpy'\", name='simpy')\n"
            "    return real(name, *a, **k)\n"
            "builtins.__import__ = imp\n"
            "from sim.cli.main import main\n"
            "for cmd in (['calibrate', '--help'], ['engine', '--help'], ['validate', '--help']):\n"
            "    try:\n"
            "        with contextlib.redirect_stdout(io.StringIO()):\n"
            "            main(cmd)\n"
            "    except SystemExit as e:\n"
            "        assert e.code == 0, cmd\n"
            "err = io.StringIO()\n"
            "with contextlib.redirect_stderr(err):\n"
            "    rc = main(['simulate', '-n', '5', '--model', 'tiny', '-q'])\n"
            "assert rc == 2 and \"package 'simpy'\" in err.getvalue() and err.getvalue().count('\\n') == 1, err.getvalue()\n")
    _fresh_python(code)
