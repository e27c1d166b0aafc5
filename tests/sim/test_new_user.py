"""What a new user meets (issue 17): honest labels, vLLM's flag names and defaults, milliseconds on the console."""

from __future__ import annotations

import re

from sim.cli.main import main
from sim.request import TraceRequest
from sim.serving.simulator import SimConfig, simulate
from tests.paths import ROOT

TINY_CPU = ROOT / "calibration" / "profiles" / "tiny-cpu"


def _run(capsys, *argv: str, model: str = "tiny") -> str:
    assert main(["simulate", "--model", model, "-n", "30", "--qps", "20", "-q", *argv]) == 0
    return capsys.readouterr().out


def test_the_gpu_count_is_spelled_out(capsys):
    out = _run(capsys, "--replicas", "2", "--tp", "2", "--pp", "4", model="llama-2-7b")
    assert "on 16 a100-80gb GPUs (2 replicas x TP2 x PP4)" in out


def test_pp1_idle_time_is_not_called_a_pipeline_bubble(capsys):
    out = _run(capsys)
    assert "pipeline: mean bubble" not in out and "no pipeline with PP1" in out
    assert "pipeline: mean bubble fraction" in _run(capsys, "--pp", "2")


def test_console_latencies_are_in_milliseconds(capsys):
    out = _run(capsys)
    assert "latency (ms)" in out and "latency (s)" not in out


def test_a_cpu_profile_is_not_labelled_as_an_a100(capsys):
    out = _run(capsys, "--profile", str(TINY_CPU))
    assert "a100" not in out.splitlines()[0] and "measured:" in out.splitlines()[0]
    assert "MFU 0.0%" not in out  # utilisation against the measured device's own rates


def test_vllm_flag_names_are_accepted(capsys):
    out = _run(capsys, "--scheduler", "vllm", "--max-num-seqs", "4", "--max-num-batched-tokens", "1024",
               "--gpu-memory-utilization", "0.5")
    assert "scheduler vllm" in out
    assert "scheduler sarathi" in _run(capsys, "--scheduler", "vllm", "--enable-chunked-prefill")
    assert main(["simulate", "--model", "tiny", "-n", "3", "-q", "--scheduler", "orca",
                 "--enable-chunked-prefill"]) == 2


def test_vllm_v0_default_budget_is_max_of_context_and_2048():
    """vLLM v0 without chunked prefill: max_num_batched_tokens = max(max_model_len, 2048). Ten 300-token
    prompts at once on tiny (context 1024) fill iterations of at most 2048 tokens: 6 + 4 prompts."""
    assert SimConfig(model="tiny", scheduler="vllm").effective_token_budget() == 2048
    assert SimConfig(model="llama-2-7b", scheduler="vllm").effective_token_budget() == 4096
    assert SimConfig(model="llama-2-7b", scheduler="orca").effective_token_budget() is None
    trace = [TraceRequest(str(i), 0.0, 300, 2) for i in range(10)]
    res = simulate(trace, SimConfig(model="tiny", scheduler="vllm", kv_blocks=1000))
    first = res.batches.sort_values("start").head(2)
    assert first["num_prefill_tokens"].tolist() == [1800, 1200]
    assert res.summary["config"]["effective_token_budget"] == 2048



def test_num_requests_takes_the_first_requests_of_a_trace_and_skips_are_counted(capsys):
    trace = str(ROOT / "traces" / "example_sharegpt_poisson.jsonl")
    assert main(["simulate", "--trace", trace, "-n", "5", "-q"]) == 0
    io = capsys.readouterr()
    assert "5 completed of 5 simulated, 5 in trace" in io.out and "first 5 of the trace's 200" in io.err
    out = _run(capsys, "--max-total-tokens", "4096")  # past tiny's 1024-token context: most requests skipped
    assert "more skipped" in out and "{" not in out.splitlines()[1]  # counts by reason, not a raw dict


def test_capacity_refuses_a_bad_deployment_in_one_line_before_simulating(capsys):
    """Like simulate: an unknown GPU or weights that do not fit exit 2 with one line and no simulation."""
    assert main(["capacity", "--gpu", "foo", "-q"]) == 2
    out, err = capsys.readouterr()
    assert err.strip().splitlines() == [err.strip()] and "unknown GPU 'foo'" in err
    assert "simulations run" not in out and "cost model" not in out
    assert main(["capacity", "--model", "llama-2-70b", "-q"]) == 2
    out, err = capsys.readouterr()
    assert "weights need" in err and "InfeasibleConfigError" not in err + out and "simulations run" not in out


def _help(capsys, *argv: str) -> str:
    import pytest
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrapped


def test_help_texts_say_each_default_once_and_never_the_opposite(capsys):
    text = _help(capsys, "report")
    assert "(default: the folder names)" in text and "(default: None)" not in text
    for cmd in ("simulate", "plan", "capacity", "report", "models", "gpus"):
        text = _help(capsys, cmd)
        assert "(default: True)" not in text and "(default: False)" not in text, cmd
        assert not re.search(r"default:[^()]*\) \(default:", text), cmd  # a default said twice
    # the lengths table's path is never broken into ". ./shared"
    assert ". ./shared" not in _help(capsys, "plan")


def test_simulate_and_engine_read_traces_with_the_same_flags(capsys):
    sim_text, eng_text = _help(capsys, "simulate"), _help(capsys, "engine")
    for flag in ("--trace FILE", "--trace-format", "--on-unsorted", "--strict", "--max-total-tokens"):
        assert flag in sim_text and flag in eng_text, flag


def test_catalogues_list_as_json(capsys):
    import json
    assert main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert models["llama-2-7b"]["num_layers"] == 32 and models["llama-2-7b"]["num_params"] > 6.7e9
    assert main(["gpus", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["a100-80gb"]["mem_bytes"] == 80 * 2**30


def test_requests_past_the_context_get_a_hint_to_clip_them(capsys):
    text = _run(capsys, "-n", "20", "--prompt-len", "uniform:900:1200", "--output-len", "uniform:8:16",
                "--max-total-tokens", "4096")  # (without it they are clipped to the context: test_workload_fit)
    assert "prompt_exceeds_context" in text and "hint: --max-total-tokens N" in text


def test_a_disaggregated_run_names_both_pools_and_its_kv_link(capsys):
    """Issue 20: the header gives each pool's GPUs, parallelism and scheduler and the link; a line the transfers."""
    out = _run(capsys, "--disaggregated", "--prefill-tp", "2", "--decode-replicas", "2", "--scheduler", "vllm",
               "--kv-link", "nvlink", "--kv-link-bandwidth", "450", "--max-total-tokens", "2048", model="llama-2-7b")
    assert out.splitlines()[0] == (
        "servesim: llama-2-7b, disaggregated: prefill 2x a100-80gb (1 replica x TP2 PP1, vllm) -> decode 2x "
        "a100-80gb (2 replicas x TP1 PP1, vllm), KV over nvlink 450 GB/s per GPU, cost model roofline")
    assert re.search(r"^KV transfer: P50 [\d.]+ ms, P99 [\d.]+ ms \(30 transfers\); link wait P99 [\d.]+ ms; "
                     r"decode admission wait P99 [\d.]+ ms; link utilisation max [\d.]+%$", out, re.MULTILINE)
    assert "blocks/decode replica" in out and "no pipeline with PP1" in out
