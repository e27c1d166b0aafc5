"""--max-model-len (vLLM's flag): accepted by every command that takes a model, and applied to what is served."""

from __future__ import annotations

import json

import pytest

from sim.catalog.models import get_model, with_max_model_len
from sim.cli.main import build_parser, main
from sim.serving.simulator import SimConfig, simulate
from sim.workload.generator import generate_trace


def test_the_context_length_is_overridden_and_nothing_else():
    base = get_model("llama-2-7b")
    long = with_max_model_len("llama-2-7b", 16384)
    assert long.max_context == 16384 and base.max_context == 4096
    assert (long.num_params, long.hidden_size, long.name) == (base.num_params, base.hidden_size, base.name)
    assert with_max_model_len(base, None) is base
    with pytest.raises(ValueError, match="max_model_len must be >= 1"):
        SimConfig(max_model_len=0)


def test_prompts_beyond_the_models_context_are_served_with_a_longer_max_model_len():
    trace = generate_trace(10, prompt_len="fixed:6000", output_len="fixed:8", qps=5, seed=1)
    short = simulate(trace, SimConfig(model="llama-2-7b"))
    long = simulate(trace, SimConfig(model="llama-2-7b", max_model_len=8192))
    assert short.summary["requests"]["skipped_by_reason"] == {"prompt_exceeds_context": 10}
    assert long.summary["requests"]["completed"] == 10 and long.summary["config"]["max_model_len"] == 8192
    assert (long.requests["output_tokens"] == 8).all()


def test_yi_34b_200k_is_in_the_catalogue():
    m = get_model("yi-34b-200k")
    assert m.max_context == 200000 and m.num_params == get_model("yi-34b").num_params
    assert get_model("01-ai/Yi-34B-200K") is m


@pytest.mark.parametrize("argv", [
    ["simulate"], ["capacity"], ["plan", "--out", "x"], ["engine"], ["validate", "--out", "x"]])
def test_every_command_with_a_model_takes_the_flag(argv):
    args = build_parser().parse_args(argv + ["--max-model-len", "32768"])
    assert args.max_model_len == 32768


def test_simulate_cli_applies_it(capsys):
    assert main(["simulate", "-n", "5", "--prompt-len", "fixed:5000", "--output-len", "fixed:4", "--qps", "10",
                 "--max-model-len", "6000", "--json", "-q"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["requests"]["completed"] == 5 and d["config"]["max_model_len"] == 6000
