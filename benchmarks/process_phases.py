"""Where a whole ``servesim simulate`` process spends its time: seconds per phase, median of a few runs.

Each run is a fresh process (``python benchmarks/process_phases.py --child ...``) that imports the checkout under
test and runs its ``servesim`` entry (``sim.cli.main.run``; ``main`` in older trees) on the simulate command line;
it times named functions (wrapped as their modules finish importing, so nothing is imported early) and every
module import (``importlib``'s ``_find_and_load``, outermost only). A phase's figure is its own time: the phases
nested in it and the imports made inside it are counted where they belong, so the rows add up to the process's
wall time (``flush_tokens`` holds every fold of token times, those the event loop makes included). Python's
start-up is the time from launching the process to its first line; exit, from the entry returning to the
process ending. The project's VM sets PYTHONDONTWRITEBYTECODE, so each process compiles sim/ anew: ``--pyc``
measures with bytecode cached, as an installed package runs.

    python benchmarks/process_phases.py --trace /tmp/t10k.jsonl --scheduler sarathi --repeats 3
    git worktree add /tmp/s3a-base HEAD     # then, interleaved (this, base, base, this, ...):
    python benchmarks/process_phases.py --trace /tmp/t10k.jsonl --ab /tmp/s3a-base --repeats 3

The trace of issue 34 (10,000 ShareGPT-length requests) is written by
``python -c "from benchmarks.sim_speed import *; from sim.workload.trace import write_trace; write_trace(
'/tmp/t10k.jsonl', generate_trace(10000, arrival='poisson', qps=2.0, lengths_from=LENGTHS, max_total_tokens=4096,
seed=0))"``.

Wall-clock figures of this machine: compare two trees only within one interleaved run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> (phase label, attribute path) of the functions timed once the module has been imported; a function a
#: tree does not have is skipped (older checkouts)
TIMED = {
    "sim.cli.main": [("build parser", "build_parser")],
    "sim.cli.workload_args": [("read trace", "load_workload"), ("fit to context", "fit_to_context")],
    "sim.cli.args": [("write run folder", "write_run_folder")],
    "sim.serving.simulator": [("simulate: set-up and rest", "simulate")],
    "sim.serving.cluster": [("event loop (run_cluster)", "run_cluster"), ("take_tables", "Recorder.take_tables")],
    "sim.schedulers.base": [("flush_tokens", "Scheduler.flush_tokens")],
    "sim.metrics": [("requests_table", "requests_table"), ("stage_bubbles", "stage_bubbles"),
                    ("summarize", "summarize")],
    "sim.gap_log": [("GapLog.merged", "GapLog.merged")],
    "sim.serving.load_verdict": [("load verdict", "add_load_verdict")],
    "sim.serving.frontend": [("client view", "client_view"), ("client view", "client_latency")],
    "sim.outputs.run_folder": [("console summary", "format_summary")],
}
ORDER = ["python start-up", "imports", "build parser", "cli: other", "read trace", "fit to context",
         "simulate: set-up and rest", "event loop (run_cluster)", "take_tables", "flush_tokens", "requests_table",
         "GapLog.merged", "stage_bubbles", "summarize", "load verdict", "client view", "write run folder",
         "console summary", "exit"]


def child(argv: list[str], events_file: str) -> int:
    """Run ``servesim`` on ``argv`` in this process with the phases timed; write their own times to ``events_file``."""
    t_first = time.time()
    clock = time.perf_counter
    own: dict[str, float] = {}
    stack: list[list] = []  # [label, start, time of the nested phases]

    def enter(label: str) -> None:
        stack.append([label, clock(), 0.0])

    def leave() -> None:
        label, start, nested = stack.pop()
        spent = clock() - start
        own[label] = own.get(label, 0.0) + spent - nested
        if stack:
            stack[-1][2] += spent

    def timed(label: str, fn):
        def wrapper(*a, **k):
            enter(label)
            try:
                return fn(*a, **k)
            finally:
                leave()
        wrapper.__wrapped__ = fn
        return wrapper

    import _frozen_importlib as bootstrap  # the import system's own module: C calls its _find_and_load by name

    original = bootstrap._find_and_load
    depth = [0]

    def find_and_load(name, import_):
        outer = depth[0] == 0
        if outer:
            enter("imports")
        depth[0] += 1
        try:
            module = original(name, import_)
        finally:
            depth[0] -= 1
            if outer:
                leave()
        for label, path in TIMED.get(name, ()):
            owner, _, attr = path.rpartition(".")
            target = getattr(module, owner) if owner else module
            if hasattr(target, attr):
                setattr(target, attr, timed(label, getattr(target, attr)))
        return module

    bootstrap._find_and_load = find_and_load
    enter("cli: other")
    try:
        import sim.cli.main as entry
        if hasattr(entry, "run"):  # the process entry of the console script and python -m sim.cli
            sys.argv = ["servesim", *argv]
            try:
                entry.run()
            except SystemExit as e:
                rc = e.code
        else:  # older trees: the script called main()
            rc = entry.main(argv)
    finally:
        leave()
        bootstrap._find_and_load = original
    Path(events_file).write_text(json.dumps({"first": t_first, "last": time.time(), "own": own}))
    return rc


def tree_env(tree: Path, pyc: Path | None) -> dict[str, str]:
    """The child's environment: ``tree`` imported first; with ``pyc``, bytecode cached under it (as an installed
    package has it) even where PYTHONDONTWRITEBYTECODE is set, as on the project's VM."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    if pyc is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(pyc / tree.name)
    return env


