"""vLLM V1 as deployed (issue 30): its async engine loop and its KV admission, against times derived by hand.

A constant-cost model (every step 1.0 s on the device, a fixed host time per step) makes each time exact.
"""

from __future__ import annotations

import pytest

from sim.serving import SimConfig
from sim.serving.async_loop import AsyncReplica
from tests.helpers import make_requests, run_constant


def _tokens(spec, *, host=0.0, asynchronous: bool):
    reqs, _, _, _ = run_constant(spec, "vllm_v1", budget=4096, host=host,
                                 replica_cls=AsyncReplica if asynchronous else None)
    return {r.request_id: list(r.token_times) for r in reqs}


def test_a_request_arriving_mid_step_waits_one_step_more_with_async_scheduling():
    """A arrives at 0 into an idle engine: step [0, 1]. B arrives at 0.5, while that step runs. Serially B joins
    the next step, [1, 2] (TTFT 1.5); with async scheduling the next step was decided at 0, when the first
    started, so B first runs in [2, 3] (TTFT 2.5). A's tokens are the same (1, 2, 3)."""
    spec = [(0.0, 16, 3), (0.5, 16, 2)]
    serial, asynchronous = _tokens(spec, asynchronous=False), _tokens(spec, asynchronous=True)
    assert serial["A"] == asynchronous["A"] == [1.0, 2.0, 3.0]
    assert serial["B"] == [2.0, 3.0]
    assert asynchronous["B"] == [3.0, 4.0]


def test_host_time_shorter_than_the_step_is_hidden():
    """Host 0.3 s a step, device 1.0 s: serially every step takes 1.3 s; with async scheduling the next step's
    host work runs during the current step, so tokens come every 1.0 s after the first (0.3 + 1.0)."""
    spec = [(0.0, 16, 4)]
    assert _tokens(spec, host=0.3, asynchronous=False)["A"] == pytest.approx([1.3, 2.6, 3.9, 5.2])
    assert _tokens(spec, host=0.3, asynchronous=True)["A"] == pytest.approx([1.3, 2.3, 3.3, 4.3])


def test_host_time_longer_than_the_step_is_exposed_by_the_difference():
    """Host 1.5 s, device 1.0 s: each step starts 1.5 s after the previous one started (its host work began
    then), so tokens come every 1.5 s; serially every 2.5 s."""
    spec = [(0.0, 16, 4)]
    assert _tokens(spec, host=1.5, asynchronous=False)["A"] == pytest.approx([2.5, 5.0, 7.5, 10.0])
    assert _tokens(spec, host=1.5, asynchronous=True)["A"] == pytest.approx([2.5, 4.0, 5.5, 7.0])


def test_vllm_v1_admits_without_the_v0_watermark():
    """100 blocks of 16 tokens, 1% watermark (1 block): a 1,600-token prompt needs all 100 blocks. vLLM v0's
    block manager keeps the watermark free and can never admit it; V1's KV cache manager admits it."""
    spec = [(0.0, 1600, 1)]
    reqs, _, _, _ = run_constant(spec, "vllm_v1", budget=4096, blocks=100, watermark=0.01)
    assert reqs[0].token_times == [1.0]
    reqs, _, _, scheds = run_constant(make_requests(spec), "vllm", budget=4096, blocks=100, watermark=0.01)
    assert reqs[0].token_times == [] and scheds[0].waiting


def test_the_engine_loop_defaults_and_refusals():
    assert SimConfig(scheduler="vllm_v1").engine_loop == "async"
    assert SimConfig(scheduler="vllm_v1", pp=2).engine_loop == "serial"  # PP micro-batches in flight instead
    assert SimConfig(scheduler="vllm_v1", async_scheduling=False).engine_loop == "serial"
    for policy in ("sarathi", "vllm", "orca", "faster_transformer"):
        assert SimConfig(scheduler=policy).engine_loop == "serial"
    with pytest.raises(ValueError, match="ran serially"):
        SimConfig(scheduler="sarathi", async_scheduling=True).engine_loop
    with pytest.raises(ValueError, match="batch queue"):
        SimConfig(scheduler="vllm_v1", pp=2, async_scheduling=True).engine_loop


