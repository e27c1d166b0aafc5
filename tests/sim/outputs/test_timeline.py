"""Tests of the Perfetto timeline (sim.outputs.timeline): valid Chrome trace JSON whose slices match batches.csv."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sim.cost.constant import ConstantCostModel
from sim.outputs.run_folder import read_run, write_run
from sim.outputs.timeline import _lanes, build_timeline, timing_source, write_timeline
from sim.request import TraceRequest
from sim.serving.simulator import SimConfig, simulate
from sim.workload.trace import read_trace
from tests.paths import EXAMPLE_TRACE as EXAMPLE


def _run(tmp_path: Path, trace, config: SimConfig, **kw) -> Path:
    res = simulate(trace, config, **kw)
    return write_run(tmp_path / "run", res.summary, res.requests, res.batches)


def _slices(events, cat):
    return [e for e in events if e.get("ph") == "X" and e.get("cat") == cat]


@pytest.fixture
def two_requests_pp2(tmp_path) -> Path:
    """A (t=0, 4+3 tokens) and B (t=0.5, 4+2) on 2 pipeline stages, 1 s per stage: hand-derivable."""
    trace = [TraceRequest("A", 0.0, 4, 3), TraceRequest("B", 0.5, 4, 2)]
    return _run(tmp_path, trace, SimConfig(pp=2, scheduler="sarathi"), cost_model=ConstantCostModel(1.0, num_stages=2))


def test_hand_derived_pipeline_timeline(two_requests_pp2):
    path = write_timeline(two_requests_pp2)
    assert path == two_requests_pp2 / "timeline.json"
    data = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    events = data["traceEvents"]
    names = {(e["pid"], e.get("tid"), e["name"]): e["args"] for e in events if e["ph"] == "M"}
    assert names[(1, None, "process_name")] == {"name": "replica 0"}
    assert names[(1, 1, "thread_name")] == {"name": "stage 0"} and names[(1, 2, "thread_name")] == {"name": "stage 1"}
    tracks = defaultdict(list)
    for e in _slices(events, "batch"):
        tracks[e["tid"]].append((e["ts"], e["dur"], e["args"]["batch_id"]))
    # batches 0..4 run on stage 0 at 0,1,2,3,4 s and on stage 1 one second later, 1 s each
    assert sorted(tracks[1]) == [(i * 1e6, 1e6, i) for i in range(5)]
    assert sorted(tracks[2]) == [((i + 1) * 1e6, 1e6, i) for i in range(5)]
    # the bubbles are the gaps: stage 1 idles in [0, 1) s, stage 0 in [5, 6) s
    summary, _, _ = read_run(two_requests_pp2)
    assert [s["bubble_s"] for s in summary["pipeline"]["stages"]] == [1.0, 1.0]
    req = {(e["args"]["request_id"], e["name"]): (e["ts"], e["dur"], e["tid"]) for e in _slices(events, "request")}
    # A: prefill 0-2 s (two stages), decodes end at 4 and 6 s; no queueing (scheduled on arrival)
    assert req[("A", "request A")] == (0.0, 6e6, 1000)
    assert req[("A", "prefill")] == (0.0, 2e6, 1000) and req[("A", "decode")] == (2e6, 4e6, 1000)
    assert ("A", "queued") not in req
    # B overlaps A, so it gets the second request lane; first token at 3 s, done at 5 s
    assert req[("B", "request B")] == (0.5e6, 4.5e6, 1001)
    assert req[("B", "prefill")] == (0.5e6, 2.5e6, 1001) and req[("B", "decode")] == (3e6, 2e6, 1001)
    assert all(e["args"]["source"] == "predicted" for e in _slices(events, "batch"))
    kv = [e for e in events if e["ph"] == "C"]
    assert kv and all(set(e["args"]) == {"used", "free"} for e in kv)
    assert data["otherData"]["requests_shown"] == 2 and data["otherData"]["pp"] == 2


def test_slices_match_batches_csv(tmp_path):
    trace = read_trace(EXAMPLE).requests[:80]
    run = _run(tmp_path, trace, SimConfig(scheduler="sarathi", pp=2, replicas=2))
    write_timeline(run, max_requests=10)
    data = json.loads((run / "timeline.json").read_text())
    _, requests, batches = read_run(run)
    got = pd.DataFrame([(e["pid"] - 1, e["tid"] - 1, e["args"]["batch_id"], e["ts"], e["dur"],
                         e["args"]["prefill_tokens"], e["args"]["decode_tokens"], e["args"]["batch_size"])
                        for e in _slices(data["traceEvents"], "batch")],
                       columns=["replica", "stage", "batch_id", "ts", "dur", "pre", "dec", "size"])
    assert len(got) == len(batches)
    m = batches.merge(got, on=["replica", "stage", "batch_id"], validate="one_to_one")
    assert len(m) == len(batches)
    np.testing.assert_allclose(m["ts"], m["start"] * 1e6, atol=1e-3)
    np.testing.assert_allclose(m["dur"], (m["end"] - m["start"]) * 1e6, atol=2e-3)
    assert (m["pre"] == m["num_prefill_tokens"]).all() and (m["dec"] == m["num_decode_tokens"]).all()
    assert (m["size"] == m["batch_size"]).all()
    # slices on one stage track never overlap (a gap between them is a bubble or idle time)
    for _, g in got.groupby(["replica", "stage"]):
        g = g.sort_values("ts")
        assert (g["ts"].to_numpy()[1:] >= (g["ts"] + g["dur"]).to_numpy()[:-1] - 1e-3).all()
    # the request cap: 10 requests shown, each with its slice inside the run
    shown = [e for e in _slices(data["traceEvents"], "request") if e["name"].startswith("request ")]
    assert len(shown) == 10 == data["otherData"]["requests_shown"]
    assert {e["args"]["request_id"] for e in shown} == set(requests.sort_values("arrival_time")["request_id"][:10])
    # a request's lane never holds two overlapping requests
    for (pid, tid), evs in pd.DataFrame([(e["pid"], e["tid"], e["ts"], e["dur"]) for e in shown],
                                        columns=["pid", "tid", "ts", "dur"]).groupby(["pid", "tid"]):
        evs = evs.sort_values("ts")
        assert (evs["ts"].to_numpy()[1:] >= (evs["ts"] + evs["dur"]).to_numpy()[:-1]).all()


def test_window_and_uncapped(tmp_path, two_requests_pp2):
    summary, requests, batches = read_run(two_requests_pp2)
    data = build_timeline(summary, requests, batches, window=(4.5, 10))
    assert sorted(e["args"]["batch_id"] for e in _slices(data["traceEvents"], "batch")) == [3, 4, 4]
    data = build_timeline(summary, requests, batches, max_requests=None)
    assert data["otherData"]["requests_shown"] == 2


def test_timing_source_and_measured_column(two_requests_pp2):
    assert timing_source({"cost_model": {"name": "roofline"}}) == "predicted"
    assert timing_source({"cost_model": {"name": "measured"}}) == "measured"
    assert timing_source({"timing": "measured", "cost_model": {"name": "roofline"}}) == "measured"
    summary, requests, batches = read_run(two_requests_pp2)
    batches["source"] = "measured"
    data = build_timeline(summary, requests, batches)
    assert {e["args"]["source"] for e in _slices(data["traceEvents"], "batch")} == {"measured"}


def test_lane_packing():
    lanes = _lanes(np.array([0.0, 1.0, 2.0, 5.0, 5.5]), np.array([3.0, 2.0, 6.0, 7.0, 6.0]))
    # [0,3) lane 0; [1,2) lane 1; [2,6) reuses lane 1; [5,7) reuses lane 0; [5.5,6) needs lane 2
    assert lanes.tolist() == [0, 1, 1, 0, 2]
