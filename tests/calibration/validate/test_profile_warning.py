"""Issue 32 fault 9: validating with a CPU profile says that it belongs to the machine it was measured on."""

from __future__ import annotations

import json

from tests.paths import TINY_CPU_PROFILE


def test_a_cpu_profile_is_said_to_belong_to_its_machine():
    from calibration.validate.run import cpu_profile_warning
    meta = json.loads((TINY_CPU_PROFILE / "profile.json").read_text())
    text = cpu_profile_warning(TINY_CPU_PROFILE, meta)
    assert f"profile {TINY_CPU_PROFILE} was measured on a CPU ({meta['device']['name']}" in text
    assert "belongs to the machine and the moment it was measured on" in text
    assert "leave out --profile to calibrate on this machine first" in text


def test_validate_drives_engine_and_simulator_with_the_same_closed_loop_clients(tmp_path, capsys):
    import pytest
    pytest.importorskip("torch")
    from sim.cli.main import main
    out = tmp_path / "val"
    assert main(["validate", "--model", "tiny", "--device", "cpu", "--profile", str(TINY_CPU_PROFILE), "-n", "8",
                 "--prompt-len", "uniform:16:32", "--output-len", "uniform:3:5", "--schedulers", "vllm",
                 "--max-concurrency", "2", "--offline", "--op-check", "0", "--no-plots", "--no-timeline",
                 "--out", str(out), "-q"]) == 0
    assert "a CPU profile belongs to the machine" in capsys.readouterr().err
    for side in ("engine", "simulator"):
        summary = json.loads((out / "vllm-offline" / side / "summary.json").read_text())
        assert summary["closed_loop"]["max_concurrency"] == 2 and summary["closed_loop"]["sent"] == 8, side
