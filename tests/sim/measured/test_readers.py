"""Each format's reader on fixtures written from its documented schema (tests/sim/measured/builders.py): the
per-request records, the client's summary in seconds, the load settings, and one-line errors naming file and field."""

from __future__ import annotations

import json

import pytest

from sim.measured import MeasuredError, detect_format, read_measured, read_measured_runs
from tests.sim.measured import builders as b

SENDS, TTFTS, LATENCIES = [0.0, 0.5], [0.10, 0.20], [0.16, 0.28]


def _check_two_ok_one_failed(run, gaps=True) -> None:
    """The builders' three requests: A and B succeeded (send, TTFT, latency, gaps as written), C failed."""
    assert [r.success for r in run.requests] == [True, True, False]
    ok = run.succeeded
    assert [(r.input_tokens, r.output_tokens) for r in ok] == [(100, 4), (200, 3)]
    assert [r.send_time for r in ok] == pytest.approx(SENDS)
    assert [r.ttft for r in ok] == pytest.approx(TTFTS)
    assert [r.latency for r in ok] == pytest.approx(LATENCIES)
    if gaps:
        assert [list(r.gaps) for r in ok] == [pytest.approx([0.02] * 3), pytest.approx([0.04] * 2)]
    failed = run.requests[2]
    assert failed.input_tokens == 50 and failed.ttft is None and failed.latency is None
    assert run.exact


def test_vllm_bench_detailed(tmp_path) -> None:
    path = b.write(tmp_path / "vllm.json", b.vllm_bench())
    assert detect_format(path) == "vllm-bench"
    run = read_measured(path)
    _check_two_ok_one_failed(run)
    assert run.requests[2].error == "HTTP 500"
    # the summary in seconds; vLLM writes median_ and the chosen pNN_ only (p90 absent by default)
    assert run.summary["ttft"] == pytest.approx({"mean": 0.150, "p50": 0.150, "p99": 0.199})
    assert run.summary["e2el"]["p99"] == pytest.approx(0.2792)
    assert (run.load["request_rate"], run.load["burstiness"], run.load["failed"]) == (2.0, 1.0, 1)
    assert run.deployment == {"hf_model": "meta-llama/Llama-3.1-8B"}
    assert [k for k, *_ in run.definitions.metrics] == ["ttft", "tpot", "itl", "e2el"]


def test_vllm_bench_infinite_rate_and_summary_only(tmp_path) -> None:
    run = read_measured(b.write(tmp_path / "v.json", b.vllm_bench(detailed=False, request_rate="inf")))
    assert run.requests == [] and not run.exact and run.load["request_rate"] == float("inf")
    assert "reconstructed" in run.notes[0]


def test_vllm_bench_without_start_times_is_not_exact(tmp_path) -> None:
    data = b.vllm_bench()
    del data["start_times"]
    run = read_measured(b.write(tmp_path / "v.json", data))
    assert not run.exact and run.succeeded[0].send_time is None and "start_times" in run.notes[0]


def test_inference_perf_folder(tmp_path) -> None:
    folder = b.inference_perf(tmp_path / "ip")
    assert detect_format(folder) == "inference-perf"
    run = read_measured(folder)
    _check_two_ok_one_failed(run)  # the records are sorted by start time, sends relative to the stage's first
    assert run.label == "stage_0"
    assert run.summary["time_to_first_token"] == pytest.approx({"mean": 0.15, "p50": 0.15, "p90": 0.19, "p99": 0.199})
    assert run.load["arrival"] == "poisson" and run.load["request_rate"] == 2.0 and run.load["dataset"] == "shareGPT"
    assert run.load["mean_input_tokens"] == 150.0 and run.load["mean_output_tokens"] == 3.5


def test_inference_perf_without_per_request_records_is_reconstructed(tmp_path) -> None:
    run = read_measured(b.inference_perf(tmp_path / "ip", per_request=False))
    assert run.requests == [] and not run.exact and "reconstructed" in run.notes[0]


def test_guidellm_report(tmp_path) -> None:
    path = b.write(tmp_path / "benchmarks.json", b.guidellm())
    assert detect_format(path) == "guidellm"
    run = read_measured(path)
    _check_two_ok_one_failed(run, gaps=False)
    # GuideLLM keeps each request's first-to-last-token span: one pooled gap, whose mean per token is its ITL
    assert [r.gaps for r in run.succeeded] == [pytest.approx((0.06,)), pytest.approx((0.08,))]
    assert run.client_version == "0.4.0" and run.load["arrival"] == "poisson"
    assert run.summary["time_to_first_token_ms"] == pytest.approx({"mean": 0.15, "p50": 0.15, "p90": 0.19,
                                                                   "p99": 0.199})


def test_aiperf_folder_skips_warmup_records(tmp_path) -> None:
    folder = b.aiperf(tmp_path / "artifacts")
    assert detect_format(folder) == "aiperf" and detect_format(folder / "profile_export.jsonl") == "aiperf"
    run = read_measured(folder)
    _check_two_ok_one_failed(run)
    assert len(run.requests) == 3  # the warm-up record is not part of the profile
    assert run.load["seed"] == 7 and run.summary["time_to_first_token"]["p90"] == pytest.approx(0.19)


