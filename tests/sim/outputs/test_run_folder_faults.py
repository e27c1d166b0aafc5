"""Output faults: checked before any work, one line and a non-zero exit, never a half-written folder accepted."""

from __future__ import annotations

import errno
import json
import os

import pandas as pd
import pytest

from sim.cli.main import main
from sim.outputs import run_folder
from sim.outputs.run_folder import check_run, read_run, write_run

SIM = ["simulate", "-n", "5", "--model", "tiny", "--qps", "50", "-q"]


def _one_line_error(capsys, rc: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "Traceback" not in err, err
    assert all(w in err for w in words), err
    return err


def test_out_naming_a_file_or_a_path_under_a_file_is_refused_before_simulating(tmp_path, capsys, monkeypatch):
    import sim.serving.simulator
    ran = []
    monkeypatch.setattr(sim.serving.simulator, "simulate", lambda *a, **k: ran.append(1))
    f = tmp_path / "taken"
    f.write_text("x")
    _one_line_error(capsys, main(SIM + ["--out", str(f)]), "is not a folder")
    _one_line_error(capsys, main(SIM + ["--out", str(f / "sub")]), "is a file")
    assert not ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_out_in_a_read_only_folder_is_refused(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _one_line_error(capsys, main(SIM + ["--out", str(ro / "run")]), "cannot write")
    finally:
        ro.chmod(0o700)


def test_a_full_disk_while_writing_is_one_line_and_leaves_no_complete_folder(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(SIM + ["--out", str(out)]) == 0
    assert check_run(out)
    capsys.readouterr()

    def full(frame, path, *a, **k):
        open(path, "w").write("request_id,arr")  # a torn first line, then the disk fills
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(run_folder, "write_table", full)  # the tables' writer (sim.outputs.tables)
    _one_line_error(capsys, main(SIM + ["--out", str(out)]), "No space left on device")
    with pytest.raises(ValueError, match="incomplete run folder"):
        read_run(out)  # the old manifest went first: the previous complete run is not mistaken for this one
    assert not list(out.glob(".*.tmp-*"))  # temporary files cleaned up


def test_an_interrupted_write_is_refused_by_report_and_readers(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(SIM + ["--out", str(out)]) == 0
    summary, requests, batches = read_run(out)

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(run_folder, "_atomic_text", interrupted)  # SIGINT while writing summary.json
    with pytest.raises(KeyboardInterrupt):
        write_run(out, summary, requests, batches)
    monkeypatch.undo()
    rc = main(["report", str(out), "--out", str(tmp_path / "rep")])
    _one_line_error(capsys, rc, "incomplete run folder", str(out))
    assert not (tmp_path / "rep").exists()  # refused before writing anything


def test_a_truncated_table_is_refused_naming_the_file(tmp_path):
    out = tmp_path / "run"
    assert main(SIM + ["--out", str(out)]) == 0
    rows = len(pd.read_csv(out / "requests.csv"))
    text = (out / "batches.csv").read_text()
    (out / "batches.csv").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match="batches.csv"):
        read_run(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["files"]["requests.csv"]["rows"] == rows > 0


def test_capacity_results_path_and_plan_out_checked_first(tmp_path, capsys):
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    rc = main(["capacity", "--model", "tiny", "-n", "20", "--seeds", "1", "-q", "--results", str(d)])
    _one_line_error(capsys, rc, "--results", "is a folder")
    f = tmp_path / "file"
    f.write_text("")
    rc = main(["plan", "--model", "tiny", "-n", "20", "--seeds", "1", "-q", "--out", str(f)])
    _one_line_error(capsys, rc, "--out", "not a folder")
