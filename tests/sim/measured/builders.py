"""Small benchmark results written from each client's documented schema (never copied from a real run): three
requests with round numbers, so that every figure the readers and the comparison give can be checked by hand.

Requests (input, output tokens, send s, TTFT s, gaps s): A (100, 4, 0.0, 0.10, [0.02, 0.02, 0.02]),
B (200, 3, 0.5, 0.20, [0.04, 0.04]), C (50, 0, 1.0, failed).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OK = [(100, 4, 0.0, 0.10, [0.02, 0.02, 0.02]), (200, 3, 0.5, 0.20, [0.04, 0.04])]
FAILED = (50, 1.0)


def write(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def vllm_bench(detailed: bool = True, **over: Any) -> dict[str, Any]:
    """vllm bench serve --save-result [--save-detailed] (vllm/benchmarks/serve.py's result_json keys)."""
    base = 1000.0  # start_times are time.perf_counter() values
    data: dict[str, Any] = {
        "date": "20260101-000000", "endpoint_type": "vllm", "backend": "vllm", "label": None,
        "model_id": "meta-llama/Llama-3.1-8B", "tokenizer_id": "meta-llama/Llama-3.1-8B", "num_prompts": 3,
        "request_rate": 2.0, "burstiness": 1.0, "max_concurrency": None, "duration": 1.5, "completed": 2,
        "failed": 1, "total_input_tokens": 300, "total_output_tokens": 7, "request_throughput": 1.33,
        "mean_ttft_ms": 150.0, "median_ttft_ms": 150.0, "std_ttft_ms": 50.0, "p99_ttft_ms": 199.0,
        "mean_tpot_ms": 30.0, "median_tpot_ms": 30.0, "std_tpot_ms": 10.0, "p99_tpot_ms": 39.8,
        "mean_itl_ms": 28.0, "median_itl_ms": 20.0, "std_itl_ms": 9.8, "p99_itl_ms": 40.0,
        "mean_e2el_ms": 200.0, "median_e2el_ms": 200.0, "std_e2el_ms": 40.0, "p99_e2el_ms": 279.2,
    }
    if detailed:
        data.update({
            "input_lens": [100, 200, 50], "output_lens": [4, 3, 0], "ttfts": [0.10, 0.20, 0.0],
            "itls": [[0.02, 0.02, 0.02], [0.04, 0.04], []], "latencies": [0.16, 0.28, 0.0],
            "start_times": [base, base + 0.5, base + 1.0], "errors": ["", "", "HTTP 500"],
            "generated_texts": ["a b c d", "e f g", ""]})
    data.update(over)
    return data


def inference_perf(folder: Path, per_request: bool = True, load_type: str = "poisson") -> Path:
    """An inference-perf report folder: one stage file, the summary, per-request records and config.yaml."""
    stage = {"benchmark_time_seconds": 1.5,
             "load_summary": {"count": 3, "send_duration": 1.0, "requested_rate": 2.0, "achieved_rate": 3.0},
             "successes": {"count": 2, "latency": {
                 "request_latency": {"mean": 0.22, "min": 0.16, "max": 0.28, "median": 0.22, "p90": 0.268,
                                     "p99": 0.2788},
                 "time_to_first_token": {"mean": 0.15, "median": 0.15, "p90": 0.19, "p99": 0.199}},
                 "prompt_len": {"mean": 150.0}, "output_len": {"mean": 3.5}},
             "failures": {"count": 1}}
    write(folder / "stage_0_lifecycle_metrics.json", stage)
    write(folder / "summary_lifecycle_metrics.json", stage)
    (folder / "config.yaml").write_text(f"load:\n  type: {load_type}\n  stages:\n  - rate: 2\n    duration: 1.5\n"
                                        "api:\n  type: completion\n  streaming: true\ndata:\n  type: shareGPT\n")
    if per_request:
        recs = []
        for n_in, n_out, send, ttft, gaps in OK:
            start = 50.0 + send
            times = [start + ttft]
            for g in gaps:
                times.append(times[-1] + g)
            recs.append({"start_time": start, "end_time": times[-1],
                         "info": {"request_metrics": {"text": {"input_tokens": n_in}},
                                  "response_metrics": {"output_tokens": n_out, "output_token_times": times}},
                         "error": None})
        recs.append({"start_time": 50.0 + FAILED[1], "end_time": 51.1,
                     "info": {"request_metrics": {"text": {"input_tokens": FAILED[0]}}},
                     "error": {"error_type": "HTTP Error 500", "error_msg": "boom"}})
        write(folder / "per_request_lifecycle_metrics.json", list(reversed(recs)))  # any order: sorted by start
    return folder


def guidellm() -> dict[str, Any]:
    """A GuideLLM report (benchmarks[].config.strategy, metrics.*.successful, requests.successful/errored)."""
    def req(n_in: int, n_out: int, send: float, ttft: float, gaps: list[float]) -> dict[str, Any]:
        start = 2000.0 + send
        span = sum(gaps)
        return {"request_id": f"r{send}", "prompt_tokens": n_in, "output_tokens": n_out,
                "request_start_time": start, "request_end_time": start + ttft + span,
                "request_latency": ttft + span, "time_to_first_token_ms": ttft * 1e3,
                "inter_token_latency_ms": span / (n_out - 1) * 1e3,
                "time_per_output_token_ms": (ttft + span) / n_out * 1e3}
    ok = [req(*r) for r in OK]
    err = {"request_id": "r1.0", "prompt_tokens": FAILED[0], "output_tokens": None,
           "request_start_time": 2000.0 + FAILED[1], "request_end_time": 2001.1}
    dist = {"mean": 150.0, "median": 150.0, "percentiles": {"p50": 150.0, "p90": 190.0, "p99": 199.0}}
    return {"metadata": {"guidellm_version": "0.4.0"}, "benchmarks": [{
        "type_": "generative_benchmark", "config": {"strategy": {"type_": "poisson", "rate": 2.0}},
        "metrics": {"time_to_first_token_ms": {"successful": dist}},
        "requests": {"successful": ok, "incomplete": [], "errored": [err]}}]}


def aiperf(folder: Path) -> Path:
    """An AIPerf artifacts folder: profile_export.jsonl (one record per request) and profile_export_aiperf.json."""
    lines = []
    for n_in, n_out, send, ttft, gaps in OK:
        lines.append({"metadata": {"request_start_ns": 7 * 10**18 + round(send * 1e9), "benchmark_phase": "profiling"},
                      "metrics": {"input_sequence_length": {"value": n_in, "unit": "tokens"},
                                  "output_sequence_length": {"value": n_out, "unit": "tokens"},
                                  "time_to_first_token": {"value": ttft * 1e3, "unit": "ms"},
                                  "request_latency": {"value": (ttft + sum(gaps)) * 1e3, "unit": "ms"},
                                  "inter_chunk_latency": {"value": [g * 1e3 for g in gaps], "unit": "ms"}},
                      "error": None})
    lines.append({"metadata": {"request_start_ns": 7 * 10**18 + round(FAILED[1] * 1e9), "benchmark_phase": "profiling"},
                  "metrics": {"error_isl": {"value": FAILED[0], "unit": "tokens"}},
                  "error": {"code": 500, "type": "InternalServerError", "message": "boom"}})
    lines.append({"metadata": {"request_start_ns": 6 * 10**18, "benchmark_phase": "warmup"},
                  "metrics": {"input_sequence_length": {"value": 9, "unit": "tokens"}}, "error": None})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile_export.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    write(folder / "profile_export_aiperf.json", {
        "time_to_first_token": {"unit": "ms", "avg": 150.0, "p50": 150.0, "p90": 190.0, "p99": 199.0},
        "input_config": {"loadgen": {"request_rate": 2.0, "request_count": 3}, "input": {"random_seed": 7}}})
    return folder


def vllm_engine(folder: Path) -> Path:
    """A run folder of vLLM engine timestamps (meta.json + requests.jsonl), as ../shared/measured/vllm-e2e's."""
    write(folder / "meta.json", {"vllm_version": "0.19.0", "engine_kwargs": {
        "model": "meta-llama/Llama-3.1-8B", "tensor_parallel_size": 1, "data_parallel_size": 1,
        "enable_expert_parallel": False, "max_num_seqs": 8, "max_num_batched_tokens": 2048, "max_model_len": 4096}})
    rows = []
    for i, (n_in, n_out, send, ttft, gaps) in enumerate(OK):
        q = 500.0 + send
        rows.append({"request_id": f"bench-{i}", "input_toks": n_in, "output_toks": n_out, "arrival_time": 1e9 + send,
                     "queued_ts": q, "scheduled_ts": q + 0.01, "first_token_ts": q + ttft,
                     "last_token_ts": q + ttft + sum(gaps)})
    (folder / "requests.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return folder
