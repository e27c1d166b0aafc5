"""``validate --measured`` on the real vLLM runs in ../shared/measured/vllm-e2e/ (skipped when absent): the reader
gives the runs' requests, engine arguments and shared prefixes; its figures are the benchmark script's."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sim.cli.main import main
from sim.measured import read_measured, read_measured_runs
from sim.measured.compare import describe, side_of_run, values
from tests.paths import SHARED, needs
from tests.sim.test_vllm_e2e_replay import _bench

DATA = SHARED / "measured" / "vllm-e2e"
RUN = "RTX4090/Llama-3.1-8B"


@needs(DATA / RUN / "requests.jsonl")
def test_every_run_is_read_with_its_deployment() -> None:
    runs = {r.label: r for r in read_measured_runs(DATA)}
    assert set(runs) == {RUN, "RTXPRO6000/Llama-3.1-8B", "RTXPRO6000/Qwen3-32B",
                         "RTXPRO6000/Qwen3-30B-A3B-Instruct-2507"}
    for run in runs.values():
        assert len(run.requests) == 300 and all(r.success for r in run.requests) and run.exact
        assert run.client_version == "0.19.0" and run.definitions.clock == "engine"
        assert all(len(r.hash_ids) == r.input_tokens // 16 for r in run.requests)  # the workload's token ids
    dep = runs[RUN].deployment
    assert (dep["model"], dep["gpu"], dep["max_batch_size"], dep["token_budget"], dep["frontend"]) == (
        "llama-3.1-8b", "rtx-4090", 256, 2048, "none")
    assert runs["RTXPRO6000/Qwen3-32B"].deployment["tp"] == 2
    assert "DP2 x EP" in runs["RTXPRO6000/Qwen3-30B-A3B-Instruct-2507"].not_expressible


@needs(DATA / RUN / "requests.jsonl")
def test_figures_agree_with_the_benchmark_script() -> None:
    """Two paths over the same files (the benchmark's tables and the measured run's records) give the same TTFT,
    TPOT, E2E and queue wait: the reader is shared, the metric definitions are vLLM's in both."""
    bench = _bench()
    meas = bench.measured(bench.load_run(RUN, DATA))["latency"]
    side = side_of_run(read_measured(DATA / RUN))
    for ours, theirs in (("ttft", "ttft"), ("tpot", "tpot"), ("e2e", "e2e"), ("queue", "queue")):
        got = describe(values(side, ours))
        assert got == pytest.approx(meas[theirs], rel=1e-9), ours


@needs(DATA / RUN / "requests.jsonl")
def test_validate_measured_on_one_run(tmp_path, capsys) -> None:
    rc = main(["validate", "--measured", str(DATA / RUN), "--out", str(tmp_path)])
    assert rc == 0, capsys.readouterr().err
    run = json.loads((tmp_path / "report.json").read_text())["runs"][0]
    assert run["workload"].startswith("exact: 300") and run["deployment"]["pool"]["gpu"] == "rtx-4090"
    sim = [m["simulated"] for m in run["metrics"]]
    assert len(sim) == 16 and all(np.isfinite(sim)) and all(m["error_pct"] is not None for m in run["metrics"])
    assert run["figures"]["requests completed"] == {"measured": 300, "simulated": 300}
