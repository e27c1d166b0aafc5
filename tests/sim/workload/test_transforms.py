"""Tests of trace transforms (sim.workload.transforms), trace statistics (sim.workload.stats) and `servesim trace convert/stats`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.cli.main import main
from sim.request import TraceRequest
from sim.workload.stats import format_stats, plot_stats, rate_over_time, trace_stats
from sim.workload.trace import read_trace
from sim.workload.transforms import (
    TransformSpec,
    apply_transforms,
    bucket_width,
    clip_total,
    first_n,
    jitter_buckets,
    mean_rate,
    resample_lengths,
    rescale_rate,
    sample_requests,
    time_window,
)
from tests.paths import MOONCAKE, needs

needs_shared = needs(MOONCAKE)


def _reqs(times, prompt=100, output=10) -> list[TraceRequest]:
    return [TraceRequest(str(i), float(t), prompt, output) for i, t in enumerate(times)]


def _times(reqs) -> list[float]:
    return [r.arrival_time for r in reqs]


def _cv(reqs) -> float:
    g = np.diff(_times(reqs))
    return float(g.std() / g.mean())


def test_rescale_rate_scales_gaps_and_keeps_cv():
    reqs = _reqs([0, 1, 3, 6])
    assert mean_rate(reqs) == 0.5  # 3 gaps over 6 s
    out = rescale_rate(reqs, 1.0)
    assert _times(out) == [0, 0.5, 1.5, 3.0]
    assert mean_rate(out) == 1.0 and _cv(out) == pytest.approx(_cv(reqs))
    assert _times(reqs) == [0, 1, 3, 6]  # input untouched
    with pytest.raises(ValueError, match="fewer than 2"):
        rescale_rate(_reqs([1, 1]), 2.0)
    with pytest.raises(ValueError, match="> 0"):
        rescale_rate(reqs, 0)


def test_window_first_and_sample():
    reqs = _reqs([0, 1, 3, 6, 8])
    w = time_window(reqs, 1, 6)
    assert [(r.request_id, r.arrival_time) for r in w] == [("1", 0.0), ("2", 2.0)]
    assert _times(time_window(reqs, 1, 6, rebase=False)) == [1, 3]
    assert [r.request_id for r in first_n(reqs, 2)] == ["0", "1"]
    s = sample_requests(reqs, 3, seed=4)
    assert len(s) == 3 and s == sample_requests(reqs, 3, seed=4)
    assert _times(s) == sorted(_times(s)) and {r.request_id for r in s} <= {r.request_id for r in reqs}
    assert sample_requests(reqs, 10) == reqs
    with pytest.raises(ValueError):
        time_window(reqs, 5, 5)


def test_clip_total_keeps_ratio():
    reqs = [TraceRequest("a", 0, 40160, 6), TraceRequest("b", 1, 3000, 2000), TraceRequest("c", 2, 100, 100)]
    out = clip_total(reqs, 4096)
    # 4096 * 40160 / 40166 = 4095.39 -> 4095 (+1); 4096 * 3000 / 5000 = 2457.6 -> 2458 (+1638)
    assert [(r.prompt_tokens, r.output_tokens) for r in out] == [(4095, 1), (2458, 1638), (100, 100)]
    assert out[2] is reqs[2] and reqs[0].prompt_tokens == 40160


def test_resample_lengths_keeps_arrivals():
    reqs = _reqs([0, 1, 2, 3])
    out = resample_lengths(reqs, np.array([[7, 8], [9, 10]]), seed=1)
    assert _times(out) == _times(reqs)
    assert {(r.prompt_tokens, r.output_tokens) for r in out} <= {(7, 8), (9, 10)}
    with pytest.raises(ValueError):
        resample_lengths(reqs, np.array([[0, 1]]))


def test_jitter_spreads_each_bucket_within_it_and_keeps_order():
    reqs = _reqs([0, 0, 0, 3, 3, 6])
    assert bucket_width(reqs) == 3.0
    out = jitter_buckets(reqs, seed=2)
    t = _times(out)
    assert [r.request_id for r in out] == [r.request_id for r in reqs]
    assert all(0 <= x < 3 for x in t[:3]) and all(3 <= x < 6 for x in t[3:5]) and 6 <= t[5] < 9
    assert t == sorted(t) and len(set(t)) == 6
    assert _times(jitter_buckets(reqs, seed=2)) == t and _times(jitter_buckets(reqs, seed=3)) != t
    # an explicit width caps the spread; a wider bucket gap does not widen it
    narrow = _times(jitter_buckets(_reqs([0, 0, 10]), width=0.5, seed=0))
    assert all(0 <= x < 0.5 for x in narrow[:2]) and 10 <= narrow[2] < 10.5


def test_apply_transforms_order_and_notes():
    reqs = _reqs(np.arange(0, 100, 1.0), prompt=6000, output=100)
    out, notes = apply_transforms(reqs, TransformSpec(window=(10, 60), first=20, rate=4.0, max_total_tokens=4096))
    assert len(out) == 20 and out[0].request_id == "10" and out[0].arrival_time == 0.0
    assert mean_rate(out) == pytest.approx(4.0)
    assert all(r.prompt_tokens + r.output_tokens == 4096 for r in out)
    assert len(notes) == 4 and notes[0].startswith("kept 50 of 100") and "rescaled the mean rate from 1 to 4" in notes[2]
    with pytest.raises(ValueError, match="no requests left"):
        apply_transforms(reqs, TransformSpec(window=(500, 600)))


def test_trace_stats_hand_derived(tmp_path):
    reqs = [TraceRequest(str(i), float(i), p, o) for i, (p, o) in enumerate([(100, 10), (200, 10), (300, 100), (400, 100)])]
    st = trace_stats(reqs, bin_s=1.0)
    assert st["requests"] == 4 and st["duration_s"] == 3.0 and st["mean_rate"] == 1.0
    assert st["inter_arrival_s"]["cv"] == 0.0 and st["inter_arrival_s"]["mean"] == 1.0
    assert st["prompt_tokens"]["p50"] == 250.0 and st["output_tokens"]["max"] == 100.0
    assert st["pd_ratio"]["tokens"] == 1000 / 220 and st["pd_ratio"]["max"] == 20.0
    assert st["total_tokens_over"]["2048"] == 0
    text = format_stats(st, "t")
    assert "4 requests over 3.000 s" in text and "CV 0.000" in text
    png = plot_stats(reqs, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rate_over_time_drops_partial_last_bin():
    starts, rates = rate_over_time(np.array([0.0, 0.5, 1.0, 1.5, 2.2]), 1.0)
    assert starts.tolist() == [0.0, 1.0] and rates.tolist() == [2.0, 2.0]


# --- CLI ---------------------------------------------------------------------------------------


def test_cli_convert_and_stats(tmp_path, capsys):
    src = tmp_path / "sw.csv"
    src.write_text("arrival_timestamp,prompt_size,token_size\n" + "".join(f"{i * 0.5},{1000 + i},{10 + i}\n"
                                                                         for i in range(40)))
    out = tmp_path / "sub" / "out.jsonl"
    assert main(["trace", "convert", str(src), str(out), "--first", "30", "--rate", "4", "--max-total-tokens", "512"]) == 0
    tr = read_trace(out)
    assert len(tr.requests) == 30 and mean_rate(tr.requests) == pytest.approx(4.0)
    assert max(r.prompt_tokens + r.output_tokens for r in tr.requests) == 512
    printed = capsys.readouterr().out
    assert "kept the first 30 requests" in printed and f"wrote {out}: 30 requests" in printed
    png = tmp_path / "stats.png"
    assert main(["trace", "stats", str(out), "--plot", str(png), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["requests"] == 30 and stats["mean_rate"] == pytest.approx(4.0) and png.is_file()


def test_cli_convert_reports_bad_row(tmp_path, capsys):
    src = tmp_path / "sw.csv"
    src.write_text("arrival_timestamp,prompt_size,token_size\n0,10,10\n1,ten,10\n")
    assert main(["trace", "convert", str(src), str(tmp_path / "o.jsonl")]) == 2
    assert f"{src}:3: field 'prompt_size': expected an integer >= 0, got 'ten'" in capsys.readouterr().err


@needs_shared
def test_mooncake_convert_clip_and_simulate_matches_direct_import(tmp_path):
    from sim.serving.simulator import SimConfig, simulate
    from sim.workload.importers import read_any
    out = tmp_path / "mc.jsonl"
    assert main(["trace", "convert", str(MOONCAKE), str(out), "--first", "300", "--max-total-tokens", "4096"]) == 0
    converted = read_trace(out).requests
    assert all("hash_ids" in r.extra for r in converted)
    assert max(r.prompt_tokens + r.output_tokens for r in converted) == 4096
    direct, _ = apply_transforms(read_any(MOONCAKE).requests, TransformSpec(first=300, max_total_tokens=4096))
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler="sarathi")
    a, b = simulate(converted, cfg).summary, simulate(direct, cfg).summary
    assert a["requests"]["completed"] == b["requests"]["completed"] == 300
    assert a["latency_s"] == b["latency_s"]
