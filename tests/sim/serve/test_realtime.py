"""The real-time driver (sim.serve.realtime) on a hand-moved clock: hand-derived token times, and the same times as
``simulate`` for the same arrivals (the served run reuses the simulator's replicas, scheduler and cost model)."""

from __future__ import annotations

import math
import random

import pytest

from sim.cost.constant import ConstantCostModel
from sim.request import TraceRequest
from sim.serve.realtime import RealtimeDeployment, Unservable
from sim.serving.simulator import SimConfig, simulate


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def drain(dep: RealtimeDeployment) -> None:
    """Process every simulated event left."""
    while not dep.advance(math.inf):
        pass


def tokens(served) -> list[tuple[str, float]]:
    out = []
    while not served.queue.empty():
        out.append(served.queue.get_nowait())
    return out


def test_hand_derived_sarathi_times_with_a_constant_cost():
    """1 s per iteration. A (10 prompt, 3 out) at 0: prefill 0-1, decodes to 2 and 3. B (5, 2) arrives at 0.5 while A's
    prefill runs: the iteration at 1 decodes A and prefills B (tokens at 2), the next decodes both (at 3)."""
    clock = Clock()
    dep = RealtimeDeployment(SimConfig(scheduler="sarathi", kv_blocks=100), ConstantCostModel(1.0), clock=clock)
    a = dep.submit(10, 3)
    dep.advance(0.0)
    clock.t = 0.5
    dep.advance(0.5)
    b = dep.submit(5, 2)
    dep.advance(1.5)
    assert tokens(a) == [("token", 1.0)] and tokens(b) == []
    drain(dep)
    assert tokens(a) == [("token", 2.0), ("token", 3.0), ("done", "length")]
    assert tokens(b) == [("token", 2.0), ("token", 3.0), ("done", "length")]
    line = dep.record(b)
    assert line["arrival_time"] == 0.5 and line["served_ttft_s"] == 1.5 and line["served_itl_s"] == [1.0]
    assert line["served_e2e_s"] == 2.5 and not dep.active


def test_speedup_maps_simulated_time_onto_the_clock():
    clock = Clock()
    dep = RealtimeDeployment(SimConfig(kv_blocks=100), ConstantCostModel(1.0), speedup=4.0, clock=clock)
    clock.t = 2.0
    assert dep.now() == 8.0 and dep.wall(8.0) == 2.0


def test_shutdown_aborts_requests_in_flight_and_refuses_new_ones():
    clock = Clock()
    dep = RealtimeDeployment(SimConfig(kv_blocks=100), ConstantCostModel(1.0), clock=clock)
    a = dep.submit(10, 5)
    dep.advance(1.0)
    dep.shutdown()
    assert tokens(a) == [("token", 1.0), ("done", "abort")] and dep.closed and not dep.active
    with pytest.raises(RuntimeError):
        dep.submit(1, 1)


def test_unservable_requests_are_refused_with_simulates_reason():
    dep = RealtimeDeployment(SimConfig(kv_blocks=4, block_size=16), ConstantCostModel(1.0), clock=Clock())
    with pytest.raises(Unservable) as e:
        dep.submit(100, 10)  # 110 tokens need 7 blocks of 16; the cache has 4
    assert e.value.code == "kv_capacity" and "KV blocks" in str(e.value)
    assert not dep.active


@pytest.mark.parametrize("scheduler", ["vllm_v1", "sarathi", "vllm", "orca"])
def test_served_times_equal_simulates_for_the_same_arrivals(scheduler):
    """Random arrivals on the roofline (vllm_v1: async loop, vLLM's frontend model, prefix caching; two replicas for
    sarathi): the served token times are simulate()'s for the recorded trace, to float rounding."""
    rng = random.Random(7)
    replicas = 2 if scheduler == "sarathi" else 1
    config = SimConfig(scheduler=scheduler, replicas=replicas, router="least_outstanding", kv_blocks=400,
                       max_batch_size=8)
    clock = Clock()
    dep = RealtimeDeployment(config, clock=clock)
    served = []
    t = 0.0
    for _ in range(40):
        t += rng.expovariate(40.0)
        dep.advance(t)
        clock.t = t
        served.append(dep.submit(rng.randint(1, 600), rng.randint(1, 40)))
    drain(dep)
    lines = [dep.record(s) for s in served]
    trace = [TraceRequest(x["request_id"], x["arrival_time"], x["prompt_tokens"], x["output_tokens"]) for x in lines]
    result = simulate(trace, config)
    predicted = result.requests.set_index("request_id")
    for x in lines:
        p = predicted.loc[x["request_id"]]
        assert x["served_ttft_s"] == pytest.approx(p["ttft"], rel=1e-9, abs=1e-12)
        assert x["served_e2e_s"] == pytest.approx(p["e2e"], rel=1e-9, abs=1e-12)
        if x["served_itl_s"]:
            assert max(x["served_itl_s"]) == pytest.approx(p["tbt_max"], rel=1e-9, abs=1e-12)


def test_cancel_ends_the_request_at_its_next_token_and_frees_its_blocks():
    clock = Clock()
    dep = RealtimeDeployment(SimConfig(scheduler="sarathi", kv_blocks=100), ConstantCostModel(1.0), clock=clock)
    a = dep.submit(40, 50)
    dep.advance(1.0)
    assert tokens(a) == [("token", 1.0)] and dep.schedulers[0].bm.num_used == 3  # 41 tokens in 16-token blocks
    dep.cancel(a)
    drain(dep)
    assert tokens(a) == [("token", 2.0), ("done", "abort")]
    assert dep.schedulers[0].bm.num_used == 0 and not dep.active
    assert dep.record(a)["output_tokens"] == 2 and dep.record(a)["finish_reason"] == "abort"
