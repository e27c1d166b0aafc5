"""Reader of ``vllm bench serve --save-result [--save-detailed]`` JSON (vllm/benchmarks/serve.py in vLLM).

The result holds the run's settings (model_id, num_prompts, request_rate: a number or "inf", burstiness,
max_concurrency; dataset name and seed only when the user passed them as --metadata KEY=VALUE), the summary in
milliseconds (mean_/median_/std_/pNN_ of ttft, tpot, itl, e2el) and, with --save-detailed, per-request lists:
input_lens, output_lens, ttfts (s), itls (per request, the gaps between streamed chunks, s), start_times
(time.perf_counter at send), latencies, errors ("" when it succeeded). vLLM's definitions: TTFT = first chunk - send;
ITL = every chunk gap pooled; TPOT = (latency - TTFT) / (output tokens - 1) over requests with more than one token;
E2EL = latency; failed requests are left out of all four; percentiles by numpy.percentile.
"""

from __future__ import annotations

import math

from sim.measured.run import (
    Definitions,
    Fields,
    MeasuredError,
    MeasuredRequest,
    MeasuredRun,
    check_integer,
    check_number,
    check_numbers,
    read_json,
    stat_block,
)

DEFINITIONS = Definitions(
    clock="client",
    metrics=(("ttft", "ttft", "TTFT"), ("tpot", "tpot", "TPOT"), ("itl", "gaps", "ITL (per streamed chunk)"),
             ("e2el", "e2e", "E2EL")),
    note="vLLM counts output tokens from the server's usage (or re-tokenizes the text); one chunk is one token "
         "with vLLM's default stream interval")

PER_REQUEST = ("input_lens", "output_lens", "ttfts", "itls")
SUMMARY_KEYS = {"ttft": "ttft", "tpot": "tpot", "itl": "itl", "e2el": "e2el"}


def looks_like(data: dict) -> bool:
    """Whether a parsed JSON object is a vLLM benchmark result."""
    return ("endpoint_type" in data or "backend" in data) and ("mean_ttft_ms" in data or "ttfts" in data
                                                              or "mean_e2el_ms" in data)


def _rate(f: Fields) -> float | None:
    v = f.get("request_rate")
    if v is None or v == "inf":
        return math.inf if v == "inf" else None
    return check_number(v, f.where("request_rate"))


def _summary(f: Fields) -> dict[str, dict[str, float]]:
    out = {}
    for key in SUMMARY_KEYS:
        keys = {"mean": f"mean_{key}_ms", "p50": f"median_{key}_ms", "p90": f"p90_{key}_ms", "p99": f"p99_{key}_ms"}
        block = stat_block(f, keys, 1e-3)
        if block:
            out[key] = block
    return out


def _requests(f: Fields) -> tuple[list[MeasuredRequest], bool]:
    """The per-request records (--save-detailed), and whether send times were recorded."""
    ins = f.array("input_lens")
    n = len(ins)
    outs, ttfts, itls = (f.array(k, n) for k in ("output_lens", "ttfts", "itls"))
    starts = f.array("start_times", n, required=False)
    lat = f.array("latencies", n, required=False)
    errors = f.array("errors", n, required=False)
    t0 = min((check_number(s, f.where(f"start_times[{i}]"), -math.inf) for i, s in enumerate(starts)),
             default=0.0) if starts else 0.0
    reqs = []
    for i in range(n):
        err = errors[i] if errors else None
        out = check_integer(outs[i], f.where(f"output_lens[{i}]"))
        ok = (not err) if errors else out > 0
        send = (check_number(starts[i], f.where(f"start_times[{i}]"), -math.inf) - t0) if starts else None
        req = MeasuredRequest(input_tokens=check_integer(ins[i], f.where(f"input_lens[{i}]")), output_tokens=out,
                              send_time=send, success=ok, error=str(err) if err else None)
        if ok:  # a failed request's timings are placeholders (0.0, []): not read
            req.gaps = check_numbers(itls[i], f, f"itls[{i}]")
            req.ttft = check_number(ttfts[i], f.where(f"ttfts[{i}]"))
            req.latency = check_number(lat[i], f.where(f"latencies[{i}]")) if lat else req.ttft + sum(req.gaps)
        reqs.append(req)
    return reqs, starts is not None


def read_vllm_bench(path: str) -> list[MeasuredRun]:
    """The run in a ``vllm bench serve`` result file."""
    f = read_json(path, "vllm bench serve result")
    if not looks_like(f.data):
        raise MeasuredError(f"{f.where()}: not a vllm bench serve result (no endpoint_type/backend with TTFT figures)")
    detailed = all(f.has(k) for k in PER_REQUEST)
    notes = []
    if detailed:
        reqs, timed = _requests(f)
        if not timed:
            notes.append("the result has no start_times (vLLM before they were saved): send times are reconstructed "
                         "from request_rate and burstiness")
    else:
        reqs, timed = [], False
        notes.append("no per-request lists (run without --save-detailed): the workload is reconstructed from "
                     "num_prompts, request_rate, burstiness and the mean input and output lengths")
    completed = f.integer("completed", required=False)
    load = {"request_rate": _rate(f), "burstiness": f.number("burstiness", required=False, low=1e-9),
            "max_concurrency": f.integer("max_concurrency", required=False, low=1),
            "num_prompts": f.integer("num_prompts", required=False, low=1),
            "completed": completed, "failed": f.integer("failed", required=False),
            "dataset": f.text("dataset_name"), "seed": f.get("seed"),
            "total_input_tokens": f.integer("total_input_tokens", required=False),
            "total_output_tokens": f.integer("total_output_tokens", required=False)}
    if not detailed and not (load["num_prompts"] or completed):
        raise f.fail("num_prompts", "missing, and no per-request lists: nothing says how many requests ran")
    model = f.text("model_id")
    return [MeasuredRun(source=str(path), format="vllm-bench", client="vllm bench serve",
                        client_version=f.text("vllm_version"), definitions=DEFINITIONS, requests=reqs,
                        summary=_summary(f), load=load, deployment={"hf_model": model} if model else {},
                        label=f.text("label") or "", duration_s=f.number("duration", required=False),
                        exact=detailed and timed, notes=notes)]
