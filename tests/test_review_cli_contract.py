"""Regression tests of the review of issues 32 and 33's user-facing surface against the error contract (one line on
stderr naming file and field, exit 2, never a traceback or a hang) and honest output (simulated figures say so)."""

from __future__ import annotations

import json

import pytest

from sim.cli.main import build_parser, main
from sim.serving.simulator import SimConfig
from tests.fuzz_corpus import PLAN_FAST
from tests.sim.measured import builders as b


def _refused(capsys, argv: list[str]) -> str:
    """The one stderr line of a refused command line (exit 2)."""
    rc = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("servesim: error: "), err
    return lines[0]


def _measured(path, *extra: str) -> list[str]:
    return ["validate", "--measured", str(path), "--gpu", "a100-80gb", *extra, "--out", str(path.parent / "o")]


@pytest.mark.parametrize(("over", "named"), [
    ({"input_lens": [10**30, 200, 50]}, "field 'input_lens[0]': expected an integer <= 9223372036854775807"),
    ({"ttfts": [1e30, 0.2, 0.0]}, "field 'ttfts[0]': expected a number <= 1e+20"),
])
def test_measured_values_past_int64_or_1e20_are_refused(tmp_path, capsys, over, named):
    line = _refused(capsys, _measured(b.write(tmp_path / "v.json", b.vllm_bench(**over))))
    assert "v.json" in line and named in line


def test_a_load_too_large_to_replay_is_refused_not_run(tmp_path, capsys):
    # a summary-only result: the workload is reconstructed from num_prompts (10^9 requests would run for hours)
    path = b.write(tmp_path / "v.json", b.vllm_bench(detailed=False, num_prompts=10**9, request_rate=1e6))
    line = _refused(capsys, _measured(path))
    assert "1,000,000,000 requests, more than servesim replays (10,000,000, the bound of -n)" in line


@pytest.mark.parametrize(("over", "extra", "named"), [
    ({"model_id": 7}, (), "names no model servesim's catalogue knows"),
    ({}, ("--model", "tiny", "--tp", "64"), "attention heads do not split over tp=64"),
])
def test_a_deployment_refusal_is_the_only_line(tmp_path, capsys, over, extra, named):
    # the progress line ("simulating ...") used to precede refusals raised while configuring the replay
    line = _refused(capsys, _measured(b.write(tmp_path / "v.json", b.vllm_bench(**over)), *extra))
    assert named in line


def test_engine_timestamps_out_of_order_are_refused(tmp_path, capsys):
    folder = b.vllm_engine(tmp_path / "e")
    rows = (folder / "requests.jsonl").read_text().replace('"first_token_ts": 500.1', '"first_token_ts": 1.0')
    (folder / "requests.jsonl").write_text(rows)
    line = _refused(capsys, _measured(folder, "--model", "tiny"))
    assert "requests.jsonl: request bench-0: fields 'queued_ts' <= 'first_token_ts' <= 'last_token_ts'" in line


@pytest.mark.parametrize("bad", ["x", "1e300", "-1", ".nan", "true", "[1]"])
def test_inference_perf_stage_rate_is_checked(tmp_path, capsys, bad):
    # the rate reconstructs the arrivals when the stage file records none: a string used to end in a TypeError
    folder = b.inference_perf(tmp_path / "r", per_request=False)
    for name in ("stage_0_lifecycle_metrics.json", "summary_lifecycle_metrics.json"):
        stage = json.loads((folder / name).read_text())
        stage["load_summary"] = {"count": 3}
        b.write(folder / name, stage)
    (folder / "config.yaml").write_text(f"load:\n  type: poisson\n  stages:\n  - rate: {bad}\n    duration: 2\n")
    line = _refused(capsys, _measured(folder, "--model", "tiny"))
    assert "config.yaml: field 'load.stages[0].rate': expected a finite number >= 0" in line


