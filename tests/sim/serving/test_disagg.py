"""Disaggregated prefill/decode: hand-derived timelines on a constant-cost model, conservation, random deployments."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cost.constant import ConstantCostModel
from sim.request import TraceRequest
from sim.serving.disagg import DisaggConfig, LinkConfig, simulate_disaggregated
from sim.serving.simulator import SimConfig

# tiny: 2 layers x 2 kv heads x 16 dims x (k, v) x 2 bytes = 256 bytes of KV per token
KV_BYTES_PER_TOKEN = 256


def _pool(**kw) -> SimConfig:
    return SimConfig(**{"model": "tiny", "scheduler": "vllm", "kv_blocks": 64, "watermark": 0.0, **kw})


def _config(link_bw=256.0 * 32, latency=0.5, **kw) -> DisaggConfig:
    """Link rate: one 32-token prompt's KV (8192 bytes) per second, plus ``latency``."""
    return DisaggConfig(prefill=_pool(**kw.pop("prefill", {})), decode=_pool(**kw.pop("decode", {})),
                        link=LinkConfig(bandwidth=link_bw, latency_s=latency, **kw))


def _run(reqs, config, it=1.0):
    costs = (ConstantCostModel(it), ConstantCostModel(it))
    trace = [TraceRequest(str(i), a, p, o) for i, (a, p, o) in enumerate(reqs)]
    return simulate_disaggregated(trace, config, costs=costs)


def test_one_request_by_hand():
    """Prefill [0, 1): first token at 1 (TTFT 1). Transfer 0.5 + 8192 B / 8192 B/s = 1.5 s: [1, 2.5).
    Decodes [2.5, 3.5) and [3.5, 4.5): tokens 2 and 3; gaps 2.5 (the transfer and the first decode) and 1."""
    res = _run([(0.0, 32, 3)], _config())
    r = res.requests.iloc[0]
    assert r.ttft == pytest.approx(1.0) and r.first_token_time == pytest.approx(1.0)
    assert (r.transfer_start, r.transfer_end) == (pytest.approx(1.0), pytest.approx(2.5))
    assert r.completion_time == pytest.approx(4.5) and r.generated_tokens == 3
    assert r.tbt_max == pytest.approx(2.5) and r.prefill_replica == 0 and r.decode_replica == 1
    d = res.summary["disaggregation"]
    assert d["transfers"] == 1 and d["transfer_s"]["p50"] == pytest.approx(1.5)
    assert d["decode_admission_wait_s"]["p50"] == 0.0
    assert d["link_utilization"] == [pytest.approx(1.5 / 4.5)]
    assert res.summary["latency_s"]["tbt"]["max"] == pytest.approx(2.5)


def test_overlap_leaves_only_the_last_layers_share():
    res = _run([(0.0, 32, 2)], _config(overlap=True))
    assert res.requests.iloc[0].transfer_end == pytest.approx(1.0 + 0.5 + 1.0 / 2)  # tiny has 2 layers


def test_two_transfers_sharing_a_link_take_twice_as_long():
    """Both prompts prefill in one batch ([0, 1)); the second transfer waits for the first on the link."""
    res = _run([(0.0, 32, 2), (0.0, 32, 2)], _config(latency=0.0, decode={"kv_blocks": 64}))
    ends = sorted(res.requests.transfer_end)
    assert ends == [pytest.approx(2.0), pytest.approx(3.0)]
    assert res.summary["disaggregation"]["link_wait_s"]["p99"] == pytest.approx(0.99, abs=0.02)


def test_the_decode_pool_admits_a_transfer_only_when_blocks_are_free():
    """Decode cache: 3 blocks of 16. Each request needs 33 tokens = 3 blocks: the second waits for the first to end."""
    res = _run([(0.0, 32, 3), (0.0, 32, 3)], _config(latency=0.0, decode={"kv_blocks": 3}))
    first, second = sorted(res.requests.itertuples(), key=lambda r: r.transfer_start)
    assert first.transfer_start == pytest.approx(1.0) and first.completion_time == pytest.approx(4.0)
    assert second.transfer_start == pytest.approx(first.completion_time)  # admitted when the first freed
    assert res.summary["disaggregation"]["decode_admission_wait_s"]["p99"] > 2.9


def test_conservation_prefilled_once_decoded_once_blocks_freed_on_both_sides():
    reqs = [(0.1 * i, 20 + 7 * i, 1 + i % 5) for i in range(12)]
    cfg = _config(prefill={"replicas": 2, "kv_blocks": 40}, decode={"replicas": 2, "kv_blocks": 40})
    res = _run(reqs, cfg)
    df = res.requests
    assert (df.generated_tokens == df.output_tokens).all() and len(df) == 12
    batches = res.batches
    pre = batches[batches.pool == "prefill"]
    assert pre.num_prefill_tokens.sum() == sum(p for _, p, _ in reqs)  # every prompt prefilled exactly once
    dec = batches[batches.pool == "decode"]
    assert dec.num_decode_tokens.sum() == sum(o - 1 for _, _, o in reqs)  # every later token decoded there
    assert dec.num_prefill_tokens.sum() == 0
    one_token = df[df.output_tokens == 1]
    assert (one_token.decode_replica == -1).all()  # nothing to move


