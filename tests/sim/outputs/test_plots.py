"""Readable plots (sim.outputs.plots): plain log tick labels, TTFT in ms with percentile markers, many-run styles, PP=1
Gantt, prefix-cache plots and the report's hit-rate row."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from sim.outputs.plots import (
    KIND_COLORS,
    KV_STACK,
    PERCENTILE_MARKERS,
    PLOT_FILES,
    PREFIX_CACHE_PLOT,
    Run,
    axis_label,
    batch_gaps,
    cdf_figure,
    hit_rate_over_time,
    kv_cache_figure,
    latency_over_time_figure,
    load_run,
    plain_number,
    plt,
    prefix_cache_figure,
    run_style,
    stage_gantt_figure,
    tbt_figure,
    write_plots,
)
from sim.outputs.report import _comparison_figure, metrics_table, write_report
from sim.outputs.run_folder import write_run
from sim.serving.simulator import SimConfig, simulate
from sim.workload.generator import generate_trace

PLAIN = re.compile(r"^-?[0-9][0-9,]*(\.[0-9]+)?$")


def fake_run(label: str, scale: float = 1.0, n: int = 200, pp: int = 1) -> Run:
    """A run whose latencies span 5-500 ms (times ``scale``), so CDF axes are logarithmic."""
    rng = np.random.default_rng(zlib.crc32(label.encode()))
    gaps = np.sort(rng.lognormal(np.log(0.03), 0.9, 2000)).clip(0.005, 0.5) * scale
    pct = np.linspace(0, 100, 101)
    tbt = {f"p{q}": float(np.percentile(gaps, q)) for q in (50, 90, 99)}
    requests = pd.DataFrame({"ttft": rng.lognormal(np.log(0.2), 1.2, n) * scale,
                             "tpot": rng.uniform(0.01, 0.05, n) * scale, "tbt_max": rng.uniform(0.05, 0.5, n) * scale,
                             "arrival_time": np.sort(rng.uniform(0, 60, n)), "e2e": rng.uniform(1, 20, n)})
    summary = {"config": {"scheduler": "sarathi", "model": "m", "gpu": "g", "tp": 1, "pp": pp},
               "latency_s": {"tbt": tbt, "tbt_cdf": {"percentile": pct.tolist(),
                                                     "value": np.percentile(gaps, pct).tolist()}},
               "pipeline": {"mean_bubble_fraction": 0.02, "median_bubble_s": 0.0005}}
    return Run(label, summary, requests, pd.DataFrame())


def fake_batches(stages: int = 1, replicas: int = 1) -> pd.DataFrame:
    """Batches of 10 ms cycling prefill-only, decode-only, mixed, with gaps of 0.5 ms (2 ms before every 4th)."""
    rows = []
    for rep in range(replicas):
        t = 0.0
        for i in range(40):
            t += 0.002 if i % 4 == 0 else 0.0005
            pre, dec = ((512, 0), (0, 32), (256, 16))[i % 3]
            for st in range(stages):
                rows.append({"replica": rep, "stage": st, "batch_id": i, "start": t + 0.01 * st,
                             "end": t + 0.01 * (st + 1), "num_prefill_tokens": pre, "num_decode_tokens": dec})
            t += 0.01
    return pd.DataFrame(rows)


def tick_labels(fig: plt.Figure, axis: str = "x") -> list[str]:
    """Every non-empty major and minor tick label of every axis of ``fig``, after drawing it."""
    fig.canvas.draw()
    labels = []
    for ax in fig.axes:
        ticks = ax.get_xticklabels(which="both") if axis == "x" else ax.get_yticklabels(which="both")
        labels += [t.get_text() for t in ticks if t.get_text()]
    return labels


def legend_lines(ax: plt.Axes) -> list:
    """The line handles of the axis's legend."""
    return list(ax.get_legend().legend_handles)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_axis_label_replaces_an_old_unit():
    assert axis_label("time to first token", "ms") == "time to first token (ms)"
    assert axis_label("time to first token (s)", "s") == "time to first token (s)"


def test_plain_number():
    assert [plain_number(v) for v in (0.5, 20.0, 12.34, 2963.9, 20000.0)] == ["0.5", "20", "12.3", "2,964", "20,000"]


