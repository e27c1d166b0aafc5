"""The committed tiny CPU profile: fit quality, `servesim calibrate --report`, `simulate --profile` (no torch)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from calibration.report import LEAVE_OUT, fit_report
from sim.catalog.models import get_model
from sim.cli.main import main
from sim.cost.profile_format import model_ops, read_profile
from sim.cost.profiled import ProfiledCostModel
from sim.ops import COMMUNICATION_OPS
from tests.paths import TINY_CPU_PROFILE as TINY_CPU
from tests.profile_fixtures import synthetic_profile


def test_committed_profile_is_complete_and_interpolates_within_10_percent():
    prof = read_profile(TINY_CPU)
    assert prof.meta["status"] == "complete" and prof.meta["device"]["type"] == "cpu"
    ProfiledCostModel(prof, "tiny")  # every op present, shapes match the catalogue's tiny model
    df = fit_report(prof)
    table = df[df["kind"] == LEAVE_OUT]
    assert set(table["op"]) == set(model_ops(get_model("tiny"))) - set(COMMUNICATION_OPS)  # no MoE ops
    scored = table[table["held_out"] > 0]
    assert len(scored) == len(table)
    print("\n" + scored[["op", "held_out", "interp_median_pct", "interp_max_pct"]].to_string(index=False))
    assert (scored["interp_median_pct"] < 10).all(), scored[scored["interp_median_pct"] >= 10]


def test_report_command_prints_and_writes_report(tmp_path, capsys):
    prof = shutil.copytree(TINY_CPU, tmp_path / "p")
    (prof / "report.md").unlink()
    assert main(["calibrate", "--report", str(prof), "--gpu", "h100"]) == 0
    out = capsys.readouterr().out
    assert "| input_norm | all |" in out and "Transfer to h100: an ESTIMATE" in out
    assert (prof / "report.md").read_text() in out


def test_dry_run_estimates_the_7b_profile_without_measuring(capsys):
    assert main(["calibrate", "--dry-run", "--model", "llama-2-7b", "--tp", "1,2,4,8"]) == 0
    out = capsys.readouterr().out
    est = float(out.split("estimated ")[1].split(" s")[0])
    assert 0 < est < 600  # the whole TP 1,2,4,8 profile is planned to fit in one 10-minute GPU command


def test_simulate_with_the_committed_profile(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["simulate", "--model", "tiny", "--profile", str(TINY_CPU), "-n", "60", "--qps", "50",
            "--prompt-len", "uniform:8:300", "--output-len", "uniform:4:40", "--kv-blocks", "512", "-q",
            "--out", str(out)]
    assert main(args) == 0
    assert "cost model profiled" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    cost = summary["cost_model"]
    assert cost["name"] == "profiled" and cost["profile_device"] and cost["estimate"] is False
    assert summary["requests"]["completed"] == 60
    # the profiled stage times are what batches.csv records: a decode iteration of the tiny model on this CPU
    # costs tens to hundreds of microseconds, far above the A100 roofline's few microseconds
    assert summary["latency_s"]["tbt"]["p50"] > 2e-5
    assert main(args[:-2] + ["--gpu", "h100"]) == 0
    assert "are an estimate" in capsys.readouterr().err


def test_simulate_refuses_a_mismatched_profile(tmp_path, capsys):
    prof = synthetic_profile(tmp_path / "p", "tiny")
    assert main(["simulate", "--model", "llama-2-7b", "--profile", str(prof), "-n", "5", "-q"]) == 2
    assert "whose shapes differ" in capsys.readouterr().err
    assert main(["simulate", "--model", "tiny", "--profile", str(tmp_path / "none"), "-n", "5", "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_help_report_and_dry_run_work_without_torch(tmp_path):
    """torch is blocked from importing: the CLI, --report and --dry-run must not need it."""
    code = ("import sys; sys.modules['torch'] = None\n"
            "from sim.cli.main import main\n"
            "assert main(['calibrate', '--dry-run', '--model', 'tiny', '--device', 'cpu']) == 0\n"
            f"assert main(['calibrate', '--report', {str(tmp_path / 'p')!r}]) == 0\n"
            "main(['--help'])\n")
    shutil.copytree(TINY_CPU, tmp_path / "p")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "calibrate" in res.stdout and "estimated" in res.stdout