def test_vllm_engine_folder_and_tree(tmp_path) -> None:
    folder = b.vllm_engine(tmp_path / "runs" / "SOMEGPU" / "run")
    for path in (folder, folder / "requests.jsonl", tmp_path / "runs"):
        assert detect_format(path) == "vllm-engine"
    run = read_measured(tmp_path / "runs")
    assert run.definitions.clock == "engine" and run.label == "SOMEGPU/run"
    assert [r.ttft for r in run.requests] == pytest.approx(TTFTS)
    assert [r.queue for r in run.requests] == pytest.approx([0.01, 0.01])
    assert run.deployment["max_batch_size"] == 8 and run.deployment["model"] == "llama-3.1-8b"
    assert "gpu" not in run.deployment and any("--gpu" in n for n in run.notes)


def test_several_runs_need_a_stage(tmp_path) -> None:
    data = b.guidellm()
    data["benchmarks"] *= 2
    path = b.write(tmp_path / "g.json", data)
    assert len(read_measured_runs(path)) == 2
    with pytest.raises(MeasuredError, match="holds 2 runs"):
        read_measured(path)
    assert read_measured(path, stage=1).format == "guidellm"


@pytest.mark.parametrize(("make", "field"), [
    (lambda p: b.write(p / "v.json", b.vllm_bench(ttfts=[0.1, "x", 0.0])), "ttfts[1]"),
    (lambda p: b.write(p / "v.json", b.vllm_bench(itls=[[0.1], [-1.0], []])), "itls[1][0]"),
    (lambda p: b.write(p / "v.json", b.vllm_bench(output_lens=[4, 3])), "output_lens"),
    (lambda p: b.write(p / "v.json", b.vllm_bench(output_lens=[4, 3.5, 0])), "output_lens[1]"),
    (lambda p: b.write(p / "g.json", {"benchmarks": [{"requests": {"successful": [{"output_tokens": 3}]}}]}),
     "benchmarks[0].requests.successful[0].prompt_tokens"),
])
def test_malformed_field_is_named(tmp_path, make, field) -> None:
    path = make(tmp_path)
    with pytest.raises(MeasuredError) as e:
        read_measured_runs(path)
    msg = str(e.value)
    assert str(path.name) in msg and f"'{field}'" in msg and "\n" not in msg


def test_malformed_jsonl_line_is_named(tmp_path) -> None:
    folder = b.aiperf(tmp_path / "a")
    lines = (folder / "profile_export.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"unit": "ms"', '"unit": "fortnights"', 1)
    (folder / "profile_export.jsonl").write_text("\n".join(lines))
    with pytest.raises(MeasuredError, match=r"profile_export\.jsonl:2: field 'metrics\..*\.unit'"):
        read_measured(folder)
    run_dir = b.vllm_engine(tmp_path / "e" / "G" / "r")
    (run_dir / "requests.jsonl").write_text(json.dumps({"input_toks": 5, "output_toks": 2, "arrival_time": 1.0,
                                                         "queued_ts": None}) + "\n")
    with pytest.raises(MeasuredError, match=r"requests\.jsonl:1: field 'queued_ts': missing"):
        read_measured(run_dir)


def test_unknown_inputs_say_what_is_read(tmp_path) -> None:
    with pytest.raises(MeasuredError, match="no such file"):
        detect_format(tmp_path / "absent.json")
    with pytest.raises(MeasuredError, match="not a result servesim reads"):
        detect_format(b.write(tmp_path / "x.json", {"hello": 1}))
    with pytest.raises(MeasuredError, match="a folder, but not"):
        detect_format(tmp_path)


def test_inference_perf_stages_split_the_records_in_order(tmp_path) -> None:
    """Stages run one after another: the per-request records, by start time, go to each stage by its count."""
    folder = b.inference_perf(tmp_path / "ip")
    stage = json.loads((folder / "stage_0_lifecycle_metrics.json").read_text())
    stage["load_summary"]["count"] = 2
    b.write(folder / "stage_0_lifecycle_metrics.json", stage)
    stage["load_summary"].update(count=1, requested_rate=4.0)
    b.write(folder / "stage_1_lifecycle_metrics.json", stage)
    (folder / "config.yaml").write_text("load:\n  type: constant\n  stages:\n  - {rate: 2, duration: 1}\n"
                                        "  - {rate: 4, duration: 1}\n")
    runs = read_measured_runs(folder)
    assert [r.label for r in runs] == ["stage_0", "stage_1"]
    assert [r.input_tokens for r in runs[0].requests] == [100, 200] and runs[0].exact
    assert [(r.input_tokens, r.success, r.send_time) for r in runs[1].requests] == [(50, False, 0.0)]
    assert (runs[0].load["request_rate"], runs[1].load["request_rate"], runs[1].load["arrival"]) == (2.0, 4.0,
                                                                                                  "constant")
