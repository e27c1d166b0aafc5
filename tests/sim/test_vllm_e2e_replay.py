"""benchmarks/vllm_e2e.py's reader of the measured vLLM runs (../shared/measured/vllm-e2e; skipped without it)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import numpy as np
import pytest

from tests.paths import ROOT, SHARED, needs

RUN = "RTX4090/Llama-3.1-8B"
DATA = SHARED / "measured" / "vllm-e2e"


def _bench() -> ModuleType:
    """The benchmark script as a module (benchmarks/ is not a package)."""
    name = "vllm_e2e_bench"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "vllm_e2e.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is built
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_the_script_says_what_is_missing_without_the_data(tmp_path, capsys) -> None:
    assert _bench().main(["--data", str(tmp_path)]) == 1
    assert "never copied" in capsys.readouterr().err


@needs(DATA / RUN / "requests.jsonl")
def test_reader_parses_requests_arrivals_and_engine_args() -> None:
    b = _bench()
    run = b.load_run(RUN, DATA)
    a = run.args
    assert (run.model, run.gpu, a.tp, a.dp, a.expert_parallel) == ("llama-3.1-8b", "rtx-4090", 1, 1, False)
    assert (a.max_num_seqs, a.max_num_batched_tokens, a.max_model_len) == (256, 2048, 32768)
    assert (a.block_size, a.gpu_memory_utilization, a.enable_prefix_caching) == (16, 0.9, True)
    assert (a.num_gpu_blocks, a.async_scheduling) == (2588, True)
    assert len(run.requests) == 300 and len(run.hash_ids) == 300
    assert [len(h) for h in run.hash_ids] == [n // 16 for n in run.requests["input_toks"]]

    trace = b.build_trace(run)
    arrivals = np.array([t.arrival_time for t in trace])
    assert len(trace) == 300 and arrivals[0] == 0.0 and np.all(np.diff(arrivals) >= 0)
    assert 25 < arrivals[-1] < 35  # 300 requests at about 10 req/s
    assert all(t.prompt_tokens > 0 and t.output_tokens > 1 for t in trace)

    cfg = b.sim_config(run)
    assert (cfg.model, cfg.gpu, cfg.tp, cfg.replicas, cfg.scheduler) == ("llama-3.1-8b", "rtx-4090", 1, 1, "vllm_v1")
    assert (cfg.token_budget, cfg.max_batch_size, cfg.max_model_len, cfg.kv_blocks) == (2048, 256, 32768, None)
    assert b.sim_config(run, kv_blocks=2588).kv_blocks == 2588

    meas = b.measured(run)
    assert meas["completed"] == 300 and meas["kv_blocks"] == 2588
    lat = meas["latency"]
    assert 0 < lat["queue"]["mean"] <= lat["ttft"]["mean"] < lat["e2e"]["mean"]  # TTFT includes the queue wait
    assert lat["ttft"]["p50"] <= lat["ttft"]["p90"] <= lat["ttft"]["p99"]


@needs(DATA / RUN / "requests.jsonl")
def test_a_short_replay_reports_engine_side_figures() -> None:
    from sim.serving import simulate
    b = _bench()
    run = b.load_run(RUN, DATA)
    res = simulate(b.build_trace(run)[:30], b.sim_config(run, kv_blocks=2588))
    pred = b.predicted(res)
    assert pred["completed"] == 30 and pred["kv_blocks"] == 2588
    assert all(np.isfinite(pred["latency"][m][s]) for m in b.METRICS for s in b.STATS)
    assert pred["latency"]["ttft"]["mean"] < pred["latency"]["e2e"]["mean"]


@needs(DATA / "RTXPRO6000" / "Qwen3-30B-A3B-Instruct-2507" / "requests.jsonl")
def test_data_parallel_expert_parallel_run_is_refused_by_name() -> None:
    b = _bench()
    run = b.load_run("RTXPRO6000/Qwen3-30B-A3B-Instruct-2507", DATA)
    assert (run.args.dp, run.args.expert_parallel) == (2, True)
    with pytest.raises(b.NotExpressible, match="DP2"):
        b.sim_config(run)
