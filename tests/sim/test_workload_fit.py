"""Issue 32 faults 1, 5, 7 and 10: the default workload fits the model identically in simulate, capacity and plan
(said in one line); plan's defaults; the prefix cache line on a trace without reuse; the sharegpt default named."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from sim.capacity.search import Workload
from sim.cli.main import main
from sim.serving.simulator import SimConfig


def test_simulate_clips_the_default_workload_to_the_context_as_capacity_does(tmp_path, capsys):
    """llama-2-7b's 4,096-token context: requests past it are clipped (not skipped), to the very lengths the capacity
    search draws for the same seed, and one line says how many."""
    out = tmp_path / "run"
    assert main(["simulate", "-n", "200", "--qps", "2", "-q", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    lines = [line for line in text.splitlines() if "clipped" in line]
    assert len(lines) == 1 and re.match(r"workload: clipped \d+ of 200 requests to llama-2-7b's context of 4096 "
                                        r"tokens", lines[0])
    assert "200 completed of 200 simulated, 200 in trace, 0 skipped" in text
    simulated = pd.read_csv(out / "requests.csv")
    drawn = Workload(num_requests=200).for_model(SimConfig().model_spec()).trace(0, None)
    assert list(zip(simulated["prompt_tokens"], simulated["output_tokens"])) == [
        (r.prompt_tokens, r.output_tokens) for r in drawn]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["requests"]["clipped_to_context"] == lines[0]


def test_capacity_says_the_same_clip_in_one_line(capsys):
    assert main(["capacity", "--seeds", "1", "-n", "200", "--duration", "0", "-j", "1", "-q", "--qps", "0.5"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "clipped" in line]
    assert len(lines) == 1 and lines[0].startswith("workload: clipped ") and "of 200 requests" in lines[0]


def test_strict_and_an_explicit_limit_keep_the_trace_as_given(capsys):
    assert main(["simulate", "--model", "tiny", "-n", "30", "--qps", "20", "-q", "--max-total-tokens", "4096"]) == 0
    out = capsys.readouterr().out
    assert "clipped" not in out and "skipped (" in out


def test_plan_sizes_vllm_v1_by_default_and_its_help_names_the_sharegpt_table(capsys):
    with pytest.raises(SystemExit):
        main(["plan", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: vllm,sarathi,vllm_v1)" in text
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Sarathi-Serve's ShareGPT table of long conversations (median prompt 1,730" in text


def test_a_trace_without_reuse_says_its_cache_cannot_hit(capsys):
    """vllm_v1 caches prefixes by default; a trace that declares none gets a line saying so, not only 0.0%."""
    assert main(["simulate", "--model", "tiny", "-n", "30", "--qps", "20", "-q", "--scheduler", "vllm_v1"]) == 0
    out = capsys.readouterr().out
    assert "prefix cache: the trace declares no shared prefixes" in out


def test_a_trace_with_reuse_compares_the_hit_rate_with_an_unbounded_cache(capsys):
    """Fault 7: `trace stats` reports what an unbounded cache would hit; simulate says both figures."""
    assert main(["simulate", "--model", "tiny", "-n", "40", "--qps", "20", "-q", "--scheduler", "vllm_v1",
                 "--system-prompt", "256", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    reuse = summary["trace_reuse"]
    assert reuse["requests_with_reuse_info"] == 40 and reuse["ideal_hit_rate_tokens"] > 0
    assert main(["simulate", "--model", "tiny", "-n", "40", "--qps", "20", "-q", "--scheduler", "vllm_v1",
                 "--system-prompt", "256"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"share [\d.]+% of their prompt tokens with earlier ones \(what `servesim trace stats` "
                     r"reports: an unbounded cache\); .* kept [\d.]+%", out)


def test_a_long_pipelined_run_gets_a_timeline_of_bounded_size():
    """Fault 11: batch slices past the cap are left out (the timeline says where it stops), keeping files small."""
    from sim.outputs.timeline import build_timeline
    n = 1000  # 1000 iterations x 8 stages, 1 ms each
    batches = pd.DataFrame({"replica": 0, "stage": [s for _ in range(n) for s in range(8)],
                            "batch_id": [i for i in range(n) for _ in range(8)],
                            "start": [(i + s) * 1e-3 for i in range(n) for s in range(8)],
                            "end": [(i + s + 1) * 1e-3 for i in range(n) for s in range(8)],
                            "num_prefill_tokens": 0, "num_decode_tokens": 4, "batch_size": 4,
                            "num_prefill_items": 0, "kv_blocks_used": 10})
    requests = pd.DataFrame(columns=["request_id", "replica", "arrival_time", "first_scheduled_time",
                                     "first_token_time", "completion_time", "prompt_tokens", "output_tokens",
                                     "num_preemptions"])
    data = build_timeline({"config": {}}, requests, batches, max_batch_slices=800)
    info = data["otherData"]
    assert (info["batch_slices_shown"], info["batch_slices_in_run"]) == (800, 8000)
    # k ms holds min(k + 1, 8) starts: 36 up to 7 ms, then 8 a ms, so the 800th start is at 7 + ceil(764 / 8) ms
    assert info["cut_at_s"] == pytest.approx(0.103)
    assert sum(e.get("cat") == "batch" for e in data["traceEvents"]) == 800
    whole = build_timeline({"config": {}}, requests, batches, max_batch_slices=None)
    assert whole["otherData"]["cut_at_s"] is None and whole["otherData"]["batch_slices_shown"] == 8000