def test_each_frontend_term_by_hand():
    """One request of 100 prompt and 3 output tokens at t=0, steps of 1.0 s. The frontend takes 10 ms plus
    100 us per prompt token (10 ms) before the engine sees it (0.02 s), 5 ms per streamed token, 20 ms at the end:
    engine TTFT 1.0, client TTFT 0.02 + 1.0 + 0.005; engine E2E 3.0, client 0.02 + 3.0 + 0.005 + 0.02; the gaps
    between tokens are the engine's."""
    from sim.cost.constant import ConstantCostModel
    from sim.request import TraceRequest
    from sim.serving import simulate

    res = simulate([TraceRequest("a", 0.0, 100, 3)], SimConfig(model="tiny", scheduler="vllm_v1",
                                                               frontend="custom:10:100:5000:20"),
                   cost_model=ConstantCostModel(1.0))
    row = res.requests.iloc[0]
    assert (row["arrival_time"], row["engine_arrival_time"]) == pytest.approx((0.0, 0.02))
    assert (row["engine_ttft"], row["ttft"]) == pytest.approx((1.0, 1.025))
    assert (row["engine_e2e"], row["e2e"]) == pytest.approx((3.0, 3.045))
    assert row["tpot"] == pytest.approx((3.045 - 1.025) / 2)
    lat, eng = res.summary["latency_s"], res.summary["latency_engine_s"]
    assert lat["ttft"]["p50"] == pytest.approx(1.025) and eng["ttft"]["p50"] == pytest.approx(1.0)
    assert lat["tbt"]["p50"] == pytest.approx(1.0)
    assert res.summary["frontend"] == pytest.approx({"name": "custom", "request_s": 0.01, "per_prompt_token_s": 1e-4,
                                                     "per_output_token_s": 5e-3, "completion_s": 0.02})
    none = simulate([TraceRequest("a", 0.0, 100, 3)], SimConfig(model="tiny", scheduler="vllm_v1", frontend="none"),
                    cost_model=ConstantCostModel(1.0))
    assert none.requests.iloc[0]["ttft"] == pytest.approx(1.0) and "latency_engine_s" not in none.summary
    assert SimConfig(scheduler="vllm_v1").effective_frontend().name == "vllm"
    assert SimConfig(scheduler="vllm_v1", usage_context="offline").effective_frontend().name == "none"
    assert SimConfig(scheduler="sarathi").effective_frontend().name == "none"
    with pytest.raises(ValueError, match="custom:REQUEST_MS"):
        SimConfig(frontend="fast")


@pytest.mark.parametrize("gpu,usage,expected", [
    ("h100-sxm", "api-server", (8192, 1024)), ("h100-sxm", "offline", (16384, 1024)),
    ("a100-80gb", "api-server", (2048, 256)), ("a100-80gb", "offline", (8192, 256)),  # 80 GB, but an A100
    ("l40s", "api-server", (2048, 256)), ("h200", "offline", (16384, 1024))])
def test_vllm_v1_defaults_by_gpu_class_and_usage_context(gpu, usage, expected):
    """vLLM's get_batch_defaults: (max_num_batched_tokens, max_num_seqs) by GPU memory class and usage context."""
    c = SimConfig(scheduler="vllm_v1", gpu=gpu, usage_context=usage)
    assert (c.effective_token_budget(), c.effective_max_batch_size()) == expected
    given = SimConfig(scheduler="vllm_v1", gpu=gpu, usage_context=usage, token_budget=512, max_batch_size=64)
    assert (given.effective_token_budget(), given.effective_max_batch_size()) == (512, 64)