def test_tbt_log_axis_has_plain_tick_labels():
    fig = tbt_figure([fake_run("a"), fake_run("b", 1.5)])
    assert fig.axes[0].get_xscale() == "log"
    labels = tick_labels(fig)
    assert labels and all(PLAIN.match(t) for t in labels), labels
    assert not any("10^" in t or "$" in t or "\\times" in t for t in labels)
    assert {"10", "20", "50", "100"} <= set(labels)


def test_narrow_range_is_linear_with_plain_labels():
    fig = tbt_figure([_narrow_run()])
    assert fig.axes[0].get_xscale() == "linear"
    labels = tick_labels(fig)
    assert labels and all(PLAIN.match(t) for t in labels), labels


def _narrow_run() -> Run:
    """A run whose token gaps all lie between 10 and 11 ms."""
    run = fake_run("narrow", n=50)
    pct = np.linspace(0, 100, 11)
    run.summary["latency_s"]["tbt_cdf"] = {"percentile": pct.tolist(), "value": (0.010 + pct / 1e5).tolist()}
    run.summary["latency_s"]["tbt"] = {"p50": 0.0105, "p90": 0.0109, "p99": 0.01099}
    run.requests["tpot"] = np.linspace(0.0101, 0.0109, 50)
    run.requests["tbt_max"] = np.linspace(0.0102, 0.011, 50)
    return run


@pytest.mark.parametrize("make", [lambda runs: cdf_figure(runs, "ttft", "time to first token", "TTFT", unit="ms"),
                                  lambda runs: _comparison_figure("ttft_cdf.png", runs)])
def test_ttft_cdf_in_ms_with_percentile_markers(make):
    run = fake_run("a")
    fig = make([run])
    main, tail = fig.axes[:2]
    assert tail.get_xlabel() == "time to first token (ms)"
    ttft_ms = run.requests["ttft"].to_numpy() * 1e3
    for ax in (main, tail):
        marks = {line.get_marker(): (line.get_xdata()[0], line.get_ydata()[0]) for line in ax.get_lines()
                 if line.get_marker() in PERCENTILE_MARKERS.values()}
        for q, m in PERCENTILE_MARKERS.items():
            assert marks[m] == pytest.approx((np.percentile(ttft_ms, q), q / 100))
    assert "P99" in legend_lines(main)[0].get_label() and "ms" in legend_lines(main)[0].get_label()
    assert all(PLAIN.match(t) for t in tick_labels(fig))


def test_report_tbt_with_nine_runs_is_distinguishable():
    runs = [fake_run(f"run {i}", 1 + i / 4) for i in range(9)]
    fig = _comparison_figure("tbt_cdf.png", runs)
    main, tail = fig.axes[:2]
    handles = legend_lines(main)
    assert len(handles) == 9
    assert len({(to_rgba(h.get_color()), h.get_linestyle()) for h in handles}) == 9
    # with many runs only the all-gaps curve per run: 9 curves per panel, not 27
    curves = [line for line in main.get_lines() if line.get_marker() in ("None", "", None)]
    assert len(curves) == 9
    # the tail panel (0.9-1) holds each run's P99 marker at 0.99, one per run at its own value
    p99 = sorted(line.get_xdata()[0] for line in tail.get_lines() if line.get_marker() == PERCENTILE_MARKERS[99])
    assert p99 == pytest.approx(sorted(r.summary["latency_s"]["tbt"]["p99"] * 1e3 for r in runs))
    assert tail.get_ylim()[0] >= 0.85 and tail.get_ylim()[1] <= 1.01


def test_run_styles_stay_unique_beyond_ten_runs():
    styles = [run_style(i) for i in range(40)]
    assert len({(to_rgba(s["color"]), s["ls"]) for s in styles}) == 40
    assert styles[10]["color"] == styles[0]["color"] and styles[10]["ls"] != styles[0]["ls"]


def test_latency_over_time_in_ms():
    fig = latency_over_time_figure(fake_run("a"))
    assert [ax.get_ylabel() for ax in fig.axes] == ["TTFT (ms)", "max token gap (ms)"]
    assert not any("10^" in t or "$" in t for t in tick_labels(fig, "y"))


def test_batch_gaps():
    gaps = batch_gaps(fake_batches(replicas=2))
    assert len(gaps) == 2 * 39
    lengths = (gaps["end"] - gaps["start"]).to_numpy()
    assert set(np.round(lengths, 6)) == {0.0005, 0.002}


