"""The comparison's formulas by hand, the replay's workload (exact or reconstructed) and its simulated figures with
the constant-cost model (each step 10 ms, so every time is derived by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from sim.cost.constant import ConstantCostModel
from sim.measured import read_measured
from sim.measured.compare import Side, compare, describe, side_of_run, values
from sim.measured.replay import build_workload, simulate_workload
from sim.serving import SimConfig
from tests.sim.measured import builders as b

STEP = 0.01


def _side() -> Side:
    """Two requests: TTFT 0.1 s and 0.2 s, 4 and 3 tokens, gaps 20 ms x3 and 40 ms x2 (e2e 0.16 s, 0.28 s)."""
    return Side(ttft=np.array([0.1, 0.2]), e2e=np.array([0.16, 0.28]), n=np.array([4.0, 3.0]),
                gaps=[np.array([0.02] * 3), np.array([0.04] * 2)])


@pytest.mark.parametrize(("formula", "expected"), [
    ("ttft", [0.1, 0.2]), ("e2e", [0.16, 0.28]),
    ("tpot", [0.06 / 3, 0.08 / 2]),                  # vLLM: (e2e - TTFT) / (n - 1)
    ("mean_gap", [0.02, 0.04]),                      # GuideLLM ITL, inference-perf TPOT: span / (n - 1)
    ("tpot_incl", [0.16 / 4, 0.28 / 3]),             # GuideLLM TPOT: (last token - start) / n
    ("ntpot", [0.16 / 4, 0.28 / 3]),                 # inference-perf NTPOT: e2e / n
    ("gaps", [0.02, 0.02, 0.02, 0.04, 0.04]),        # vLLM ITL: every chunk gap pooled
])
def test_formulas_by_hand(formula, expected) -> None:
    assert values(_side(), formula) == pytest.approx(expected)


def test_describe_is_numpy_linear() -> None:
    # five values 1..5: P90 = 4 + 0.6 x (5 - 4) = 4.6 (linear interpolation), P99 = 4.96
    assert describe(np.arange(1.0, 6.0)) == pytest.approx({"mean": 3.0, "p50": 3.0, "p90": 4.6, "p99": 4.96})
    assert describe(np.array([])) is None
    # GuideLLM's inverse CDF: the smallest value whose cumulative share (1/5, 2/5, ...) reaches p: P50 -> the 3rd
    # (3/5 >= 0.5), P90 -> the 5th (4/5 < 0.9), no interpolation
    assert describe(np.array([5.0, 1, 4, 2, 3]), "inverse_cdf") == pytest.approx(
        {"mean": 3.0, "p50": 3.0, "p90": 5.0, "p99": 5.0})
    assert describe(np.array([1.0, 2.0]), "inverse_cdf")["p50"] == 1.0  # 1/2 reaches 0.5


def test_client_summary_first_then_its_per_request_records(tmp_path) -> None:
    run = read_measured(b.write(tmp_path / "v.json", b.vllm_bench()))
    rows = {(r["metric"], r["stat"]): r for r in compare(run, _side())}
    # vLLM reports mean, median and P99 of TTFT: those are the client's; P90 comes from its per-request TTFTs
    assert rows[("ttft", "p99")]["measured"] == pytest.approx(0.199)
    assert rows[("ttft", "p99")]["measured_from"] == "client summary"
    assert rows[("ttft", "p90")]["measured"] == pytest.approx(0.19)  # 0.1 + 0.9 x 0.1
    assert rows[("ttft", "p90")]["measured_from"] == "client per-request"
    # the simulated side here equals the measured records: no error
    assert rows[("itl", "mean")]["simulated"] == pytest.approx(0.028)
    assert rows[("itl", "mean")]["error_pct"] == pytest.approx(0.0, abs=1e-9)


def test_exact_replay_with_constant_cost(tmp_path) -> None:
    """A arrives at 0 with 4 tokens to generate, B at 0.5 s with 3, alone each: the prefill step gives the first
    token (TTFT 10 ms), each decode step one more; with no frontend the client's times are the engine's."""
    run = read_measured(b.write(tmp_path / "v.json", b.vllm_bench()))
    work = build_workload(run)
    assert [(t.arrival_time, t.prompt_tokens, t.output_tokens) for t in work.trace] == [(0.0, 100, 4), (0.5, 200, 3)]
    assert work.how.startswith("exact")
    config = SimConfig(model="tiny", gpu="a100-80gb", scheduler="vllm_v1", async_scheduling=False, frontend="none")
    side, _ = simulate_workload(run, work, config, ConstantCostModel(STEP))
    assert side.ttft == pytest.approx([STEP, STEP])
    assert side.e2e == pytest.approx([4 * STEP, 3 * STEP])
    assert [list(g) for g in side.gaps] == [pytest.approx([STEP] * 3), pytest.approx([STEP] * 2)]
    rows = {(r["metric"], r["stat"]): r for r in compare(run, side)}
    assert rows[("ttft", "mean")]["error_pct"] == pytest.approx((STEP - 0.15) / 0.15 * 100)
    assert rows[("tpot", "p50")]["simulated"] == pytest.approx(STEP)


def test_frontend_moves_client_times_by_its_costs(tmp_path) -> None:
    """vLLM's frontend model: 1.6 ms + 1.5 us a prompt token before the engine, 60 us for a token's way back, and
    0.2 ms at the end (sim/serving/frontend.py); token gaps unchanged."""
    run = read_measured(b.write(tmp_path / "v.json", b.vllm_bench()))
    config = SimConfig(model="tiny", gpu="a100-80gb", scheduler="vllm_v1", async_scheduling=False, frontend="vllm")
    side, _ = simulate_workload(run, build_workload(run), config, ConstantCostModel(STEP))
    inbound = np.array([1.6e-3 + 1.5e-6 * 100, 1.6e-3 + 1.5e-6 * 200])
    assert side.ttft == pytest.approx(inbound + STEP + 60e-6)
    assert side.e2e == pytest.approx(inbound + np.array([4, 3]) * STEP + 60e-6 + 2e-4)
    assert [list(g) for g in side.gaps] == [pytest.approx([STEP] * 3), pytest.approx([STEP] * 2)]


def test_engine_clock_run_compares_queue_wait(tmp_path) -> None:
    run = read_measured(b.vllm_engine(tmp_path / "G" / "r"))
    config = SimConfig(model="tiny", gpu="a100-80gb", scheduler="vllm_v1", async_scheduling=False, frontend="none")
    side, _ = simulate_workload(run, build_workload(run), config, ConstantCostModel(STEP))
    rows = {(r["metric"], r["stat"]): r for r in compare(run, side)}
    assert rows[("queue", "mean")]["measured"] == pytest.approx(0.01) and rows[("queue", "mean")]["simulated"] == 0


def test_reconstructed_workload_follows_the_load_settings(tmp_path) -> None:
    """No per-request lists: num_prompts requests at the mean lengths (300 / 40 = 7.5 -> 8 in, 7 / 40 -> 1 out),
    Poisson at 2 req/s rescaled as vLLM does (the last delay is num_prompts / rate)."""
    run = read_measured(b.write(tmp_path / "v.json", b.vllm_bench(detailed=False, num_prompts=40, completed=40)))
    work = build_workload(run, seed=3)
    assert len(work.trace) == 40 and work.how.startswith("reconstructed")
    assert {(t.prompt_tokens, t.output_tokens) for t in work.trace} == {(8, 1)}
    t = [x.arrival_time for x in work.trace]
    assert t[0] == 0.0 and t == sorted(t) and 0 < t[-1] < 40 / 2.0
    assert build_workload(run, seed=3).trace == work.trace  # deterministic


def test_reconstructed_constant_stage(tmp_path) -> None:
    """An inference-perf stage without per-request records, load type constant at 2 req/s: its 3 requests every
    0.5 s, at the stage's mean lengths (150 in, 3.5 -> 4 out)."""
    run = read_measured(b.inference_perf(tmp_path / "ip", per_request=False, load_type="constant"))
    work = build_workload(run)
    assert [(t.arrival_time, t.prompt_tokens, t.output_tokens) for t in work.trace] == [
        (0.0, 150, 4), (0.5, 150, 4), (1.0, 150, 4)]


def test_side_of_run_leaves_failed_requests_out(tmp_path) -> None:
    side = side_of_run(read_measured(b.write(tmp_path / "v.json", b.vllm_bench())))
    assert list(side.n) == [4, 3] and side.queue is None


def test_guidellm_summary_only_is_reconstructed(tmp_path) -> None:
    """A GuideLLM benchmark without request records: its request total, mean token counts and constant rate."""
    data = b.guidellm()
    bench = data["benchmarks"][0]
    del bench["requests"]
    bench["config"]["strategy"] = {"type_": "constant", "rate": 4.0}
    bench["scheduler_metrics"] = {"requests_made": {"successful": 3, "incomplete": 0, "errored": 0, "total": 3}}
    bench["metrics"]["prompt_token_count"] = {"successful": {"mean": 64.0}}
    bench["metrics"]["output_token_count"] = {"successful": {"mean": 9.6}}
    run = read_measured(b.write(tmp_path / "g.json", data))
    work = build_workload(run)
    assert [(t.arrival_time, t.prompt_tokens, t.output_tokens) for t in work.trace] == [
        (0.0, 64, 10), (0.25, 64, 10), (0.5, 64, 10)]
