"""The engine's default CPU KV capacity holds at least one max_model_len reservation (Orca and FasterTransformer)."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("torch")

from engine.replay import EngineConfig, replay  # noqa: E402
from sim.request import TraceRequest  # noqa: E402


@pytest.mark.parametrize("scheduler", ["orca", "faster_transformer"])
def test_a_short_trace_runs_under_a_max_model_len_reservation_without_kv_blocks(scheduler):
    """One 8-token request needs 1 block (twice: 2), but Orca reserves tiny's 1,024-token context = 64 blocks of 16:
    the default capacity must hold that one reservation, so the request is served instead of refused."""
    config = EngineConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", warmup=0, offline=True)
    res = replay([TraceRequest("a", 0.0, 5, 3)], dataclasses.replace(config), scheduler=scheduler)
    assert res.summary["requests"]["completed"] == 1
    assert [len(ids) for ids in res.token_ids.values()] == [3]
