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


def test_bucketing_in_chunks_counts_as_one_pass_over_every_value():
    """The histogram is counted a chunk at a time (issue 34: speed): the same zeros and bucket counts as the
    definition applied to all values at once, whether the values come in one array or in adds that give up
    exactness part-way."""
    from sim.gap_log import _CHUNK, _LOG_GAMMA, _MIN_LOG, _NUM_BUCKETS
    rng = np.random.default_rng(1)
    gaps = np.concatenate([rng.lognormal(-4, 2, 3 * _CHUNK + 123), [0.0, 1e-12, 5e-10] * 7, [2e6]])
    rng.shuffle(gaps)
    pos = gaps[gaps >= 1e-9]
    k = np.clip(np.ceil(np.log(pos) / _LOG_GAMMA).astype(np.int64) - _MIN_LOG, 0, _NUM_BUCKETS - 1)
    want = np.bincount(k, minlength=_NUM_BUCKETS)
    whole = GapLog(exact_limit=0)
    whole.add(gaps)
    given_up = GapLog(exact_limit=2 * _CHUNK)  # exact for the first two adds, then every value bucketed
    for part in np.array_split(gaps, 5):
        given_up.add(part)
    for log in (whole, given_up):
        assert not log.exact and log.zeros == 21 and log.count == gaps.size
        assert np.array_equal(log.counts, want)
    assert np.array_equal(whole.percentiles(PCTS), given_up.percentiles(PCTS))


def test_token_times_give_each_runs_gaps_and_largest_gap():
    """add_token_times (what a scheduler folds finished requests' token times through) records exactly each run's
    own differences, none across two runs, and returns each run's largest gap."""
    runs = [[0.0, 0.5, 0.75], [10.0, 10.25], [3.0, 3.125, 3.25, 4.25]]
    log = GapLog()
    assert log.add_token_times(runs) == [0.5, 0.25, 1.0]
    assert log.values().tolist() == [0.5, 0.25, 0.25, 0.125, 0.125, 1.0]
    assert log.count == 6 and log.max == 1.0 and log.total == 2.25
    assert log.add_token_times([]) == [] and log.count == 6
    rng = np.random.default_rng(2)
    many = [np.cumsum(rng.exponential(0.03, rng.integers(2, 400))).tolist() for _ in range(500)]
    ref, got = GapLog(exact_limit=10_000), GapLog(exact_limit=10_000)  # exact at first, then histogram
    for r in many:
        ref.add(np.diff(np.asarray(r)))
    tops = got.add_token_times(many)
    assert tops == [max(np.diff(r)) for r in many]
    assert not got.exact and not ref.exact
    assert got.zeros == ref.zeros and np.array_equal(got.counts, ref.counts)
    assert (got.count, got.total, got.max) == (ref.count, pytest.approx(ref.total, rel=1e-12), ref.max)
