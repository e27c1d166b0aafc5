"""Capacity search: bisection finds a hand-derived capacity; early stopping keeps verdicts; torn writes are survived."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.capacity.point import _needed
from sim.capacity.search import (
    CapacitySearch,
    PointSpec,
    RateSearch,
    ResultsFile,
    Slo,
    Workload,
    evaluate_point,
    find_capacity,
    point_passes,
    run_searches,
)
from sim.cost.constant import ConstantCostModel
from sim.serving.simulator import SimConfig
from tests.paths import TINY_CPU_PROFILE

# ---- a synthetic system whose capacity follows from the iteration time --------------------------------
#
# Every request has a 1-token prompt and O output tokens. Sarathi with an unlimited budget runs every
# running request (the 1-token prefill of a new one, or a decode) in every iteration, so an iteration
# with k running requests takes T = t + c k (ConstantCostModel(t, per_token=c)) and a request stays for
# O iterations. With (nearly) evenly spaced arrivals at rate L, Little's law gives k = L O T, so
#     T = t / (1 - L O c),
# and every gap between tokens is one iteration: P99 TBT <= S  <=>  L <= (1 - t/S) / (O c).
T_ITER, PER_TOKEN, OUTPUT = 0.01, 1e-4, 100


def _synthetic(slo_tbt: float, rel_tol: float, seeds=(0, 1), jobs: int = 1, results=None):
    cfg = SimConfig(model="tiny", scheduler="sarathi", token_budget=100_000, max_batch_size=100_000,
                    kv_blocks=200_000)
    wl = Workload(num_requests=300, duration=20, prompt_len="fixed:1", output_len=f"fixed:{OUTPUT}",
                  arrival="gamma", cv=0.01)
    return find_capacity(cfg, wl, Slo.make(tbt_p99=slo_tbt, scheduling_delay_p50=None), seeds=seeds,
                         rel_tol=rel_tol, cost_model=ConstantCostModel(T_ITER, per_token=PER_TOKEN), jobs=jobs,
                         results=results, progress=False)


@pytest.mark.parametrize("slo_tbt", [0.025, 0.03])
def test_bisection_finds_hand_derived_capacity(slo_tbt):
    rel_tol = 0.02
    expected = (1 - T_ITER / slo_tbt) / (OUTPUT * PER_TOKEN)  # 60 and 66.7 req/s
    res = _synthetic(slo_tbt, rel_tol)
    assert res.error is None and res.bounded
    # the search returns the highest passing rate lo with a failing rate within lo * (1 + rel_tol);
    # 0.5% covers the +-1 request fluctuation of the discrete system around its steady state
    assert expected / (1 + rel_tol) * 0.995 <= res.capacity <= expected * 1.005
    assert res.capacity_min <= res.capacity <= res.capacity_max
    assert res.metrics["tbt_p99"] <= slo_tbt
    # every failing point is above every passing point of the same seed (a monotone verdict)
    for seed in (0, 1):
        pts = [p for p in res.points if p["seed"] == seed]
        assert max(p["qps"] for p in pts if p["passed"]) < min(p["qps"] for p in pts if not p["passed"])
    assert res.num_simulations == len(res.points) + 1  # plus the saturation probe


def test_same_seed_same_answer_inline_and_parallel(tmp_path):
    a = _synthetic(0.025, 0.05)
    b = _synthetic(0.025, 0.05, jobs=2, results=tmp_path / "r.jsonl")
    assert a.per_seed == b.per_seed and a.capacity == b.capacity
    assert sorted((p["seed"], p["qps"], p["passed"]) for p in a.points) == \
        sorted((p["seed"], p["qps"], p["passed"]) for p in b.points)
    # a rerun on the results file simulates nothing and gives the same answer
    c = _synthetic(0.025, 0.05, results=tmp_path / "r.jsonl")
    assert c.per_seed == b.per_seed
    assert len(ResultsFile(tmp_path / "r.jsonl")) == b.num_simulations


# ---- the bracketing / bisection state machine ---------------------------------------------------------

def _drive(rs: RateSearch, true_capacity: float) -> int:
    n = 0
    while (r := rs.next_rate()) is not None:
        rs.record(r, r <= true_capacity)
        n += 1
    return n


@pytest.mark.parametrize("start", [0.01, 1.0, 3.7, 500.0])
def test_rate_search_brackets_from_either_side(start):
    rs = RateSearch(start, rel_tol=0.01, min_rate=1e-6, max_rate=1e6)
    n = _drive(rs, 3.7)
    assert rs.bounded and rs.hi - rs.lo <= 0.01 * rs.lo
    assert 3.7 / 1.01 <= rs.capacity <= 3.7
    assert n < 30


def test_rate_search_limits():
    never = RateSearch(1.0, rel_tol=0.05, min_rate=0.01)
    _drive(never, 0.0)
    assert never.capacity == 0.0 and min(r for r, _ in never.history) >= 0.01
    always = RateSearch(1.0, rel_tol=0.05, max_rate=100)
    _drive(always, 1e9)
    assert not always.bounded and 50 <= always.capacity <= 100


def test_pass_rule_all_is_the_minimum_over_seeds():
    cfg = SimConfig(scheduler="vllm")
    s = CapacitySearch(cfg, Workload(num_requests=40, duration=0), seeds=(0, 1, 2), pass_rule="all", start_qps=1.0)
    caps = {0: 2.0, 1: 1.0, 2: 3.0}
    while not s.done:
        for spec in s.wants():
            s.feed(spec, {"metrics": {"completed": 1, "tbt_p99": 0.05 if spec.qps <= caps[spec.seed] else 0.5}})
    res = s.result()
    assert res.capacity == min(res.per_seed) and res.capacity_max == max(res.per_seed)
    assert res.per_seed[1] <= 1.0 < res.per_seed[0] <= 2.0 < res.per_seed[2] <= 3.0


# ---- early stopping gives the full run's verdict -------------------------------------------------------

def test_needed_count_forces_the_percentile_above_the_bound():
    rng = np.random.default_rng(0)
    for _ in range(300):
        g = int(rng.integers(1, 400))
        for stat, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100)):
            k = _needed(stat, g)
            if k > g:
                continue
            vals = np.concatenate([rng.random(g - k), 1.0 + rng.random(k)])  # exactly k values above 1.0
            assert np.percentile(vals, q) > 1.0


@pytest.mark.parametrize("scheduler,budget", [("vllm", None), ("sarathi", 512)])
def test_early_stop_keeps_the_verdict(scheduler, budget):
    slo = Slo.make(tbt_p99=0.1, scheduling_delay_p50=2.0, ttft_p99=20.0, tpot_p90=0.06)
    cfg = SimConfig(scheduler=scheduler, token_budget=budget)
    wl = Workload(num_requests=150, duration=0, max_total_tokens=4096)
    stopped = 0
    for qps in (0.5, 2.0, 6.0):
        full = evaluate_point(PointSpec(cfg, wl, 1, qps, None))
        early = evaluate_point(PointSpec(cfg, wl, 1, qps, slo))
        assert "error" not in full and "error" not in early
        assert point_passes(early, slo) == point_passes(full, slo) == (not slo.violations(full["metrics"]))
        if early["stopped"]:
            stopped += 1
            assert early["stopped"]["metric"] in {n for n, _ in slo.bounds}
            assert full["metrics"][early["stopped"]["metric"]] > early["stopped"]["bound"]
    assert stopped >= 1  # the overloaded point stops early


def test_stopped_records_are_reused_only_under_a_bound_as_strict():
    rec = {"metrics": None, "stopped": {"metric": "tbt_p99", "bound": 0.1}}
    assert point_passes(rec, Slo.make(tbt_p99=0.1)) is False
    assert point_passes(rec, Slo.make(tbt_p99=0.05)) is False
    assert point_passes(rec, Slo.make(tbt_p99=0.2)) is None
    assert point_passes(rec, Slo.make(tbt_p99=None)) is None


# ---- SLO and workload ---------------------------------------------------------------------------------

def test_slo_validation_and_violations():
    with pytest.raises(ValueError, match="unknown SLO metric 'tbt_p95'"):
        Slo.make(tbt_p95=0.1)
    with pytest.raises(ValueError, match="finite number of seconds > 0"):
        Slo.make(tbt_p99=-1)
    slo = Slo.make(tbt_p99=0.1, scheduling_delay_p50=2.0, e2e_max=60.0)
    assert slo.violations({"completed": 3, "tbt_p99": 0.1, "scheduling_delay_p50": 1.0, "e2e_max": 10}) == []
    assert slo.violations({"completed": 3, "tbt_p99": 0.2, "scheduling_delay_p50": 3.0, "e2e_max": 10}) == [
        "tbt_p99 0.2 s > 0.1 s", "scheduling_delay_p50 3 s > 2 s"]
    assert slo.violations({"completed": 0}) == ["no request completed"]


def test_workload_size_grows_with_rate_and_extends_the_same_requests():
    wl = Workload(num_requests=100, duration=30).for_model("llama-2-7b")
    assert wl.max_total_tokens == 4096
    assert wl.size(None) == 100 and wl.size(1.0) == 100 and wl.size(10.0) == 300
    short, long = wl.trace(7, 2.0), wl.trace(7, 10.0)
    assert [(r.prompt_tokens, r.output_tokens) for r in short] == [(r.prompt_tokens, r.output_tokens)
                                                                  for r in long[:100]]
    assert all(r.prompt_tokens + r.output_tokens <= 4096 for r in long)
    with pytest.raises(ValueError, match="poisson or gamma"):
        Workload(arrival="static")


# ---- results file -------------------------------------------------------------------------------------

def test_results_file_ignores_and_cuts_a_partial_last_line(tmp_path):
    path = tmp_path / "results.jsonl"
    store = ResultsFile(path)
    for i in range(3):
        store.append({"key": f"k{i}", "value": i})
    store.append({"key": "bad", "error": "boom"})  # errors are not stored: a rerun retries them
    store.close()
    text = path.read_text()
    assert text.count("\n") == 3
    path.write_text(text + '{"key": "k3", "val')  # a torn write
    again = ResultsFile(path)
    assert sorted(again.records) == ["k0", "k1", "k2"]
    assert path.read_text() == text  # cut before anything is appended
    again.append({"key": "k3", "value": 3})
    again.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["k0", "k1", "k2", "k3"]


def test_results_file_refuses_a_bad_line_in_the_middle(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: not a valid results record"):
        ResultsFile(path)
    path.write_text('{"key": "a"}\n{"nokey": 1}\n')
    with pytest.raises(ValueError, match=r"results.jsonl:2: field 'key'"):
        ResultsFile(path)


def test_unservable_workload_is_an_error_not_a_capacity():
    # prompts longer than tiny's 1024-token context, without clipping
    s = CapacitySearch(SimConfig(model="tiny", scheduler="sarathi"),
                       Workload(num_requests=20, prompt_len="fixed:2000", output_len="fixed:10",
                                max_total_tokens=100_000), seeds=(0,))
    run_searches([s], progress=False)
    res = s.result()
    assert res.capacity is None and "no request of the workload can be served" in res.error


def test_searches_sharing_points_under_different_slos(tmp_path):
    """Same deployment, strict and relaxed SLO: shared simulations (probe, rates) are judged under each SLO."""
    cfg = SimConfig(scheduler="vllm")
    wl = Workload(num_requests=60, duration=0)
    slos = (Slo.make(tbt_p99=0.05), Slo.make(tbt_p99=0.5))

    def searches():
        return [CapacitySearch(cfg, wl, slo, seeds=(0,), rel_tol=0.1) for slo in slos]

    alone = []
    for s in searches():
        run_searches([s], progress=False)
        alone.append(s.result())
    joint = searches()
    store = ResultsFile(tmp_path / "r.jsonl")
    stats = run_searches(joint, results=store, progress=False)
    store.close()
    assert [s.result().per_seed for s in joint] == [r.per_seed for r in alone]
    assert alone[0].capacity < alone[1].capacity
    # the probe is shared; a point stopped early under the strict SLO is rerun for the relaxed one
    assert stats.simulated < alone[0].num_simulations + alone[1].num_simulations
    resumed = searches()
    again = run_searches(resumed, results=ResultsFile(tmp_path / "r.jsonl"), progress=False)
    assert again.simulated == 0 and [s.result().per_seed for s in resumed] == [r.per_seed for r in alone]


# ---- a calibrated cost model ------------------------------------------------------------------------------



def _profiled_search(profile, results, jobs: int = 1, seeds=(0,)):
    # KV blocks given: the tiny model on an A100 would otherwise get millions of blocks (slow to set up)
    cfg = SimConfig(model="tiny", scheduler="sarathi", token_budget=64, max_batch_size=32, kv_blocks=256)
    wl = Workload(num_requests=40, duration=0, prompt_len="uniform:16:64", output_len="uniform:4:16")
    slo = Slo.make(tbt_p99=None, scheduling_delay_p50=None, ttft_p99=0.01)
    return find_capacity(cfg, wl, slo, seeds=seeds, rel_tol=0.1, profile=profile, results=results, jobs=jobs,
                         progress=False)


def test_profiled_capacity_differs_and_results_name_the_cost_model(tmp_path):
    if not (TINY_CPU_PROFILE / "profile.json").is_file():
        pytest.skip("calibration/profiles/tiny-cpu is not present")
    roof = _profiled_search(None, tmp_path / "roofline.jsonl")
    prof = _profiled_search(TINY_CPU_PROFILE, tmp_path / "profiled.jsonl")
    assert roof.error is None and prof.error is None and roof.bounded and prof.bounded
    # the profile was measured on a CPU, far slower than the A100 roofline: saturation and capacity drop
    assert prof.saturated_rps < roof.saturated_rps / 2
    assert 0 < prof.capacity < roof.capacity / 2
    assert prof.metrics["ttft_p99"] <= 0.01
    # every stored point says which cost model priced it
    recs = [json.loads(line) for line in (tmp_path / "profiled.jsonl").read_text().splitlines()]
    assert len(recs) == prof.num_simulations
    for rec in recs:
        cm = rec["cost_model"]
        assert cm["name"] == "profiled" and Path(cm["profile"]) == TINY_CPU_PROFILE and not cm["estimate"]
        assert cm["gpu"].startswith("measured:")  # priced for the profile's own device
    assert {json.loads(line)["cost_model"]["name"]
            for line in (tmp_path / "roofline.jsonl").read_text().splitlines()} == {"roofline"}
    # the cost model is part of a point's identity: roofline points are never reused for profiled ones
    roof_keys = set(ResultsFile(tmp_path / "roofline.jsonl").records)
    assert not roof_keys & set(ResultsFile(tmp_path / "profiled.jsonl").records)
    # worker processes build the cost model from the profile path and agree with the inline run
    par = _profiled_search(TINY_CPU_PROFILE, None, jobs=2, seeds=(0, 1))
    assert par.per_seed[0] == prof.capacity


def test_profile_and_cost_model_are_exclusive():
    with pytest.raises(ValueError, match="not both"):
        CapacitySearch(SimConfig(model="tiny"), Workload(), profile=TINY_CPU_PROFILE,
                       cost_model=ConstantCostModel(0.01))