def test_vllm_v1_defaults_are_capped_as_vllm_caps_them():
    """A 4-token context: the budget is at most max_num_seqs x max_model_len (256 x 4 = 1024)."""
    c = SimConfig(model="tiny", max_model_len=4, scheduler="vllm_v1", gpu="a100-80gb")
    assert (c.effective_token_budget(), c.effective_max_batch_size()) == (1024, 256)
    assert SimConfig(scheduler="sarathi", gpu="h100-sxm").effective_max_batch_size() == 128  # v0-era: unchanged


def test_rtx_4090_kv_blocks_within_5_percent_of_what_vllm_allocated():
    """vLLM 0.19 allocated 2,588 KV blocks for Llama-3.1-8B on one RTX 4090 at gpu_memory_utilization 0.9,
    max_model_len 32768 (num_gpu_blocks in the resolved configuration of LLMServingSim's published run,
    ../shared/measured/vllm-e2e/README.md); servesim's memory plan gives 2,619 (+1.2%)."""
    cfg = SimConfig(model="llama-3.1-8b", gpu="rtx-4090", scheduler="vllm_v1", max_model_len=32768,
                    token_budget=2048, max_batch_size=256)
    blocks = cfg.plan_memory().num_blocks
    assert abs(blocks / 2588 - 1) < 0.05, blocks


def test_vllm_v1_pipelines_a_prompts_chunks_over_four_stages():
    """A 4,096-token prompt, budget 1,024, 4 stages of 1.0 s each. vLLM V1 counts scheduled tokens as computed,
    so chunk k enters stage 0 at k-1 while the earlier ones are still in the pipeline: the last chunk leaves the
    last stage at 3 + 4 = 7 s (TTFT 7). Sarathi-Serve waits for each chunk to finish: 4 chunks x 4 stages = 16 s."""
    spec = [(0.0, 4096, 2)]
    reqs, comps, rec, _ = run_constant(spec, "vllm_v1", budget=1024, pp=4)
    assert reqs[0].first_token_time == 7.0
    assert [c for _t, c in comps][:4] == [(("A", 1024, k * 1024),) for k in range(4)]  # chunk k over k x 1,024
    stage0 = rec.stage_frame().query("stage == 0")
    assert stage0["start"].tolist()[:4] == [0.0, 1.0, 2.0, 3.0]
    assert reqs[0].token_times == [7.0, 11.0]  # the decode needs the sampled token: one full pass more
    reqs, _, _, _ = run_constant(spec, "sarathi", budget=1024, pp=4)
    assert reqs[0].first_token_time == 16.0


def test_a_request_with_a_chunk_in_flight_waits_rather_than_being_preempted_mid_pipeline():
    """4 blocks of 16 tokens, 2 stages of 1.0 s, budget 32. A (16-token prompt, 4 tokens) and B (32, 2).
    0: [A16, B16] and [B16 more] in flight (3 blocks). 2: A's token; A's decode takes the last block. 3: B's token;
    B's decode needs a third block: none free, no victim, B preempts itself. 4: A's token; [A, B re-prefills 31]
    (budget 31 left); B's last 2 known tokens need a third block while its 31 are in flight: B waits (not
    preempted mid-pipeline), nothing is admitted. 6: A's token; B (nothing in flight) preempts itself again;
    [A] and [B 32] go. 8: A finishes (2 blocks free); B's last token gets its block: [B 1] at 8, out at 10."""
    spec = [(0.0, 16, 4), (0.0, 32, 2)]
    reqs, comps, _, scheds = run_constant(spec, "vllm_v1", budget=32, pp=2, blocks=4)
    assert comps == [(0.0, (("A", 16, 0), ("B", 16, 0))), (0.0, (("B", 16, 16),)), (2.0, (("A", 1, 16),)),
                     (4.0, (("A", 1, 17), ("B", 31, 0))), (6.0, (("A", 1, 18),)), (6.0, (("B", 32, 0),)),
                     (8.0, (("B", 1, 32),))]
    assert [r.token_times for r in reqs] == [[2.0, 4.0, 6.0, 8.0], [3.0, 10.0]]
    assert scheds[0].num_preemptions == 2 and scheds[0].bm.num_used == 0
