"""The engine and calibration refuse a CPU run that would not fit in memory, before allocating (issue 17)."""

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
