"""Issue 32: every run's saturation verdict, goodput and the knob at its limit, hand-derived on constant costs;
closed-loop clients (``--max-concurrency``) likewise."""

from __future__ import annotations

import json

import pytest

from sim.cli.main import main
from sim.cost.constant import ConstantCostModel
from sim.request import TraceRequest
from sim.serving.closed_loop import ClosedLoop
from sim.serving.simulator import SimConfig, simulate

# One request at a time (max_num_seqs 1), a 1-token prompt and 10 outputs, 10 ms an iteration: each request holds
# the deployment for its prefill plus 9 decodes, 10 iterations = 0.1 s, so it sustains exactly 10 req/s.
ONE_AT_A_TIME = SimConfig(model="tiny", scheduler="vllm", max_batch_size=1, kv_blocks=1000)
CAPACITY = 10.0


def _evenly(rate: float, n: int = 200, prompt: int = 1, output: int = 10) -> list[TraceRequest]:
    return [TraceRequest(str(i), (i + 1) / rate, prompt, output) for i in range(n)]


@pytest.mark.parametrize("factor, saturated", [(1.5, True), (0.5, False)])
def test_a_run_past_capacity_is_flagged_saturated_and_one_below_is_not(factor, saturated):
    res = simulate(_evenly(factor * CAPACITY), ONE_AT_A_TIME, cost_model=ConstantCostModel(0.01))
    sat = res.summary["saturation"]
    assert sat["saturated"] is saturated
    assert sat["offered_rps"] == pytest.approx(factor * CAPACITY)
    if saturated:  # served at the capacity while requests arrived; the queue grows by the difference
        assert sat["served_rps"] == pytest.approx(CAPACITY, rel=0.02)
        assert sat["queue_growth_rps"] == pytest.approx(factor * CAPACITY - CAPACITY, rel=0.05)
        assert sat["verdict"].startswith("SATURATED")
    else:
        assert sat["queue_at_end"] == 0 and sat["queue_growth_rps"] == 0 and sat["verdict"].startswith("sustained")
    # the knob: one request at a time fills max_num_seqs in every iteration
    assert res.summary["limits"] == {"binding": "max_num_seqs",
                                     "full_fraction": {"token_budget": 0.0, "max_num_seqs": 1.0, "kv_capacity": 0.0}}


def test_a_closed_batch_and_a_tiny_run_get_no_verdict():
    res = simulate([TraceRequest(str(i), 0.0, 1, 2) for i in range(30)], ONE_AT_A_TIME,
                   cost_model=ConstantCostModel(0.01))
    assert res.summary["saturation"]["saturated"] is None and "closed batch" in res.summary["saturation"]["verdict"]
    res = simulate(_evenly(1.0, n=5), ONE_AT_A_TIME, cost_model=ConstantCostModel(0.01))
    assert res.summary["saturation"]["saturated"] is None and "too few" in res.summary["saturation"]["verdict"]


# Four requests at t=0, one at a time, 1 s an iteration, prompt 10 and 3 outputs: request k runs in iterations
# 3k+1..3k+3, so TTFT = 3k+1 s, E2E = 3k+3 s, TPOT 1 s; the run lasts 12 s.
FOUR = [TraceRequest(str(i), 0.0, 10, 3) for i in range(4)]


def test_goodput_counts_the_requests_meeting_every_bound_per_second():
    from sim.serving.load_verdict import goodput
    res = simulate(FOUR, ONE_AT_A_TIME, cost_model=ConstantCostModel(1.0))
    assert res.requests["ttft"].tolist() == [1.0, 4.0, 7.0, 10.0]
    g = goodput(res.requests, 12.0, {"ttft": 4.0, "tpot": 1.0})  # requests 0 and 1
    assert (g["good_requests"], g["fraction"], g["requests_per_s"]) == (2, 0.5, 2 / 12)
    g = goodput(res.requests, 12.0, {"e2el": 9.0})  # E2E 3, 6 and 9
    assert (g["good_requests"], g["requests_per_s"]) == (3, 3 / 12)
    assert res.summary["goodput"]["slo_s"] == {"ttft": 2.0, "tpot": 0.1}  # the default: none of them (TPOT 1 s)
    assert res.summary["goodput"]["good_requests"] == 0