def test_request_body_with_a_5000_digit_integer_is_a_400():
    from sim.serve.openai_api import ApiError, parse_json
    for raw in (b'{"prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}", b'{"prompt": [' + b"9" * 5000 + b"]}"):
        with pytest.raises(ApiError) as e:
            parse_json(raw)
        assert e.value.status == 400 and "malformed JSON" in str(e.value)


def test_launch_command_of_a_speculating_winner_speculates():
    from sim.capacity.launch import launch_command
    spec = '{"method": "ngram", "num_speculative_tokens": 3}'
    cmd = launch_command(SimConfig(model="tiny", scheduler="vllm_v1", speculative_config=spec, spec_acceptance="0.6"))
    assert cmd.endswith(f"--speculative-config '{spec}'")
    assert "--speculative-config" not in launch_command(SimConfig(model="tiny", scheduler="vllm_v1"))


def test_kv_reservation_oracle_on_a_paged_policy_is_refused(tmp_path, capsys):
    base = ["simulate", "--model", "tiny", "-n", "4", "--out", str(tmp_path / "run"), "-q", "--kv-reservation", "oracle"]
    line = _refused(capsys, [*base, "--scheduler", "vllm_v1"])
    assert "--scheduler vllm_v1 reserves none: use orca or faster_transformer" in line
    assert main([*base, "--scheduler", "orca"]) == 0


def test_capacity_and_plan_say_their_figures_are_simulated(tmp_path, capsys):
    assert main(["capacity", "--model", "tiny", "-n", "10", "--duration", "0", "--seeds", "1", "-q"]) == 0
    assert "simulated (not measured), cost model: roofline" in capsys.readouterr().out
    argv = [a.replace("{dir}", str(tmp_path)) for a in PLAN_FAST]
    assert main(argv) == 0
    assert "by capacity per GPU (simulated requests/s per GPU" in capsys.readouterr().out


def test_top_level_help_lists_serve_and_validate_measured(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert "serve     an OpenAI-compatible HTTP endpoint" in out and "(--measured)" in out


@pytest.mark.parametrize("flags", [["--max-concurrency", "2"], ["--think-time", "1"],
                                   ["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}']])
def test_validate_measured_refuses_flags_it_would_ignore(tmp_path, capsys, flags):
    # the workload and the deployment come from the result: these engine-run flags were silently dropped
    line = _refused(capsys, _measured(b.write(tmp_path / "v.json", b.vllm_bench()), *flags))
    assert f"no generated workload: drop {flags[0]}" in line


def test_a_rate_check_too_short_to_tell_says_so(capsys):
    # 10 requests at 10^6 req/s arrive as one burst: the SLO passes, but nothing is known about that rate
    argv = ["capacity", "--model", "tiny", "-n", "10", "--duration", "0", "--seeds", "1", "-q", "--qps", "1000000"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "saturation: no verdict (fewer than 20 requests per seed" in out and "median offered 0" not in out


def test_serve_refusal_leaves_no_record_file(tmp_path, capsys):
    record = tmp_path / "served.jsonl"
    line = _refused(capsys, ["serve", "--model", "no-such-model", "--port", "0", "--record", str(record)])
    assert "unknown model 'no-such-model'" in line and not record.exists()


def test_plan_deployment_file_reads_back_from_another_folder(tmp_path, monkeypatch, capsys):
    # a --model config.json relative to the cwd used to be written as given: unreadable from anywhere else
    from sim.capacity.launch import deployment_text
    from sim.serving.deployment import load_deployment
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps({
        "model_type": "llama", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
        "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048}))
    monkeypatch.chdir(tmp_path)
    text = deployment_text(SimConfig(model="cfg/config.json", scheduler="vllm_v1"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "deployment.yaml").write_text(text)
    monkeypatch.chdir(tmp_path / "out")
    assert load_deployment("deployment.yaml").model == str((tmp_path / "cfg" / "config.json").resolve())
    assert "model: tiny\n" in deployment_text(SimConfig(model="tiny"))
