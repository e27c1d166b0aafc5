"""Issue 32: closed-loop clients on the real engine (CPU, tiny model): a client sends its next request the moment its
last completes, exactly as in the simulator (the engine's times are measured, so only the order is asserted)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from engine.replay import EngineConfig, replay  # noqa: E402
from sim.request import TraceRequest  # noqa: E402
from sim.serving.closed_loop import ClosedLoop  # noqa: E402

BASE = EngineConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", kv_blocks=64, warmup=0)


def test_one_engine_client_sends_each_request_when_the_last_completes():
    trace = [TraceRequest(str(i), 0.0, 16, 3) for i in range(4)]
    res = replay(trace, BASE, scheduler="vllm", closed_loop=ClosedLoop(1))
    req = res.requests.sort_values("arrival_time")
    # each send is the previous request's completion (the client's release time), so nothing overlaps
    assert req["arrival_time"].tolist()[1:] == req["completion_time"].tolist()[:-1]
    assert req["arrival_time"].iloc[0] == 0.0
    assert (req["first_scheduled_time"] >= req["arrival_time"]).all()
    assert res.summary["closed_loop"]["max_concurrency"] == 1 and res.summary["closed_loop"]["sent"] == 4


def test_two_engine_clients_keep_at_most_two_requests_in_flight():
    trace = [TraceRequest(str(i), 0.0, 16, 3) for i in range(6)]
    res = replay(trace, BASE, scheduler="sarathi", closed_loop=ClosedLoop(2))
    req = res.requests
    for t in req["arrival_time"]:
        in_flight = ((req["arrival_time"] <= t) & (req["completion_time"] > t)).sum()
        assert in_flight <= 2