def test_goodput_flag_takes_vllms_keys_in_milliseconds(capsys):
    argv = ["simulate", "--model", "tiny", "-n", "20", "--qps", "5", "-q", "--json"]
    assert main([*argv, "--goodput", "ttft:4000", "e2el:60000"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["goodput"]["slo_s"] == {"ttft": 4.0, "e2el": 60.0}
    assert summary["goodput"]["good_requests"] <= summary["goodput"]["completed"] == 20
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--goodput", "ttfb:10"])
    assert exit_.value.code == 2 and "unknown goodput key 'ttfb'" in capsys.readouterr().err


def test_one_closed_loop_client_sends_each_request_when_the_last_completes():
    """One client: request k is sent at 3k (each takes 3 iterations of 1 s), with think time T at k (3 + T)."""
    for think in (0.0, 0.5):
        loop = ClosedLoop(1, think)
        res = simulate(FOUR, ONE_AT_A_TIME, cost_model=ConstantCostModel(1.0), closed_loop=loop)
        sent = [k * (3 + think) for k in range(4)]
        assert res.requests["arrival_time"].tolist() == sent
        assert res.requests["completion_time"].tolist() == [s + 3 for s in sent]
        assert res.requests["ttft"].tolist() == [1.0] * 4  # latency counts from the send
        assert res.summary["closed_loop"]["max_concurrency"] == 1
        assert res.summary["closed_loop"]["mean_wait_for_client_s"] == pytest.approx(sum(sent) / 4)


def test_closed_loop_clients_never_exceed_the_cap_and_respect_arrivals():
    """Two clients over a one-at-a-time deployment: pairs are sent together; a late arrival waits for itself."""
    spec = [TraceRequest(str(i), 0.0, 10, 3) for i in range(4)] + [TraceRequest("late", 100.0, 10, 3)]
    res = simulate(spec, ONE_AT_A_TIME, cost_model=ConstantCostModel(1.0), closed_loop=ClosedLoop(2))
    # 0 and 1 at t=0 (1 runs after 0: done at 3 and 6); 2 when 0 completes (3), 3 when 1 completes (6)
    assert res.requests["arrival_time"].tolist() == [0.0, 0.0, 3.0, 6.0, 100.0]
    with pytest.raises(ValueError, match="max_concurrency"):
        ClosedLoop(0)


def test_max_concurrency_flag_defaults_to_clients_sending_back_to_back(capsys):
    argv = ["simulate", "--model", "tiny", "-n", "12", "-q", "--json", "--prompt-len", "fixed:8",
            "--output-len", "fixed:4"]
    assert main([*argv, "--max-concurrency", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["closed_loop"] == {"max_concurrency": 3, "think_time_s": 0.0, "sent": 12,
                                      "mean_wait_for_client_s": summary["closed_loop"]["mean_wait_for_client_s"]}
    assert main([*argv, "--think-time", "1"]) == 2
    assert "add --max-concurrency N" in capsys.readouterr().err


def test_the_console_says_the_verdict_the_limit_and_goodput(capsys):
    assert main(["simulate", "--model", "tiny", "-n", "200", "--qps", "2000", "-q", "--max-batch", "4"]) == 0
    out = capsys.readouterr().out
    assert "load: SATURATED: offered" in out and "limit: max_num_seqs (full in" in out and "goodput: " in out


def test_the_report_table_has_goodput_and_the_verdict():
    from sim.outputs.report import METRICS, metric_cell
    res = simulate(_evenly(15.0), ONE_AT_A_TIME, cost_model=ConstantCostModel(0.01))
    cells = {label: metric_cell(res.summary, path, fmt) for label, path, fmt in METRICS}
    assert cells["saturated (queue growing)"] == "yes" and cells["offered rate (req/s)"] == "15.000"
    assert cells["goodput (req/s)"] == f"{res.summary['goodput']['requests_per_s']:.3f}"
