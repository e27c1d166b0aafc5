"""Property tests over random traces and configurations: invariants every policy must keep."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import run_constant

POLICIES = ["faster_transformer", "orca", "vllm", "sarathi", "vllm_v1"]


@st.composite
def scenarios(draw):
    n = draw(st.integers(1, 12))
    t = 0.0
    spec = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5]))
        spec.append((t, draw(st.integers(1, 48)), draw(st.integers(1, 16))))
    policy = draw(st.sampled_from(POLICIES))
    chunked = policy in ("sarathi", "vllm_v1")
    return dict(spec=spec, scheduler=policy,
                budget=draw(st.integers(1, 40)) if chunked else None,
                max_batch=draw(st.integers(1, 6)),
                blocks=draw(st.integers(17, 40)),  # 4-token blocks: the longest request (64 tokens) needs 16
                pp=draw(st.integers(1, 3)),
                replicas=draw(st.sampled_from([1, 1, 2])),
                host=draw(st.sampled_from([0.0, 0.1])),
                chunk_align=draw(st.sampled_from([0, 0, 4])) if policy == "sarathi" else 0)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_invariants(sc):
    capacity = sc["blocks"]
    checks = []

    def check_blocks(sched, batch):
        held = [b for r in sched.running for b in r.block_table]
        waiting_hold = [b for r in sched.waiting for b in r.block_table]
        checks.append(len(held) + sched.bm.num_free == capacity and len(held) == len(set(held))
                      and not waiting_hold)

    reqs, comps, rec, scheds = run_constant(sc["spec"], sc["scheduler"], budget=sc["budget"],
                                            max_batch=sc["max_batch"], blocks=capacity, block_size=4,
                                            pp=sc["pp"], host=sc["host"], chunk_align=sc["chunk_align"],
                                            watermark=0.0, hook=check_blocks, replicas=sc["replicas"])
    # no request lost, each gets exactly its output tokens, and finishes
    for r in reqs:
        assert len(r.token_times) == r.output_tokens
        assert r.completion_time == r.token_times[-1]
        assert r.first_scheduled_time is not None and r.first_scheduled_time >= r.arrival_time
        assert all(a <= b for a, b in zip(r.token_times, r.token_times[1:]))  # time never goes backwards
        assert r.token_times[0] > r.arrival_time
        assert r.block_table == []
    assert all(s.bm.num_free == capacity and not s.has_unfinished() for s in scheds)
    # blocks are conserved and never shared between requests; waiting requests hold none
    assert checks and all(checks)
    # KV blocks never exceed capacity (kv_blocks_used is sampled at every schedule)
    rows = rec.stage_frame().to_numpy().tolist()
    assert all(row[9] <= capacity for row in rows)
    # each stage runs one micro-batch at a time, and never ends before it starts
    by_stage = {}
    for row in rows:
        by_stage.setdefault((row[0], row[1]), []).append((row[3], row[4]))
    for runs in by_stage.values():
        assert all(s <= e for s, e in runs)
        runs.sort()
        assert all(e1 <= s2 + 1e-12 for (_, e1), (s2, _) in zip(runs, runs[1:]))
    # token budget respected by the chunking policies; batch-size cap by all
    for _, comp in comps:
        if sc["budget"] is not None:
            assert sum(n for _, n, _ in comp) <= sc["budget"]
        assert len(comp) <= sc["max_batch"]
        ids = [c[0] for c in comp]
        assert len(ids) == len(set(ids))  # a request appears once per batch
    # every processed token is accounted for: prompt + generated tokens (re-prefills included)
    processed = {}
    for _, comp in comps:
        for rid, new, _ in comp:
            processed[rid] = processed.get(rid, 0) + new
    for r in reqs:
        assert processed[r.request_id] >= r.prompt_tokens + r.output_tokens - 1
        if r.num_preemptions == 0:
            assert processed[r.request_id] == r.prompt_tokens + r.output_tokens - 1