def _gantt(stages: int, replicas: int = 1) -> plt.Figure:
    """The stage Gantt of fake batches over their whole span."""
    run = fake_run("g", pp=stages)
    run.batches = fake_batches(stages, replicas)
    return stage_gantt_figure(run, window=(0.0, float(run.batches["end"].max())))


def _bar_colors(ax: plt.Axes) -> set[tuple]:
    """Face colours of the bar collections on ``ax``."""
    return {tuple(np.round(c.get_facecolor()[0], 3)) for c in ax.collections if len(c.get_facecolor())}


def test_pp1_gantt_shows_kinds_and_host_gaps():
    fig = _gantt(stages=1, replicas=2)
    ax, gap_ax = fig.axes[:2]
    assert ax.get_title().startswith("PP=1: gaps are host overhead/idle, not pipeline bubbles")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["replica 0", "replica 1"]
    kinds = {tuple(np.round(to_rgba(c), 3)) for c in KIND_COLORS.values()}
    assert kinds <= _bar_colors(ax)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[:3] == ["prefill-only", "decode-only", "mixed"] and "gap" in legend[3]
    # the lower panel plots every gap's true length in ms
    points = np.concatenate([line.get_ydata() for line in gap_ax.get_lines()])
    assert len(points) == 2 * 39 and set(np.round(points, 3)) == {0.5, 2.0}
    assert gap_ax.get_ylabel() == "gap before batch (ms)"


def test_pp2_gantt_keeps_the_stage_view():
    fig = _gantt(stages=2)
    ax = fig.axes[0]
    assert len(fig.axes) == 1 and ax.get_title().startswith("stage timeline")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["replica 0 stage 0", "replica 0 stage 1"]


def _tiny_cache_run(tmp_path) -> Run:
    """A hand-made run folder with prefix caching: 6 requests over 0-10 s, 2 replicas, 4 batches."""
    requests = pd.DataFrame({"request_id": [str(i) for i in range(6)], "replica": [0, 1, 0, 1, 0, 1],
                             "arrival_time": [0.0, 1.0, 4.5, 6.5, 9.0, 10.0],
                             "prompt_tokens": [100, 300, 200, 200, 50, 150],
                             "cached_tokens": [0, 150, 160, 40, 50, 0],
                             "ttft": 0.1, "tpot": 0.01, "tbt_max": 0.02, "e2e": 1.0})
    batches = pd.DataFrame({"replica": [0, 0, 1, 1], "stage": 0, "batch_id": [0, 1, 0, 1],
                            "start": [0.0, 5.0, 1.0, 6.0], "end": [0.1, 5.1, 1.1, 6.1],
                            "num_prefill_tokens": 100, "num_decode_tokens": 0, "batch_size": 1,
                            "kv_blocks_used": [10, 20, 30, 40], "kv_cached_free_blocks": [0, 50, 10, 20]})
    summary = {"config": {"scheduler": "sarathi", "model": "m", "gpu": "g", "tp": 1, "pp": 1, "replicas": 2},
               "kv_cache": {"blocks_per_replica": 100},
               "prefix_cache": {"enabled": True, "hit_rate_tokens": 0.4, "hit_rate_blocks": 0.41, "evictions": 3,
                                "cached_free_blocks_mean": 20.0, "replicas": [{"hit_rate_tokens": 0.6, "evictions": 1},
                                                                              {"hit_rate_tokens": 0.2, "evictions": 2}]}}
    return load_run(write_run(tmp_path / "tiny", summary, requests, batches))


def test_hit_rate_over_time_by_hand(tmp_path):
    run = _tiny_cache_run(tmp_path)
    # two bins of 5 s: arrivals 0, 1, 4.5 (cached 0+150+160 of 100+300+200) and 6.5, 9, 10 (40+50+0 of 200+50+150)
    centres, rates = hit_rate_over_time(run.requests, nbins=2)
    assert centres == pytest.approx([2.5, 7.5])
    assert rates == pytest.approx([310 / 600, 90 / 400])
    # five bins of 2 s: [0, 2) 150/400, [2, 4) empty and dropped, [4, 6) 160/200, [6, 8) 40/200, [8, 10] 50/200
    centres, rates = hit_rate_over_time(run.requests, nbins=5)
    assert centres == pytest.approx([1, 5, 7, 9])
    assert rates == pytest.approx([150 / 400, 160 / 200, 40 / 200, 50 / 200])