@st.composite
def deployments(draw):
    n = draw(st.integers(1, 10))
    t, reqs = 0.0, []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 0.2, 1.0]))
        reqs.append((t, draw(st.integers(1, 40)), draw(st.integers(1, 10))))
    pools = []
    for _ in range(2):
        sched = draw(st.sampled_from(["vllm", "sarathi", "vllm_v1", "orca"]))
        pools.append({"replicas": draw(st.integers(1, 3)), "kv_blocks": draw(st.integers(4, 12)),
                      "max_model_len": 64,  # Orca reserves 64 tokens (4 blocks): the smallest cache holds one
                      "scheduler": sched, "max_batch_size": draw(st.integers(1, 4)),
                      "token_budget": draw(st.integers(8, 64)) if sched in ("sarathi", "vllm_v1") else None})
    return reqs, pools, draw(st.sampled_from(["least_kv", "least_running"])), draw(st.booleans())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deployments())
def test_random_disaggregated_deployments_lose_nothing_and_respect_kv_capacity(case):
    reqs, (pre, dec), router, overlap = case
    cfg = dataclasses.replace(_config(prefill=pre, decode=dec, overlap=overlap), decode_router=router)
    res = _run(reqs, cfg, it=0.5)
    df = res.requests
    served = res.summary["requests"]["simulated"]
    assert res.summary["requests"]["completed"] == served == len(df)  # no request lost
    assert (df.generated_tokens == df.output_tokens).all()            # tokens conserved
    assert (df.completion_time >= df.first_token_time).all() and (df.ttft > 0).all()
    b = res.batches
    for pool, cap in (("prefill", pre["kv_blocks"]), ("decode", dec["kv_blocks"])):
        assert (b[b.pool == pool].kv_blocks_used <= cap).all()        # KV never over capacity


def test_plan_searches_prefill_decode_ratios_beside_aggregated_ones(tmp_path, capsys):
    from sim.capacity.planner import enumerate_disaggregated
    from sim.cli.main import main

    cands = enumerate_disaggregated("llama-2-7b", ["a100-80gb"], max_gpus=3, tps=[1, 2])
    shapes = {(c.disagg.prefill.replicas, c.disagg.prefill.tp, c.disagg.decode.replicas, c.disagg.decode.tp)
              for c in cands}
    # P x TP_p + D x TP_d <= 3 GPUs, counted by hand
    assert shapes == {(1, 1, 1, 1), (1, 1, 2, 1), (2, 1, 1, 1), (1, 1, 1, 2), (1, 2, 1, 1)}
    assert all(c.gpus == c.disagg.num_gpus <= 3 and c.mode == "disaggregated" for c in cands)
    assert main(["plan", "--model", "llama-2-7b", "--gpus", "a100-80gb", "--max-gpus", "2", "--tp", "1",
                 "--schedulers", "sarathi", "--budgets", "512", "--disaggregated", "-n", "60", "--duration", "0",
                 "--seeds", "1", "-q", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cheapest aggregated configuration meeting the SLO" in out
    assert "cheapest disaggregated configuration meeting the SLO" in out
    import pandas as pd
    table = pd.read_csv(tmp_path / "plan.csv")
    assert set(table["mode"]) == {"aggregated", "disaggregated"}
    assert (table[table["mode"] == "disaggregated"]["gpus"] == 2).all()


def test_review_fixes_pools_kept_apart():
    """The prefill pool holds a prompt and its first token (not the whole request); Orca decodes without
    preempting (it reserves the maximum length: 96 tokens, 6 blocks, two requests at a time in 12); KV use is
    reported per pool; FasterTransformer cannot decode."""
    reqs = [(0.0, 32, 60)] * 4  # 32 + 60 tokens: 6 blocks on the decode side, 3 on the prefill side
    res = _run(reqs, _config(prefill={"kv_blocks": 3, "max_model_len": 96},
                             decode={"kv_blocks": 12, "scheduler": "orca", "max_model_len": 96}))
    assert res.summary["requests"]["completed"] == 4 and res.summary["kv_cache"]["preemptions"] == 0
    pools = res.summary["kv_cache"]["pools"]
    assert pools["prefill"]["blocks_per_replica"] == 3 and pools["decode"]["blocks_per_replica"] == 12
    assert pools["prefill"]["max_utilization"] <= 1.0 and pools["decode"]["max_utilization"] <= 1.0
    with pytest.raises(ValueError, match="faster_transformer cannot be a decode pool"):
        _config(decode={"scheduler": "faster_transformer"})


def test_link_utilisation_counts_the_whole_transfer_with_overlap():
    res = _run([(0.0, 32, 2)], _config(overlap=True, latency=0.0))
    end = res.requests.iloc[0].completion_time
    assert res.summary["disaggregation"]["link_utilization"] == [pytest.approx(1.0 / end)]


def test_plan_refuses_measured_prices_for_disaggregated_pools(capsys):
    from sim.cli.main import main
    assert main(["plan", "--disaggregated", "--cost-model", "kernels", "--out", "/tmp/servesim-plan-refused"]) == 2
    assert "priced on the roofline" in capsys.readouterr().err


def test_disaggregated_plans_try_expert_parallelism_in_each_pool_of_a_moe_model():
    from sim.capacity.planner import enumerate_disaggregated
    cands = enumerate_disaggregated("mixtral-8x7b", ["h100-sxm"], max_gpus=4, tps=[2], max_replicas=1)
    assert {(c.disagg.prefill.ep, c.disagg.decode.ep) for c in cands} == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert "EP2" in next(c.label for c in cands if c.disagg.decode.ep == 2)
