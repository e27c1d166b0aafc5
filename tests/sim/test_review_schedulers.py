"""Review of the baselines (issue 31) and speculative decoding (issue 35): invariants over random small workloads.

Every run checks, at each scheduled batch: KV never over capacity, every item's positions have KV slots, blocks
conserved (or, with prefix caching, reference counts equal to the running requests holding each block), waiting
requests hold nothing; at the end: no request lost, each got exactly its output tokens, every block back; and the
same inputs give the same token times (determinism). Plus a hand-derived regression for the lookahead slots of a
request that fills the cache (it used to preempt itself forever).
"""

from __future__ import annotations

from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.kv.prefix_cache import CachingBlockManager
from sim.kv.prefix_keys import prefix_spec
from sim.request import Request, Status
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.schedulers.virtual_engines import VirtualEngines
from sim.serving.async_loop import AsyncReplica
from sim.serving.cluster import run_cluster
from sim.spec import SpecDecoding, parse_speculative_config
from tests.helpers import make_requests

BS = 4  # 4-token blocks: a few requests fill the cache
#: batches a run may schedule: the workloads here need a few hundred at most
MAX_SCHEDULES = 5000
SETTINGS = dict(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def workloads(draw, max_tokens: int):
    """(arrival, prompt, output, prefix group or None) tuples, each at most ``max_tokens`` long."""
    n = draw(st.integers(1, 10))
    t, out = 0.0, []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.3, 1.0, 2.5]))
        p = draw(st.integers(1, max_tokens - 1))
        o = draw(st.integers(1, min(16, max_tokens - p)))
        out.append((t, p, o, draw(st.sampled_from([None, "a", "b"]))))
    return out


def _requests(spec) -> list[Request]:
    reqs = make_requests([(a, p, o) for a, p, o, _g in spec])
    for r, (_a, p, _o, g) in zip(reqs, spec):
        if g is not None:  # a shared system prompt of up to 8 tokens (two blocks)
            r.prefix = prefix_spec({"prefix_group": g, "prefix_len": min(p, 8)})
    return reqs


def _check_step(sched, batch, errors: list) -> None:
    """Per-batch invariants of one scheduler (a virtual engine's, or a replica's)."""
    bm = sched.bm
    if not 0 <= bm.num_used <= bm.num_blocks:
        errors.append(("capacity", bm.num_used, bm.num_blocks))
    for r, new, cached in batch.entries:
        if r.status is Status.RUNNING and r in sched.running and len(r.block_table) * bm.block_size < cached + new:
            errors.append(("slots", r.request_id, len(r.block_table), cached, new))
    if any(len(r.block_table) for r in sched.waiting):
        errors.append("a waiting request holds blocks")
    if len(sched.running) > sched.config.max_batch_size:
        errors.append(("max_num_seqs", len(sched.running)))
    held = Counter(int(b) for r in sched.running for b in r.block_table)
    if bm.caching:
        if len(held) != bm.num_used or any(bm.references(b) != n for b, n in held.items()):
            errors.append(("references", len(held), bm.num_used))
    elif max(held.values(), default=1) > 1 or sum(held.values()) != bm.num_used:
        errors.append(("blocks", sum(held.values()), bm.num_used))


def _run(spec, sched, pp: int = 1, replica_cls=None) -> tuple[list[Request], list]:
    """Run ``spec`` through ``sched`` (1 s iterations) checking every batch; (requests, errors)."""
    reqs = _requests(spec)
    errors: list = []
    engines = sched.engines if isinstance(sched, VirtualEngines) else [sched]
    orig = sched.schedule
    calls = [0]

    def checked(now=0.0):
        calls[0] += 1
        if calls[0] > MAX_SCHEDULES:  # a livelock (a request preempting itself forever) fails instead of hanging
            raise AssertionError(f"more than {MAX_SCHEDULES} batches for {len(spec)} small requests: livelock")
        b = orig(now)
        if b is not None:
            for e in engines:
                _check_step(e, b, errors)
        return b
    sched.schedule = checked
    run_cluster(reqs, [sched], ConstantCostModel(1.0, num_stages=pp), pp, replica_cls=replica_cls)
    for r in reqs:  # no request lost; exactly its output tokens; its blocks back
        if not (r.status is Status.FINISHED and r.num_generated == r.output_tokens == len(r.token_times)
                and len(r.block_table) == 0):
            errors.append(("request", r.request_id, r.status, r.num_generated, r.output_tokens))
    if sched.bm.num_used != 0 or sched.has_unfinished():
        errors.append(("end", sched.bm.num_used))
    return reqs, errors


