"""TBT gaps in memory per request: the histogram's percentiles within its stated bound, and folding changes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

import sim.serving.simulator
from sim.gap_log import RELATIVE_ERROR, GapLog
from sim.serving.simulator import SimConfig, simulate
from sim.workload.trace import read_trace
from tests.paths import ROOT

PCTS = (1, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


def _exact_and_histogram(gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    exact, hist = GapLog(), GapLog(exact_limit=0)
    for chunk in np.array_split(gaps, 7):
        exact.add(chunk)
        hist.add(chunk)
    assert exact.exact and not hist.exact
    return exact.percentiles(PCTS), hist.percentiles(PCTS)


def test_histogram_percentiles_within_the_bound_on_random_gaps():
    rng = np.random.default_rng(0)
    gaps = np.concatenate([rng.lognormal(-4, 1.5, 50_000), rng.exponential(0.02, 5_000), [0.0] * 10])
    exact, hist = _exact_and_histogram(gaps)
    pos = exact > 0
    assert np.all(np.abs(hist[pos] / exact[pos] - 1) <= RELATIVE_ERROR + 1e-12)
    assert np.all(hist[~pos] == 0)


@pytest.mark.parametrize("trace", ["example_sharegpt_poisson.jsonl", "example_bursty_gamma.jsonl"])
@pytest.mark.parametrize("scheduler", ["sarathi", "vllm"])
def test_histogram_percentiles_within_the_bound_on_the_shipped_traces(trace, scheduler):
    reqs = read_trace(ROOT / "traces" / trace).requests
    res = simulate(reqs, SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=scheduler))
    tbt = res.summary["latency_s"]["tbt"]
    assert tbt["percentiles_from"] == "exact"
    cdf = res.summary["latency_s"]["tbt_cdf"]
    # the same gaps through an exact log and a histogram-only one
    exact = GapLog()
    hist = GapLog(exact_limit=0)
    for r in res_requests(reqs, scheduler):
        if len(r.token_times) > 1:
            g = np.diff(r.token_times)
            exact.add(g)
            hist.add(g)
    e, h = exact.percentiles(cdf["percentile"]), hist.percentiles(cdf["percentile"])
    assert np.allclose(e, cdf["value"])
    assert np.all(np.abs(h - e) <= RELATIVE_ERROR * e + 1e-12)
    assert hist.describe((50, 90, 99))["count"] == tbt["count"]


def res_requests(reqs, scheduler):
    """The finished Request objects of a run (captured through on_finish)."""
    done = []
    simulate(reqs, SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler=scheduler), on_finish=done.append)
    return done


def test_folding_token_times_away_leaves_every_output_byte_identical(monkeypatch, tmp_path):
    """A run past KEEP_TOKEN_TIMES_UP_TO keeps figures per request instead of token times: same summary, same
    requests table (the log still holds every gap exactly at this size)."""
    from sim.outputs.run_folder import write_run
    reqs = read_trace(ROOT / "traces" / "example_sharegpt_poisson.jsonl").requests
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler="sarathi", replicas=2)
    kept = simulate(reqs, cfg)
    monkeypatch.setattr(sim.serving.simulator, "KEEP_TOKEN_TIMES_UP_TO", 0)
    done = []
    folded = simulate(reqs, cfg, on_finish=done.append)
    assert done and all(r.token_times is None and r.first_token_time is not None for r in done)
    for name, res in (("kept", kept), ("folded", folded)):
        write_run(tmp_path / name, res.summary, res.requests, res.batches)
    for f in ("requests.csv", "batches.csv"):
        assert (tmp_path / "kept" / f).read_bytes() == (tmp_path / "folded" / f).read_bytes()
    a, b = (json.loads((tmp_path / n / "summary.json").read_text()) for n in ("kept", "folded"))
    assert a["latency_s"] == b["latency_s"] and a["throughput"] == b["throughput"]


def test_merge_adds_counts_and_keeps_exactness_within_the_limit():
    a, b = GapLog(exact_limit=10), GapLog(exact_limit=10)
    a.add(np.array([0.1, 0.2, 0.3]))
    b.add(np.array([0.4, 0.5]))
    m = a.merge(b)
    assert m.exact and m.count == 5 and m.max == 0.5 and np.isclose(m.total, 1.5)
    assert np.allclose(m.percentiles([0, 50, 100]), [0.1, 0.3, 0.5])
    b.add(np.arange(1, 9) / 10)
    assert not a.merge(b).exact  # 16 gaps > limit 10
    assert GapLog().describe((50,))["count"] == 0


def test_the_exact_limit_is_for_the_run_not_per_replica():
    """64 replicas share the exact budget (each keeps 1/64 of it): a small run stays exact after the merge,
    and the run never holds more than EXACT_LIMIT exact gaps in all."""
    from sim.gap_log import EXACT_LIMIT
    reqs = read_trace(ROOT / "traces" / "example_sharegpt_poisson.jsonl").requests
    res = simulate(reqs, SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler="sarathi", replicas=64))
    assert res.summary["latency_s"]["tbt"]["percentiles_from"] == "exact"
    logs = [GapLog(EXACT_LIMIT // 64) for _ in range(64)]
    for log in logs:
        log.add(np.full(EXACT_LIMIT // 64 + 1, 0.01))
    assert not any(log.exact for log in logs) and not GapLog.merged(logs).exact
