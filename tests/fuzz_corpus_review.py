"""More of the hostile-input corpus (tests/fuzz_corpus.py): the surface of issues 32 and 33.

``validate --measured`` with each reader's files broken field by field (wrong types, signs, magnitudes past int64
or 1e20, non-finite numbers, truncated or nested files, folders where files belong, loads too large to replay),
the speculative-decoding, goodput, closed-loop and KV-reservation flags, and ``servesim serve``'s own flags.
"""

from __future__ import annotations

import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.fuzz_corpus import BAD_FLAG_VALUES, FLAG_BASES, PLAN_FAST, Case, _deep

# ---- measured results (validate --measured) ----------------------------------------------------------------

def _measured(name: str) -> list[str]:
    return ["validate", "--measured", "{dir}/" + name, "--gpu", "a100-80gb", "--model", "tiny", "--out", "{dir}/o"]


def _jsonb(data: object) -> bytes:
    return json.dumps(data).encode()


def measured_cases(rng: random.Random) -> Iterator[Case]:
    from tests.sim.measured import builders as b
    bad_values = [-1, "x", None, [1], True, 10**30, 1e300]
    for key, low in (("ttfts", 0), ("input_lens", 0), ("output_lens", 0), ("itls", 0), ("latencies", 0)):
        for bad in bad_values:
            if key == "input_lens" and bad == 1e300:
                continue  # same as 10**30 for a count
            cells = {"ttfts": [bad, 0.2, 0.0], "input_lens": [bad, 200, 50], "output_lens": [bad, 3, 0],
                     "itls": [[bad], [0.04, 0.04], []], "latencies": [bad, 0.28, 0.0]}[key]
            yield Case("measured", f"vllm-bench {key}[0]={bad!r}"[:50], _measured("v.json"),
                       {"v.json": _jsonb(b.vllm_bench(**{key: cells}))})
    for key in ("request_rate", "num_prompts", "burstiness", "duration", "max_concurrency"):
        for bad in ("x", -1, [1], 10**30):
            yield Case("measured", f"vllm-bench {key}={bad!r}", _measured("v.json"),
                       {"v.json": _jsonb(b.vllm_bench(detailed=False, **{key: bad}))})
    yield Case("measured", "vllm-bench summary-only 1e9 prompts", _measured("v.json"),
               {"v.json": _jsonb(b.vllm_bench(detailed=False, num_prompts=10**9, request_rate=1e6))})
    yield Case("measured", "vllm-bench model_id not a string (no --model)",
               ["validate", "--measured", "{dir}/v.json", "--gpu", "a100-80gb", "--out", "{dir}/o"],
               {"v.json": _jsonb(b.vllm_bench(model_id=7))})
    text = json.dumps(b.vllm_bench())
    for what, data in {"truncated": text[:len(text) // 2], "empty": "", "a list": "[]", "deep": _deep(100_000),
                       "NaN": text.replace("150.0", "NaN"), "5000-digit integer": text.replace("300", "9" * 5000, 1)
                       }.items():
        yield Case("measured", f"vllm-bench {what}", _measured("v.json"), {"v.json": data.encode()})
    yield Case("measured", "vllm-bench bad utf-8", _measured("v.json"), {"v.json": b"\xff\xfe{}"})
    for what, path in {"missing": "{dir}/nope.json", "an empty folder": "{dir}/e", "a device": "/dev/null"}.items():
        argv = _measured("x")
        argv[2] = path
        yield Case("measured", what, argv, {"e/.keep": b""} if what == "an empty folder" else {})
    # inference-perf: stages from config.yaml, per-request records; the files are written to a scratch folder first
    with tempfile.TemporaryDirectory() as tmp:
        folder = b.inference_perf(Path(tmp) / "r", per_request=True)
        ip = {f"r/{q.name}": q.read_bytes() for q in folder.iterdir()}
        summary_only = {k: v for k, v in ip.items() if "per_request" not in k}
        ap = {f"a/{q.name}": q.read_bytes() for q in b.aiperf(Path(tmp) / "a").iterdir()}
        ve = {f"e/{q.name}": q.read_bytes() for q in b.vllm_engine(Path(tmp) / "e").iterdir()}
    stage = json.loads(ip["r/stage_0_lifecycle_metrics.json"])
    for bad in ("x", "-1", ".nan", ".inf", "[1]", "1e300", "true"):  # YAML reads 1e300 as a string
        for key in ("rate", "duration"):
            cfg = f"load:\n  type: poisson\n  stages:\n  - rate: {bad if key == 'rate' else 2}\n" \
                  f"    duration: {bad if key == 'duration' else 1.5}\n"
            yield Case("measured", f"inference-perf stage {key}={bad}", _measured("r"),
                       {**summary_only, "r/config.yaml": cfg.encode()})
    for count in (10**12, 10**30):
        huge = {**stage, "load_summary": {**stage["load_summary"], "count": count}}
        yield Case("measured", f"inference-perf count {count:.0e}", _measured("r"),
                   {**summary_only, "r/stage_0_lifecycle_metrics.json": _jsonb(huge)})
    for what, cfg in {"python tag": "load: !!python/object/apply:os.system ['true']\n", "a list": "- 1\n",
                      "bad syntax": "load: [\n"}.items():
        yield Case("measured", f"inference-perf config {what}", _measured("r"), {**ip, "r/config.yaml": cfg.encode()})
    per_req = ip["r/per_request_lifecycle_metrics.json"]
    for what, data in {"truncated": per_req[:60], "an object": b"{}", "deep": _deep(100_000).encode(),
                       "a string time": per_req.replace(b'"output_token_times": [', b'"output_token_times": ["x", ')
                       }.items():
        yield Case("measured", f"inference-perf per-request {what}", _measured("r"),
                   {**ip, "r/per_request_lifecycle_metrics.json": data})
    yield Case("measured", "inference-perf stage file a folder", _measured("r"),
               {**{k: v for k, v in ip.items() if "stage_0" not in k}, "r/stage_0_lifecycle_metrics.json/x": b"1"})
    # GuideLLM
    g = b.guidellm()
    for bad in ("x", -1, 10**30, [1]):
        for key in ("prompt_tokens", "time_to_first_token_ms", "request_start_time"):
            if key == "request_start_time" and bad == -1:  # a clock may start anywhere
                continue
            d = json.loads(json.dumps(g))
            d["benchmarks"][0]["requests"]["successful"][0][key] = bad
            yield Case("measured", f"guidellm {key}={bad!r}", _measured("g.json"), {"g.json": _jsonb(d)})
    for what, bench in {"benchmarks empty": [], "benchmark a number": [7]}.items():
        yield Case("measured", f"guidellm {what}", _measured("g.json"), {"g.json": _jsonb({**g, "benchmarks": bench})})
    # AIPerf
    jl = ap["a/profile_export.jsonl"]
    for what, data in {"truncated": jl[:120], "empty": b"", "NaN": jl.replace(b'"value": 100', b'"value": NaN'),
                       "start 7e27 ns": jl.replace(b'"request_start_ns": 7', b'"request_start_ns": 7000000000', 1),
                       "unknown unit": jl.replace(b'"unit": "ms"', b'"unit": "parsecs"'),
                       "value a string": jl.replace(b'"value": 100', b'"value": "100"')}.items():
        yield Case("measured", f"aiperf {what}", _measured("a"), {**ap, "a/profile_export.jsonl": data})
    # vLLM engine timestamps
    rq, meta = ve["e/requests.jsonl"], ve["e/meta.json"]
    for what, data in {"truncated": rq[:70], "input_toks 1e30": rq.replace(b'"input_toks": 100', b'"input_toks": 1e30'),
                       "queued_ts Infinity": rq.replace(b'"queued_ts": 500.0', b'"queued_ts": Infinity'),
                       "first token before queued": rq.replace(b'"first_token_ts": 500.1', b'"first_token_ts": 1.0')
                       }.items():
        yield Case("measured", f"vllm-engine {what}", _measured("e"), {**ve, "e/requests.jsonl": data})
    for what, old, new in (("tp above the heads", b'"tensor_parallel_size": 1', b'"tensor_parallel_size": 4096'),
                           ("max_num_seqs 1e30", b'"max_num_seqs": 8', b'"max_num_seqs": 1e30'),
                           ("max_model_len 1e12", b'"max_model_len": 4096', b'"max_model_len": 1000000000000'),
                           ("tp a string", b'"tensor_parallel_size": 1', b'"tensor_parallel_size": "1"')):
        yield Case("measured", f"vllm-engine meta {what}", _measured("e"), {**ve, "e/meta.json": meta.replace(old, new)})


# ---- speculative decoding, goodput, closed-loop, KV-reservation flags; serve's flags ------------------------

SPEC_OK = '{"method": "ngram", "num_speculative_tokens": 3}'
SPEC_BAD = ["{", "[]", "7", "null", '"x"', '{"method": "ngram"}', '{"method": "warp", "num_speculative_tokens": 3}',
            '{"method": "ngram", "num_speculative_tokens": -1}', '{"method": "ngram", "num_speculative_tokens": NaN}',
            '{"method": "ngram", "num_speculative_tokens": 1e999}', '{"method": "ngram", "num_speculative_tokens": "3"}',
            '{"method": "ngram", "num_speculative_tokens": ' + "9" * 5000 + "}", _deep(100_000), "x" * 5000,
            '{"method": "ngram", "num_speculative_tokens": 3, "bogus": 1}', '{"method": "eagle", "num_speculative_tokens": 3}']
ACCEPTANCE_BAD = ["nan", "-0.1", "1.5", ",", "0.5,nan", "abc", "0.5," * 5000, "inf", "1e999", "0.5,0.9"]
GOODPUT_BAD = ["ttft", "ttft:", ":100", "ttft:nan", "ttft:-1", "ttft:inf", "bogus:100", "ttft:100:3", "ttft:1e999"]


def new_flag_cases(rng: random.Random) -> Iterator[Case]:
    v1 = [*FLAG_BASES["simulate"], "--scheduler", "vllm_v1"]
    for bad in SPEC_BAD:
        yield Case("spec-flags", f"simulate --speculative-config {bad[:30]}", [*v1, "--speculative-config", bad])
    for bad in SPEC_BAD[:6]:
        yield Case("spec-flags", f"plan --speculative-config {bad[:30]}",
                   [*PLAN_FAST, "--schedulers", "vllm_v1", "--speculative-config", bad])
    for bad in ACCEPTANCE_BAD:
        yield Case("spec-flags", f"--spec-acceptance {bad[:20]}",
                   [*v1, "--speculative-config", SPEC_OK, f"--spec-acceptance={bad}"])
    yield Case("spec-flags", "--spec-acceptance without a config", [*v1, "--spec-acceptance", "0.5"])
    yield Case("spec-flags", "speculation on orca", [*FLAG_BASES["simulate"], "--scheduler", "orca",
                                                      "--speculative-config", SPEC_OK, "--spec-acceptance", "0.6"])
    for bad in GOODPUT_BAD:
        for name in ("simulate", "capacity"):
            yield Case("goodput", f"{name} --goodput {bad}", [*FLAG_BASES[name], "--goodput", bad])
    yield Case("closed-loop", "--think-time without --max-concurrency", [*FLAG_BASES["simulate"], "--think-time", "1"])
    for bad in ("bogus", "", "ORACLE"):
        yield Case("kv-reservation", f"--kv-reservation {bad}",
                   [*FLAG_BASES["simulate"], "--scheduler", "orca", f"--kv-reservation={bad}"])
    yield Case("kv-reservation", "oracle on a paged policy", [*FLAG_BASES["simulate"], "--kv-reservation", "oracle"])
    yield Case("flags", "--virtual-engines with a value", [*FLAG_BASES["simulate"], "--virtual-engines=3"])
    for bad in ("xml", "", "PARQUET"):
        yield Case("flags", f"--format {bad}", [*FLAG_BASES["simulate"], f"--format={bad}"])
    # serve: --device without --engine refuses after parsing, so a wrongly parsed value never starts a server; the
    # refusal must then name the flag itself
    serve = ["serve", "--model", "tiny", "--port", "0", "--device", "cpu"]
    for flag in ("--port", "--speedup"):
        for bad in [*BAD_FLAG_VALUES, "65536" if flag == "--port" else "1e7"]:
            yield Case("serve-flags", f"{flag}={bad[:12]}", [*serve, f"{flag}={bad}"], must_name=f"argument {flag}")
    for what, argv, files in (
            ("--record a folder", ["--record", "{dir}"], {}),
            ("--record in a missing folder", ["--record", "{dir}/no/r.jsonl"], {}),
            ("--deployment disaggregated", ["--deployment", "{dir}/d.yaml"],
             {"d.yaml": b"model: tiny\nmode: disaggregated\nprefill: {replicas: 1}\ndecode: {replicas: 1}\n"}),
            ("--deployment a folder", ["--deployment", "{dir}"], {}),
            ("--host unresolvable", ["--host", "300.1.1.1"], {})):
        yield Case("serve-flags", what, ["serve", "--model", "tiny", "--port", "0", *argv], files)