@st.composite
def speculative_runs(draw):
    blocks = draw(st.integers(11, 30))
    method = draw(st.sampled_from(["mtp", "eagle3", "ngram", "draft_model"]))
    k = draw(st.integers(1, 5))
    acceptance = draw(st.sampled_from(["0", "1", "0.5", "0.8"]))
    return dict(spec=draw(workloads(blocks * BS)), blocks=blocks, method=method, k=k, acceptance=acceptance,
                budget=draw(st.sampled_from([None, 3, 8, 24])), max_batch=draw(st.integers(1, 6)),
                max_model_len=draw(st.sampled_from([None, 40, 200])), caching=draw(st.booleans()),
                async_loop=draw(st.booleans()), seed=draw(st.integers(0, 3)))


def _speculative(sc):
    manager = CachingBlockManager if sc["caching"] else BlockManager
    sched = make_scheduler("vllm_v1", SchedulerConfig(sc["max_batch"], sc["budget"]),
                           manager(sc["blocks"], BS, 0.0))
    model = ', "model": "llama-3.2-1b"' if sc["method"] == "draft_model" else ""
    cfg = parse_speculative_config(f'{{"method": "{sc["method"]}", "num_speculative_tokens": {sc["k"]}{model}}}',
                                   sc["acceptance"])
    sched.enable_speculation(SpecDecoding(cfg, sc["seed"], sc["max_model_len"]))
    spec = [s for s in sc["spec"] if sc["max_model_len"] is None or s[1] + s[2] <= sc["max_model_len"]]
    return _run(spec, sched, replica_cls=AsyncReplica if sc["async_loop"] else None) + (sched,)


@settings(**SETTINGS)
@given(speculative_runs())
def test_speculative_decoding_keeps_every_invariant_and_is_deterministic(sc):
    reqs, errors, sched = _speculative(sc)
    assert errors == []
    for r in reqs:  # a burst never passes max_tokens; the counters add up
        st_ = sched.spec.per_request.get(r.index, [0, 0, 0])
        assert st_[2] <= st_[1] and r.num_generated == r.output_tokens
    assert not sched.spec.proposed  # no proposal left unverified
    again, _, _ = _speculative(sc)
    assert [r.token_times for r in again] == [r.token_times for r in reqs]


def test_a_request_filling_the_cache_gets_its_drafts_lookahead_capped_to_the_cache():
    # 13 blocks of 4 = 52 tokens; prompt 36 + 15 outputs = 51 fit. MTP k=4 (4 lookahead slots), acceptance 1.
    # t=1 prefill (token 1); t=2 verify 1+4 over 36 (need 36+5+4 = 45): tokens 2-6; t=3 over 41 (need 50): 7-11;
    # t=4 k = min(4, 15-11-1) = 3 over 46: need 46+4+4 = 54 > 52, capped to the cache's 52 (vLLM caps at
    # max_model_len, which its cache always holds): tokens 12-15. It used to preempt itself and never return.
    reqs = make_requests([(0.0, 36, 15)])
    sched = make_scheduler("vllm_v1", SchedulerConfig(4, None), BlockManager(13, 4, 0.0))
    cfg = parse_speculative_config('{"method": "mtp", "num_speculative_tokens": 4}', "1")
    sched.enable_speculation(SpecDecoding(cfg, 0, None))
    run_cluster(reqs, [sched], ConstantCostModel(1.0), 1)
    (a,) = reqs
    assert a.token_times == [1.0] + [2.0] * 5 + [3.0] * 5 + [4.0] * 4
    assert sched.num_preemptions == 0 and sched.bm.num_used == 0


@st.composite
def reservation_runs(draw):
    max_model_len = draw(st.sampled_from([24, 40, 64]))
    per = max_model_len // BS  # blocks of one reservation
    return dict(policy=draw(st.sampled_from(["orca", "faster_transformer"])), max_model_len=max_model_len,
                blocks=draw(st.integers(per, 4 * per)), spec=draw(workloads(max_model_len)),
                max_batch=draw(st.integers(1, 6)), pp=draw(st.integers(1, 3)), caching=draw(st.booleans()))