def test_prefix_cache_figure_shows_the_bins_the_run_and_the_replicas(tmp_path):
    run = _tiny_cache_run(tmp_path)
    over_time, per_replica = prefix_cache_figure(run).axes
    c, rate = hit_rate_over_time(run.requests)
    binned = next(line for line in over_time.get_lines() if line.get_label() == "arrivals in the bin")
    assert binned.get_xdata() == pytest.approx(c) and binned.get_ydata() == pytest.approx(rate)
    overall = [line for line in over_time.get_lines() if line.get_label().startswith("whole run")]
    assert list(overall[0].get_ydata()) == [0.4, 0.4]
    assert "40.0% of prompt tokens" in over_time.get_title()
    assert [bar.get_height() for bar in per_replica.patches] == pytest.approx([0.6, 0.2])


def test_prefix_cache_figure_has_no_replica_bars_for_one_replica(tmp_path):
    run = _tiny_cache_run(tmp_path)
    run.summary["prefix_cache"]["replicas"] = run.summary["prefix_cache"]["replicas"][:1]
    assert len(prefix_cache_figure(run).axes) == 1


def test_kv_cache_figure_stacks_cached_free_blocks(tmp_path):
    run = _tiny_cache_run(tmp_path)
    fig = kv_cache_figure(run)
    assert len(fig.axes) == 2 and "prefix cache hit rate 40.0% of prompt tokens" in fig.axes[0].get_title()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == list(KV_STACK)
    # replica 0 at t=5: 20 in use, 50 cached free, 30 free of 100 blocks; the stacked tops are 0.2, 0.7, 1.0
    tops = [c.get_paths()[0].vertices[:, 1].max() for c in fig.axes[0].collections]
    assert tops == pytest.approx([0.2, 0.7, 1.0])


def test_kv_cache_figure_without_prefix_caching_is_unchanged(tmp_path):
    run = _tiny_cache_run(tmp_path)
    run.batches = run.batches.drop(columns="kv_cached_free_blocks")
    ax, = kv_cache_figure(run).axes
    assert ax.get_ylabel() == "KV blocks used / capacity" and "prefix" not in ax.get_title()
    assert [line.get_label() for line in ax.get_lines()] == ["replica 0", "replica 1"]


@pytest.fixture(scope="module")
def cache_runs(tmp_path_factory) -> dict[str, object]:
    """Run folders of one small multi-turn trace with a shared system prompt: with and without prefix caching."""
    base = tmp_path_factory.mktemp("cache_runs")
    trace = generate_trace(40, qps=4, turns=4, think_time_s=5, system_prompt=(300, 0.7), seed=1)
    out = {}
    for name, cfg in (("cached", SimConfig(enable_prefix_caching=True, replicas=2, router="cache_aware")),
                      ("plain", SimConfig(enable_prefix_caching=False, replicas=2))):
        res = simulate(trace, cfg)
        out[name] = write_run(base / name, res.summary, res.requests, res.batches)
    return out


def test_prefix_cache_png_only_for_caching_runs(cache_runs, tmp_path):
    cached = write_plots(cache_runs["cached"], tmp_path / "cached")
    plain = write_plots(cache_runs["plain"], tmp_path / "plain")
    assert [p.name for p in cached] == [*PLOT_FILES, PREFIX_CACHE_PLOT]
    assert [p.name for p in plain] == list(PLOT_FILES)
    assert (tmp_path / "cached" / PREFIX_CACHE_PLOT).stat().st_size > 5000
    assert not (tmp_path / "plain" / PREFIX_CACHE_PLOT).exists()


def test_report_has_the_prefix_hit_rate_row(cache_runs, tmp_path):
    runs = [load_run(cache_runs["cached"], "cached"), load_run(cache_runs["plain"], "plain")]
    rows = {r[0]: r[1:] for r in metrics_table(runs)}
    hit = runs[0].summary["prefix_cache"]["hit_rate_tokens"]
    assert hit > 0 and rows["prefix hit rate (tokens)"] == [f"{hit:.1%}", "-"]
    md, _ = write_report([cache_runs["cached"], cache_runs["plain"]], tmp_path / "report", run_plots=True)
    text = md.read_text()
    assert f"| prefix hit rate (tokens) | {hit:.1%} | - |" in text
    assert f"run1/{PREFIX_CACHE_PLOT}" in text and f"run2/{PREFIX_CACHE_PLOT}" not in text
