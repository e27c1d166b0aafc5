"""The command line's error contract (issue 28): every refusal is one bounded line on stderr and exit status 2, a
run that serves nothing exits 1, a bug is one line and 1, never a traceback; capacity and plan refuse a bad
trace or flag before any simulation; every numeric flag of every subcommand is checked at parse time."""

from __future__ import annotations

import argparse
import errno
import json
import subprocess
import sys

import pandas as pd
import pytest

import sim.capacity.search
from sim.cli import errors
from sim.cli.main import build_parser, main
from sim.outputs.run_folder import check_run
from tests.paths import ROOT

SIM = ["simulate", "-n", "5", "--model", "tiny", "--qps", "50", "-q"]
CAPACITY = ["capacity", "--model", "tiny", "-n", "5", "--duration", "0", "--seeds", "1", "-j", "1", "-q"]
PLAN = ["plan", "--model", "tiny", "--gpus", "a100-80gb", "--max-gpus", "1", "--schedulers", "vllm", "--budgets",
        "512", "-n", "10", "--duration", "0", "--seeds", "1", "--jobs", "1", "-q"]


def _refused(capsys, rc: int, *words: str, status: int = 2) -> str:
    """The one stderr line of a refusal with exit status ``status``, holding every one of ``words``."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == status and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("servesim: error: ") and len(lines[0]) <= 400, lines[0]
    assert all(w in lines[0] for w in words), lines[0]
    return lines[0]


def _parse_refused(capsys, argv: list[str], *words: str) -> str:
    """argparse refuses ``argv``: SystemExit 2 and one line (parsed only: a value accepted by mistake, such as a
    billion replicas, must fail the test, not run the command)."""
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    return _refused(capsys, e.value.code, *words)


def _jsonl(path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def no_simulation(monkeypatch):
    """Fails the test if any capacity point is simulated."""
    def refuse(spec):
        raise AssertionError("a simulation ran before the input was checked")
    monkeypatch.setattr(sim.capacity.search, "evaluate_point", refuse)


# ---- defect 4: capacity on a trace it cannot serve, or without any TBT ---------------------------------------

def test_capacity_replay_of_one_token_answers_has_no_tbt_and_no_traceback(tmp_path, capsys):
    """Every request answers one token: no time between tokens (was: TypeError formatting None in plan.py)."""
    trace = _jsonl(tmp_path / "one.jsonl", [{"arrival_time": i * 0.1, "prompt_tokens": 50, "output_tokens": 1}
                                            for i in range(5)])
    assert main([*CAPACITY, "--replay", trace]) == 0
    out = capsys.readouterr().out
    assert "P99 TBT -," in out and "per seed" in out


def test_capacity_replay_that_serves_nothing_exits_1_with_one_line(tmp_path, capsys):
    trace = _jsonl(tmp_path / "big.jsonl", [{"arrival_time": i * 0.1, "prompt_tokens": 5000, "output_tokens": 10}
                                            for i in range(5)])
    rc = main([*CAPACITY, "--replay", trace, "--max-total-tokens", "100000"])
    _refused(capsys, rc, "no request of the workload can be served", "5 of 5 skipped", status=1)
    rc = main([*CAPACITY, "--replay", trace, "--max-total-tokens", "100000", "--json"])
    _refused(capsys, rc, "no request of the workload can be served", status=1)


# ---- defect 7: capacity and plan check the trace and the flags before simulating --------------------------

def test_capacity_and_plan_refuse_a_bad_trace_before_any_simulation(tmp_path, capsys, no_simulation):
    bad = _jsonl(tmp_path / "bad.jsonl", [{"arrival_time": 0, "prompt_tokens": -5, "output_tokens": 3}])
    where = f"{bad}:1: field 'prompt_tokens'"
    _refused(capsys, main([*CAPACITY, "--replay", bad]), where)
    _refused(capsys, main([*CAPACITY, "--trace", bad]), where)
    out = tmp_path / "plan"
    _refused(capsys, main([*PLAN, "--trace", bad, "--out", str(out)]), where)
    _refused(capsys, main([*PLAN, "--replay", bad, "--out", str(out)]), where)
    assert not (out / "plan.csv").exists()  # (was: exit 0 with an ERROR row in plan.csv)
    _refused(capsys, main([*PLAN, "--prompt-len", "zipf:1", "--out", str(out)]), "zipf")


@pytest.mark.parametrize("flag,value", [("--max-total-tokens", "-1"), ("--duration", "1e300"), ("--duration", "nan"),
                                        ("--seeds", "0"), ("--jobs", "-1"), ("--max-gpus", "1e9"), ("--cv", "inf"),
                                        ("--rel-tol", "1"), ("--max-pool-replicas", "100000"), ("-n", "0")])
def test_plan_refuses_out_of_range_flags(tmp_path, capsys, flag, value, no_simulation):
    _parse_refused(capsys, [*PLAN, "--out", str(tmp_path / "p"), f"{flag}={value}"], "argument", flag)


def test_a_plan_with_an_error_row_or_nothing_to_size_exits_1(tmp_path, capsys, monkeypatch):
    def failing(spec):
        return {"key": spec.key, "seed": spec.seed, "qps": spec.qps, "error": "RuntimeError: planted", "wall_s": 0}
    monkeypatch.setattr(sim.capacity.search, "evaluate_point", failing)
    out = tmp_path / "plan"
    rc = main([*PLAN, "--out", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert rc == 1 and "configurations ended in an error" in err[-1] and "planted" in err[-1]
    assert "error" in set(pd.read_csv(out / "plan.csv")["status"])
    rc = main(["plan", "--model", "llama-2-70b", "--gpus", "a100-80gb", "--max-gpus", "1", "-q", "--out", str(out)])
    _refused(capsys, rc, "none of the 1 configurations can run", status=1)


# ---- defect 12: the documented python -m tools follow the contract ---------------------------------------------

def test_plots_and_timeline_tools_refuse_missing_and_incomplete_folders(tmp_path, capsys):
    from sim.outputs import plots, timeline
    _refused(capsys, plots.main([str(tmp_path / "none")]), "is not a servesim run folder")
    incomplete = tmp_path / "inc"
    incomplete.mkdir()
    for name in ("summary.json", "requests.csv", "batches.csv"):
        (incomplete / name).write_text("{}" if name.endswith("json") else "")
    _refused(capsys, timeline.main([str(incomplete)]), "incomplete run folder")
    _refused(capsys, plots.main([str(incomplete)]), "incomplete run folder")
    with pytest.raises(SystemExit) as e:
        timeline.main([str(incomplete), "--window", "5:1"])
    _refused(capsys, e.value.code, "--window", "python -m sim.outputs.timeline --help")


def test_python_m_plots_prints_no_traceback():
    res = subprocess.run([sys.executable, "-m", "sim.outputs.plots", "/nonexistent/run"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "Traceback" not in res.stderr, res.stderr


# ---- defect 14: every numeric flag is checked at parse time ----------------------------------------------------

@pytest.mark.parametrize("argv,flag", [
    (["simulate", "-n", "10", "--cv", "nan"], "--cv"), (["simulate", "--cv", "inf"], "--cv"),
    (["simulate", "--cv", "-1"], "--cv"), (["simulate", "--qps", "0"], "--qps"),
    (["simulate", "--replicas", "1000000000"], "--replicas"), (["simulate", "--max-batch", "1e9"], "--max-batch"),
    (["simulate", "-n", "99999999999"], "--num-requests"), (["simulate", "--gpu-mem-util", "1.5"], "--gpu-mem-util"),
    (["simulate", "--watermark", "1"], "--watermark"), (["simulate", "--kv-link-bandwidth", "inf"], "--kv-link"),
    (["capacity", "-j", "-1"], "--jobs"), (["calibrate", "--rounds", "-1", "--dry-run"], "--rounds"),
    (["calibrate", "--budget-s", "nan"], "--budget-s"), (["validate", "--out", "x", "--capacity-duration", "nan"],
                                                         "--capacity-duration"),
    (["trace", "generate", "--out", "x", "--qps", "١٢"], "--qps"), (["cost", "--decodes", "-1"], "--decodes"),
    (["simulate", "--sessions", "3:nan"], "--sessions"), (["simulate", "--seed", "9" * 5000], "--seed"),
])
def test_named_flags_are_refused_by_name(capsys, argv, flag):
    line = _parse_refused(capsys, argv, "argument", flag)
    assert "characters cut" in line or len(line) < 300


#: positional arguments and required flags each (sub)command needs before its flags can be parsed
_REQUIRED = {"plan": ["--out", "x"], "validate": ["--out", "x"], "report": ["r", "--out", "x"],
             "trace generate": ["--out", "x"], "trace convert": ["a", "b"], "trace stats": ["a"]}
#: value types that take names, not numbers
_NAMES = {"name_list", "_ops_list"}
BAD = ["nan", "inf", "-inf", "-1", "1e999", "abc", "", "\u0661\u0662", "9" * 400]


def _typed_flags() -> list[tuple[str, str]]:
    """(command, flag) of every flag of every subcommand whose value is parsed by a type (not a name or a path)."""
    out = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for sub, p in a.choices.items():
                    walk(p, f"{name} {sub}".strip())
            elif (a.option_strings and a.type not in (None, str) and not a.choices
                  and getattr(a.type, "__name__", "") not in _NAMES):
                out.append((name, max(a.option_strings, key=len)))
    walk(build_parser(), "")
    return out


def test_the_audit_sees_every_command():
    commands = {c for c, _ in _typed_flags()}
    assert {"simulate", "cost", "capacity", "plan", "engine", "calibrate", "validate", "trace generate",
            "trace convert", "trace stats"} <= commands
    assert len(_typed_flags()) > 150


def test_every_numeric_flag_refuses_non_finite_negative_huge_and_unicode_values(capsys):
    parser = build_parser()
    accepted = []
    for command, flag in _typed_flags():
        for bad in BAD:
            if flag == "--window" and bad == "":
                continue
            argv = [*command.split(), *_REQUIRED.get(command, []), f"{flag}={bad}"]
            try:
                parser.parse_args(argv)
                accepted.append(f"{command} {flag}={bad[:12]}")
            except SystemExit as e:
                line = capsys.readouterr().err.strip()
                assert e.code == 2 and "\n" not in line and len(line) <= 400 and flag in line, (argv, line)
    assert not accepted, accepted


# ---- defect 15: an interrupted re-run leaves no manifest; Ctrl-C at start-up -----------------------------------

def test_an_interrupted_rerun_leaves_the_folder_incomplete(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main([*SIM, "--out", str(out)]) == 0
    check_run(out)
    import sim.serving.simulator

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(sim.serving.simulator, "simulate", interrupted)
    capsys.readouterr()
    assert main([*SIM, "--out", str(out)]) == errors.INTERRUPTED
    assert capsys.readouterr().err == "servesim: interrupted\n"
    with pytest.raises(ValueError, match="incomplete run folder"):
        check_run(out)  # (was: the previous run's manifest made report read the old results as this run's)
    _refused(capsys, main(["report", str(out), "--out", str(tmp_path / "rep")]), "incomplete run folder")


def test_ctrl_c_while_the_parser_is_built_is_one_line(capsys, monkeypatch):
    import sim.cli.main

    def interrupted(*_command):
        raise KeyboardInterrupt
    monkeypatch.setattr(sim.cli.main, "build_parser", interrupted)
    assert main(["simulate"]) == errors.INTERRUPTED
    assert capsys.readouterr().err == "servesim: interrupted\n"


# ---- defect 17: --trace with generator flags is refused, naming both --------------------------------------------

def test_trace_with_generator_flags_is_refused_naming_both(tmp_path, capsys):
    trace = _jsonl(tmp_path / "t.jsonl", [{"arrival_time": 0.1 * i, "prompt_tokens": 20, "output_tokens": 4}
                                          for i in range(5)])
    _refused(capsys, main(["simulate", "--model", "tiny", "-q", "--trace", trace, "--qps", "2"]),
             "--trace", "--qps", "own arrival times")
    _refused(capsys, main(["simulate", "--model", "tiny", "-q", "--trace", trace, "--prompt-len", "fixed:5"]),
             "--trace", "--prompt-len")
    assert main(["simulate", "--model", "tiny", "-q", "--trace", trace, "-n", "3", "--seed", "1"]) == 0
    capsys.readouterr()
    _refused(capsys, main(["trace", "stats", trace, "--qps", "3"]), trace, "--qps", "own arrival times")
    _refused(capsys, main(["trace", "convert", trace, str(tmp_path / "o.jsonl"), "--arrival", "gamma"]), "--arrival")
    lengths = tmp_path / "l.csv"
    lengths.write_text("num_prefill_tokens,num_decode_tokens\n10,5\n20,3\n")
    assert main(["trace", "stats", str(lengths), "--qps", "3"]) == 0  # a length table takes its arrivals from them
    from calibration.validate.cli import _workload
    args = build_parser().parse_args(["validate", "--out", "x", "--trace", trace, "--prompt-len", "fixed:5"])
    with pytest.raises(ValueError, match="--trace gives the requests; --prompt-len"):
        _workload(args)


# ---- defect 20: bounded messages, full disks named --------------------------------------------------------------

def test_huge_values_are_echoed_bounded(tmp_path, capsys):
    """(was: `--model` of 100,000 characters printed a 100,043-character line)"""
    _refused(capsys, main(["simulate", "-n", "3", "-q", "--model", "x" * 100_000]), "unknown model")
    _refused(capsys, main(["simulate", "-n", "3", "-q", "--gpu", "g" * 100_000]))
    bad = tmp_path / "huge.jsonl"
    bad.write_text('{"arrival_time": 0, "prompt_tokens": "' + "x" * 5_000_000 + '", "output_tokens": 3}\n')
    _refused(capsys, main(["simulate", "--model", "tiny", "-q", "--trace", str(bad)]), str(bad))


def test_a_full_disk_names_the_file_it_was_writing(tmp_path, capsys, monkeypatch):
    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # no file name, as a failing write() gives
    monkeypatch.setattr(pd.DataFrame, "to_csv", full)
    from sim.outputs import run_folder
    monkeypatch.setattr(run_folder, "write_table", full)  # run folders' tables (sim.outputs.tables, not to_csv)
    out = tmp_path / "run"
    _refused(capsys, main([*SIM, "--out", str(out)]), str(out / "requests.csv"), "No space left on device")
    plan_out = tmp_path / "plan"
    rc = main([*PLAN, "--out", str(plan_out)])  # after plan's progress line, once the points are simulated
    last = capsys.readouterr().err.splitlines()[-1]
    assert rc == 2 and last == f"servesim: error: {plan_out / 'plan.csv'}: No space left on device"


# ---- the contract itself --------------------------------------------------------------------------------------

@pytest.mark.parametrize("exc,words", [
    (RecursionError("maximum recursion depth exceeded"), "nested too deeply"),
    (OverflowError("int too large to convert to float"), "out of range"),
    (MemoryError(), "out of memory"), (ValueError("two\nlines " + "v" * 10_000), "two lines"),
    (KeyError("unknown model 'x'"), "unknown model 'x'"), (PermissionError(13, "Permission denied", "/x/y"), "/x/y"),
])
def test_input_errors_escaping_a_reader_are_one_line(capsys, exc, words):
    def command(argv):
        raise exc
    _refused(capsys, errors.run_cli(command), words)


def test_a_bug_is_one_line_and_exit_1_and_debug_shows_the_traceback(capsys, monkeypatch):
    def command(argv):
        return None + 1

    def lookup(argv):
        return {}["completed"]
    assert errors.run_cli(command) == errors.FAILED
    err = capsys.readouterr().err
    assert err.startswith("servesim: internal error: TypeError: ") and err.count("\n") == 1
    assert "SERVESIM_DEBUG=1" in err
    assert errors.run_cli(lookup) == errors.FAILED  # a bare key is a bug, not a refused input
    assert capsys.readouterr().err.startswith("servesim: internal error: KeyError: 'completed'")
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(TypeError):
        errors.run_cli(command)


def test_usage_errors_are_one_line(capsys):
    _parse_refused(capsys, ["simulate", "--no-such-flag"], "unrecognized arguments")
    _parse_refused(capsys, ["no-such-command"], "invalid choice")
    assert len(errors.one_line("x" * 10**6)) <= errors.MAX_MESSAGE