@settings(**SETTINGS)
@given(reservation_runs())
def test_orca_and_ft_reserve_max_model_len_and_never_preempt(sc):
    manager = CachingBlockManager if sc["caching"] else BlockManager
    sched = make_scheduler(sc["policy"], SchedulerConfig(sc["max_batch"], None, 0, sc["max_model_len"]),
                           manager(sc["blocks"], BS, 0.0))
    limit = sc["blocks"] // (sc["max_model_len"] // BS)  # reservations that fit at once
    most = []
    orig = sched.schedule

    def counted(now=0.0):
        b = orig(now)
        most.append(len(sched.running))
        assert all(len(r.block_table) >= sc["max_model_len"] // BS for r in sched.running)
        if b is not None and b.prefill_items and sc["policy"] == "faster_transformer":
            # FT admits only into an idle pipeline slot: no decode joins, every other running request is in flight
            busy = {r for x in sched._in_flight.values() for r, _n, _c in x.entries}
            assert b.num_decode_tokens == 0 and all(r in busy for r in sched.running)
        return b
    sched.schedule = counted
    _reqs, errors = _run(sc["spec"], sched, pp=sc["pp"])
    assert errors == []
    assert sched.num_preemptions == 0
    # without prefix caching at most floor(blocks / reservation) run; with it, hit blocks are shared (one copy)
    assert max(most) <= (sc["max_batch"] if sc["caching"] else min(limit, sc["max_batch"]))


@st.composite
def virtual_engine_runs(draw):
    pp = draw(st.integers(2, 3))
    share = draw(st.integers(8, 20))  # blocks of one virtual engine
    return dict(pp=pp, share=share, spec=draw(workloads(share * BS)), caching=draw(st.booleans()),
                max_batch=draw(st.integers(1, 6)))


@settings(**SETTINGS)
@given(virtual_engine_runs())
def test_vllm_virtual_engines_pin_requests_and_keep_each_share(sc):
    manager = CachingBlockManager if sc["caching"] else BlockManager
    engines = [make_scheduler("vllm", SchedulerConfig(sc["max_batch"]), manager(sc["share"], BS, 0.0))
               for _ in range(sc["pp"])]
    ve = VirtualEngines(engines)
    home: dict[str, int] = {}
    moved = []
    orig = ve.schedule

    def pinned(now=0.0):
        b = orig(now)
        for i, e in enumerate(engines):
            for r in list(e.waiting) + e.running:
                moved.append(home.setdefault(r.request_id, i) != i)
        return b
    ve.schedule = pinned
    _reqs, errors = _run(sc["spec"], ve, pp=sc["pp"])
    assert errors == []
    assert not any(moved)


def test_orca_skips_a_request_longer_than_max_model_len_and_reserves_it_for_the_rest():
    # max_model_len 64 = 4 blocks of 16 per request, 8 blocks: A and C are admitted at 0 (the cache is full), B
    # (60 + 10 > 64) can never be served and is skipped, D waits for C's reservation: C ends at 5 (prefill at 1,
    # then 4 decodes), D prefills 5-6 and ends at 8. With each request's own length reserved D would have fit at 0.
    from sim.request import TraceRequest
    from sim.serving.simulator import SimConfig, simulate
    trace = [TraceRequest("A", 0.0, 40, 10), TraceRequest("B", 0.0, 60, 10), TraceRequest("C", 0.0, 20, 5),
             TraceRequest("D", 0.0, 8, 3)]
    cfg = SimConfig(model="llama-2-7b", scheduler="orca", max_model_len=64, kv_blocks=8, block_size=16,
                    watermark=0.0)
    result = simulate(trace, cfg, cost_model=ConstantCostModel(1.0))
    assert [(s.request_id, s.code) for s in result.skipped] == [("B", "total_exceeds_context")]
    rows = result.requests.set_index("request_id")
    assert rows.loc["D", "first_scheduled_time"] == 5.0 and rows.loc["D", "completion_time"] == 8.0
    assert list(rows["generated_tokens"]) == [10, 5, 3] and list(rows["completion_time"]) == [10.0, 5.0, 8.0]
    oracle = simulate(trace, cfg, cost_model=ConstantCostModel(1.0), kv_reservation="oracle")
    assert oracle.requests.set_index("request_id").loc["D", "first_scheduled_time"] == 0.0
