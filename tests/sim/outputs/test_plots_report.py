"""Tests of run plots (sim.outputs.plots), run comparison reports (sim.outputs.report) and `simulate --plots/--timeline`, `report`."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from sim.cli.main import main
from sim.outputs.plots import PLOT_FILES, gantt_window, load_run, write_plots
from sim.outputs.report import COMPARISON_PLOTS, metrics_table, write_report
from sim.outputs.run_folder import write_run
from sim.serving.simulator import SimConfig, simulate
from sim.workload.trace import read_trace, write_trace
from tests.paths import EXAMPLE_TRACE as EXAMPLE

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    """Two small run folders (orca, and sarathi with 2 pipeline stages) of the example trace's first 60 requests."""
    base = tmp_path_factory.mktemp("runs")
    trace = read_trace(EXAMPLE).requests[:60]
    out = []
    for name, cfg in (("orca", SimConfig(scheduler="orca")), ("sarathi", SimConfig(scheduler="sarathi", pp=2))):
        res = simulate(trace, cfg)
        out.append(write_run(base / name, res.summary, res.requests, res.batches))
    return out


def test_write_plots_makes_every_png(runs, tmp_path):
    paths = write_plots(runs[1], tmp_path / "plots")
    assert [p.name for p in paths] == list(PLOT_FILES)
    for p in paths:
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 5000


def test_gantt_window_is_inside_the_run(runs):
    run = load_run(runs[1])
    t0, t1 = gantt_window(run.batches, num_batches=10)
    b = run.batches
    assert b["start"].min() <= t0 < t1 <= b["end"].max()
    # ten micro-batches pass both stages in the window; with 2 stages in flight one neighbour may fit too
    for stage in (0, 1):
        assert 10 <= ((b["start"] >= t0) & (b["end"] <= t1) & (b["stage"] == stage)).sum() <= 11


def test_metrics_table_values(runs):
    table = metrics_table([load_run(runs[0], "a"), load_run(runs[1], "b")])
    rows = {r[0]: r[1:] for r in table}
    assert table[0] == ["metric", "a", "b"]
    assert rows["scheduler"] == ["orca", "sarathi"] and rows["TP x PP x replicas"] == ["1 x 1 x 1", "1 x 2 x 1"]
    assert rows["token budget"] == ["unlimited (default)", "512 (default)"]
    assert rows["requests completed"] == ["60", "60"]
    ttft = load_run(runs[0]).summary["latency_s"]["ttft"]["p99"]
    assert rows["TTFT P99 (ms)"][0] == f"{ttft * 1e3:.1f}"


def test_write_report_markdown_and_self_contained_html(runs, tmp_path):
    md, page = write_report(runs, tmp_path / "rep", labels=["orca", "sarathi pp2"], run_plots=True)
    text = md.read_text()
    assert "| metric | orca | sarathi pp2 |" in text
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(linked) == len(COMPARISON_PLOTS) + 2 * len(PLOT_FILES)
    assert all((md.parent / f).read_bytes()[:8] == PNG for f in linked)
    html = page.read_text()
    images = re.findall(r'src="([^"]+)"', html)
    assert len(images) == len(linked) and all(s.startswith("data:image/png;base64,") for s in images)
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == PNG
    assert "<td>TTFT P99 (ms)</td>" in html
    with pytest.raises(ValueError, match="2 labels for 1"):
        write_report(runs[:1], tmp_path / "x", labels=["a", "b"])


def test_cli_simulate_plots_timeline_and_report(tmp_path, capsys):
    trace = tmp_path / "t.jsonl"
    write_trace(trace, read_trace(EXAMPLE).requests[:30])
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["simulate", "--trace", str(trace), "--scheduler", "vllm", "--out", str(a), "-q", "--plots",
                 "--timeline"]) == 0
    assert all((a / f).is_file() for f in PLOT_FILES) and (a / "timeline.json").is_file()
    assert main(["simulate", "--trace", str(trace), "--out", str(b), "-q"]) == 0
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    capsys.readouterr()
    assert main(["simulate", "--trace", str(trace), "--plots", "-q"]) == 2
    assert "give --out DIR" in capsys.readouterr().err


def test_cli_simulate_imports_other_formats_and_clips(tmp_path, capsys):
    src = tmp_path / "sw.csv"
    src.write_text("arrival_timestamp,prompt_size,token_size\n" + "".join(f"{i * 0.2},{3000 + 100 * i},{400}\n"
                                                                         for i in range(20)))
    # Llama-2-7B's context is 4096: prompts 3000 + 100 i exceed it for i >= 11 (9 requests), prompt + 400 output
    # tokens for i = 7..10 (4 more); by default they are clipped to the context (issue 32), said once
    assert main(["simulate", "--trace", str(src), "--json", "-q"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"]["completed"] == 20 and summary["requests"]["skipped"] == 0
    assert summary["requests"]["clipped_to_context"].startswith("workload: clipped 13 of 20 requests to llama-2-7b's")
    assert main(["simulate", "--trace", str(src), "--json", "-q", "--max-total-tokens", "100000"]) == 0  # no clip
    summary = json.loads(capsys.readouterr().out)
    assert summary["requests"]["skipped"] == 13 and summary["requests"]["completed"] == 7
    assert summary["requests"]["skipped_by_reason"] == {"prompt_exceeds_context": 9, "total_exceeds_context": 4}
    assert main(["simulate", "--trace", str(src), "--trace-format", "splitwise", "--max-total-tokens", "4096",
                 "--json", "-q"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["requests"]["completed"] == 20 and "clipped 13 requests to 4096" in out.err


def test_cli_simulate_length_table_uses_generator_arrival_flags(tmp_path, capsys):
    src = tmp_path / "lengths.csv"
    src.write_text("num_prefill_tokens,num_decode_tokens\n" + "".join(f"{100 + i},{5 + i % 3}\n" for i in range(50)))
    assert main(["simulate", "--trace", str(src), "--qps", "1000", "--arrival", "static", "--json", "-q"]) == 0
    out = capsys.readouterr()
    summary = json.loads(out.out)
    assert summary["requests"]["completed"] == 50 and "generated static arrivals" in out.err
    # all 50 arrive at t = 0: the last to finish has waited the whole makespan, and the later ones queued
    assert summary["latency_s"]["e2e"]["max"] == pytest.approx(summary["throughput"]["makespan_s"])
    assert summary["latency_s"]["scheduling_delay"]["max"] > 0