def one_run(tree: Path, cli_args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Seconds per phase of one whole process of the checkout ``tree``."""
    with tempfile.TemporaryDirectory() as tmp:
        events = Path(tmp) / "events.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(events), "--", *cli_args]
        start = time.time()
        proc = subprocess.run(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              check=False)
        end = time.time()
        if proc.returncode not in (0, 3) or not events.exists():
            raise SystemExit(f"{tree}: exit {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        ev = json.loads(events.read_text())
    phases = {"python start-up": ev["first"] - start, **ev["own"], "exit": end - ev["last"]}
    phases["total"] = end - start
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trace", default="/tmp/t10k.jsonl", help="trace file (see benchmarks/sim_speed.py)")
    ap.add_argument("--scheduler", default="sarathi")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ab", type=Path, default=None, metavar="TREE", help="also time this checkout, interleaved")
    ap.add_argument("--pyc", type=Path, default=None, metavar="DIR",
                    help="cache bytecode under DIR (one untimed warm-up run per tree), as an installed package does; "
                         "default: as the environment says (the VM sets PYTHONDONTWRITEBYTECODE: sim compiles anew)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        sys.exit(child(rest, args.child))
    trees = {"this": ROOT} if args.ab is None else {"this": ROOT, "other": args.ab.resolve()}
    runs: dict[str, list[dict[str, float]]] = {k: [] for k in trees}
    envs = {name: tree_env(tree, args.pyc) for name, tree in trees.items()}
    with tempfile.TemporaryDirectory() as out:
        def cli(name: str) -> list[str]:
            return ["simulate", "--trace", str(Path(args.trace).resolve()), "--model", "llama-2-7b", "--gpu",
                    "a100-80gb", "--scheduler", args.scheduler, "--out", f"{out}/{name}", "-q"]
        if args.pyc is not None:
            for name, tree in trees.items():
                one_run(tree, cli(name) + ["--num-requests", "50"], envs[name])
        for i in range(args.repeats):
            for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
                runs[name].append(one_run(trees[name], cli(name), envs[name]))
    labels = [lb for lb in ORDER if any(lb in r for rs in runs.values() for r in rs)] + ["total"]
    print(f"{args.scheduler}, {args.trace}: seconds, median of {args.repeats} whole processes"
          + (f" (interleaved; other = {args.ab})" if args.ab else "")
          + ("; bytecode cached" if args.pyc else "; bytecode as the environment says"))
    print(f"{'phase':28s}" + "".join(f"{k:>10s}" for k in trees))
    for lb in labels:
        print(f"{lb:28s}" + "".join(f"{statistics.median(r.get(lb, 0.0) for r in runs[k]):10.3f}" for k in trees))


if __name__ == "__main__":
    main()
