"""benchmarks/gpu_run.sh, the one-call GPU script, dry-run on the CPU so that it cannot rot before a GPU is lent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import ROOT

pytest.importorskip("torch")


@pytest.mark.skipif(shutil.which("timeout") is None or sys.platform != "linux", reason="needs GNU timeout")
def test_cpu_dry_run_completes_and_returns_at_most_eight_files(tmp_path):
    out = tmp_path / "out"
    # the GPU's time limits (9 minutes in all) are not this CPU's: ten times each step's limit, so that a busy
    # machine slows the dry run without failing it (quiet: about 75 s; busy: 165 s seen); the quick calibration
    # (about 12 s quiet) gets ten times its dry-run budget too, so that it completes instead of stopping partial
    env = dict(os.environ, MODEL="tiny", DEVICE="cpu", OUT=str(out), WORK=str(tmp_path / "work"),
               TOTAL_S="3000", LIMIT_SCALE="10", CAL_BUDGET_CPU="250", PYTHON=sys.executable)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # python3 = this interpreter
    p = subprocess.run(["bash", "benchmarks/gpu_run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=3600, check=False)
    log = (out / "commands.log").read_text() if (out / "commands.log").exists() else ""
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    files = sorted(f.name for f in out.iterdir())
    assert len(files) <= 8 and all(f.is_file() for f in out.iterdir()), files
    assert {"env.txt", "tests.txt", "engine_speed.txt", "profile.tgz", "validate.txt", "validate.tgz",
            "flex.txt", "commands.log"} == set(files), (files, log)
    assert "timed out" not in log and "exit 0" in log, log
    for step in ("speed-graphs", "calibrate", "validate", "flex"):
        assert f"{step}: exit 0" in log, (step, log)
    assert "compiles:" in (out / "flex.txt").read_text()
