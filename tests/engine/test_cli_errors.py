"""One-line refusals of the engine's command line (issue 17): a CPU run that would not fit in memory, before
allocating; a checkpoint without the safetensors package."""

from __future__ import annotations

import pytest

from sim.cli.main import main

pytest.importorskip("torch")


def test_a_7b_model_on_the_cpu_is_refused_before_allocating(capsys, monkeypatch):
    """The engine and calibration check weights + KV + activations against available memory first."""
    import engine.device
    monkeypatch.setattr(engine.device, "available_host_bytes", lambda: 16 << 30)
    assert main(["engine", "--model", "llama-2-7b", "--device", "cpu", "-n", "2", "-q"]) == 1
    err = capsys.readouterr().err
    assert "GiB is available" in err and "weights 25.1 GiB" in err and err.count("\n") == 1
    assert main(["calibrate", "--model", "llama-2-7b", "--device", "cpu", "--out", "/nonexistent/x", "-q"]) == 2
    assert "whole-iteration bench" in capsys.readouterr().err


def test_a_checkpoint_without_safetensors_is_one_line(tmp_path, capsys, monkeypatch):
    """safetensors is hidden from imports (None in sys.modules), so the test runs whether or not it is installed."""
    import sys
    for name in ("safetensors", "safetensors.torch"):
        monkeypatch.setitem(sys.modules, name, None)
    assert main(["engine", "--model", "tiny", "--device", "cpu", "-n", "2", "-q", "--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'safetensors'" in err and "pip install safetensors" in err and err.count("\n") == 1
