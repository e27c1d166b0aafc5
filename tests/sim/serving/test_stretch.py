"""Decode-only stretches (sim.serving.stretch): where each policy's stretch stops, and that it changes nothing.

Constant-cost runs (1 s an iteration, no host time), so every time is a whole number derived by hand; each run
is compared with the same run iteration by iteration (``Replica.decode_stretches = False``).
"""

from __future__ import annotations

import pytest

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.kv.prefix_cache import CachingBlockManager
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.serving import stretch
from sim.serving.async_loop import AsyncReplica
from sim.serving.cluster import Replica, run_cluster
from tests.helpers import make_requests

POLICIES = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
PAGED = ("vllm", "sarathi", "vllm_v1")  # grow blocks as they decode (and preempt when they run out)


def _run(monkeypatch, spec, policy, *, stretches=True, blocks=1000, block_size=16, caching=False, replicas=1,
         budget=None, max_batch=64, host=0.0, loop=None):
    """(token times by request, batches rows, micro-batch rows, preemptions, the stretches' (end, host done))."""
    seen: list = []
    real = stretch.run_stretch

    def spy(*a):
        done = real(*a)
        if done is not None:
            seen.append(done[:2])  # (its end, its last step's host-done time or device start)
        return done
    with monkeypatch.context() as m:
        m.setattr(Replica, "decode_stretches", stretches)
        m.setattr(stretch, "run_stretch", spy)
        reqs = make_requests(spec)
        manager = CachingBlockManager if caching else BlockManager
        scheds = [make_scheduler(policy, SchedulerConfig(max_batch, budget), manager(blocks, block_size, 0.0))
                  for _ in range(replicas)]
        rec = run_cluster(reqs, scheds, ConstantCostModel(1.0, host=host), 1, replica_cls=loop)
    times = {r.request_id: list(r.token_times) for r in reqs}
    return (times, rec.stage_frame().to_numpy().ravel().tolist(), rec.microbatch_frame().to_numpy().ravel().tolist(),
            sum(s.num_preemptions for s in scheds),
            seen)


def _same_as_reference(monkeypatch, spec, policy, **kw):
    fast = _run(monkeypatch, spec, policy, **kw)
    ref = _run(monkeypatch, spec, policy, stretches=False, **kw)
    assert fast[:4] == ref[:4]
    assert ref[4] == []
    return fast


@pytest.mark.parametrize("policy", POLICIES)
def test_a_stretch_runs_through_the_step_that_produces_a_last_token(monkeypatch, policy):
    # prefill [0,1] -> token at 1; a stretch [1,2] .. [4,5], the last one producing A's last token and finishing it
    times, rows, micro, _, seen = _same_as_reference(monkeypatch, [(0.0, 10, 5)], policy)
    assert times == {"A": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert seen == [(5.0, 4.0)]  # (the stretch's end, its last step's host-done time: no host time here)
    assert [rows[i + 2] for i in range(0, len(rows), 12)] == [0, 1, 2, 3, 4]  # one batches.csv row per iteration
    assert [micro[i + 2] for i in range(0, len(micro), 5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "faster_transformer"])  # FT: below
@pytest.mark.parametrize("arrival", [4.5, 5.0])
def test_a_stretch_runs_through_the_step_during_which_a_request_arrives(monkeypatch, policy, arrival):
    # A decodes from t=1; B arrives at 4.5 (or exactly as the step [4,5] ends). The step [4,5] was decided at 4,
    # before B arrived, so the stretch runs through it and ends at 5, where the next decision sees B
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 10), (arrival, 10, 3)], policy)
    assert seen[0] == (5.0, 4.0)
    assert times["A"][:5] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_router_that_reads_the_cache_on_arrival_stops_a_stretch_before_the_step_of_the_arrival(monkeypatch,
                                                                                                 policy):
    # cache_aware routing looks the arriving request up in the cache: the stretch must not have registered the
    # blocks of the step during which it arrives, so it ends at 4, before the step [4,5]
    def run(stretches: bool) -> tuple[list, list]:
        seen: list = []
        real = stretch.run_stretch
        with monkeypatch.context() as m:
            m.setattr(Replica, "decode_stretches", stretches)
            m.setattr(stretch, "run_stretch", lambda *a: seen.append(real(*a)) or seen[-1])
            reqs = make_requests([(0.0, 10, 10), (4.5, 10, 3)])
            scheds = [make_scheduler(policy, SchedulerConfig(64, None), CachingBlockManager(1000, 16, 0.0))]
            rec = run_cluster(reqs, scheds, ConstantCostModel(1.0), 1, router_policy="cache_aware")
        rows = rec.stage_frame().to_numpy().ravel().tolist()
        return [r.token_times for r in reqs] + [rows], [d[:2] for d in seen if d is not None]
    (fast, seen), (ref, none) = run(True), run(False)
    assert fast == ref and none == [] and seen[0] == (4.0, 3.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_stretch_starts_right_after_a_prefill_and_right_after_a_finish(monkeypatch, policy):
    # A and B prefill together [0,1]; the stretch [1,2], [2,3] ends with A's last token; B alone goes on at once
    # (no arrival before 3): [3,4] .. [7,8], B's last token; one call advances both
    times, _, _, _, seen = _same_as_reference(monkeypatch, [(0.0, 10, 3), (0.0, 10, 8)], policy)
    assert times == {"A": [1.0, 2.0, 3.0], "B": [float(t) for t in range(1, 9)]}
    assert seen == [(8.0, 7.0)]


@pytest.mark.parametrize("policy", PAGED)
def test_a_stretch_stops_where_the_decodes_need_more_blocks_than_are_free(monkeypatch, policy):
    # 4-token blocks, 7 of them: two 6-token prompts (2 blocks each) decode until the cache runs dry and one is
    # preempted; the stretch hands out the same blocks as the iterations would and stops before the preemption
    _, _, _, preemptions, seen = _same_as_reference(monkeypatch, [(0.0, 6, 14), (0.0, 6, 14)], policy,
                                                           blocks=7, block_size=4)
    assert preemptions >= 1 and seen


@pytest.mark.parametrize("policy", POLICIES)
def test_stretches_with_prefix_caching_share_the_same_blocks(monkeypatch, policy):
    spec = [(0.0, 40, 30), (0.5, 40, 20), (30.0, 40, 9)]
    _, _, _, _, seen = _same_as_reference(monkeypatch, spec, policy, caching=True, blocks=20, block_size=4)
    assert seen


@pytest.mark.parametrize("policy", POLICIES)
def test_a_stretch_goes_on_while_the_first_waiting_request_cannot_be_admitted(monkeypatch, policy):
    # one request at a time: B arrives at 0.5 and waits (the batch cap holds it) until A is done, so A's stretch
    # runs from 1 through A's last token at 12, past B's arrival
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 8, 12), (0.5, 8, 4)], policy, max_batch=1)
    assert seen[0] == (12.0, 11.0) and times["A"][-1] == 12.0


def test_chunks_and_decodes_that_fill_the_budget_stretch_past_a_waiting_request(monkeypatch):
    # Sarathi, budget 2: A's prompt in two chunks [0,1], [1,2]; then A's decode and B's first chunk of 1 [2,3]; B's
    # next chunks fill the budget beside A's decode, so C (arrived at 0.5) cannot be admitted: a stretch [3,4],
    # [4,5]; B's last chunk [5,6]. Then A and B's decodes fill the budget: a stretch [6,7] .. [10,11] through A's
    # last token. C then chunks beside B's decode: [11,12], a stretch [12,13], [13,14], its last chunk [14,15] with
    # B's last token; C alone: a stretch [15,16], [16,17] through its last token
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 4, 10), (0.0, 4, 10), (0.5, 4, 3)], "sarathi", budget=2)
    assert seen == [(5.0, 4.0), (11.0, 10.0), (14.0, 13.0), (17.0, 16.0)]
    assert times == {"A": [float(t) for t in range(2, 12)], "B": [float(t) for t in range(6, 16)],
                     "C": [15.0, 16.0, 17.0]}


def test_faster_transformer_stretches_past_arrivals_and_a_waiting_queue(monkeypatch):
    # FT admits only into an empty batch: A's decodes [1,2] .. [10,11] go on while B arrives (1.5) and waits; the
    # stretch after A's prefill runs through A's last token: it ends at 12
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 8, 12), (1.5, 8, 4), (6.0, 8, 4)],
                                         "faster_transformer")
    assert seen[0] == (12.0, 11.0)
    assert times["A"][-1] == 12.0 and times["B"][0] == 13.0  # B's prefill [12,13] after A's last step
    # with prefix caching too (only a cache-aware router, tested above, reads the cache as a request arrives)
    *_, seen = _same_as_reference(monkeypatch, [(0.0, 8, 12), (1.5, 8, 4)], "faster_transformer", caching=True)
    assert seen[0] == (12.0, 11.0)


def test_a_budget_the_decodes_fill_lets_a_stretch_go_on_while_a_request_waits(monkeypatch):
    # Sarathi with a budget of one token: A's prompt a token a step ([0,1] as usual, a chunk stretch [1,2], [2,3], its
    # last chunk [3,4], left to the loop: B waits for the budget it would leave); then A's decode fills the budget,
    # so B cannot be admitted: a stretch [4,5] .. [10,11] through A's last token; then B from 11: its chunk stretch
    # [12,13], [13,14] runs its last chunk [14,15] too (nothing waits) and goes on with its decodes to 22
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 4, 8), (0.0, 4, 8)], "sarathi", budget=1)
    assert seen == [(3.0, 2.0), (11.0, 10.0), (22.0, 21.0)]
    assert times == {"A": [float(t) for t in range(4, 12)], "B": [float(t) for t in range(15, 23)]}


def test_a_chunk_stretch_runs_the_prompts_last_chunk_and_goes_on_with_its_decodes(monkeypatch):
    # Sarathi, budget 4: A's 10-token prompt in chunks of 4, 4 and 2: [0,1] as usual, then one stretch runs [1,2],
    # the last chunk [2,3] (its first token at 3: nothing waits, nobody arrives) and A's decodes to its last token
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 6), (100.0, 4, 2)], "sarathi", budget=4)
    assert times["A"] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0]
    assert seen[0] == (8.0, 7.0)


def test_a_request_arriving_before_the_last_chunk_is_decided_stops_the_stretch_before_it(monkeypatch):
    # as above, B arriving at 1.5: the last chunk, decided at 2, would leave B 2 tokens of budget, so the stretch
    # stops after [1,2] and the loop runs [2,3] with B's first chunk beside A's last
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 6), (1.5, 4, 2)], "sarathi", budget=4)
    assert seen[0] == (2.0, 1.0)
    assert times["A"][0] == 3.0 and times["B"][0] == 4.0


def test_an_async_chunk_stretch_runs_the_last_chunk_as_its_host_work_overlaps(monkeypatch):
    # vLLM V1's async loop, budget 4, host 0.25 s under each 1 s step: [0.25,1.25] as usual; then one stretch runs
    # the middle chunk [1.25,2.25], the last [2.25,3.25] (A's first token) and A's decodes, each decided as the
    # one before it starts
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 6)], "vllm_v1", budget=4, host=0.25,
                                         loop=AsyncReplica)
    assert times["A"] == [3.25, 4.25, 5.25, 6.25, 7.25, 8.25]
    assert seen == [(8.25, 7.25)]


def test_vllm_v0_decodes_never_fill_a_budget_for_prompts(monkeypatch):
    # vLLM v0 schedules an admissible prompt first, alone: a waiting request it could admit stops its stretches
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 4, 8), (2.5, 4, 8)], "vllm", budget=4)
    assert seen[0] == (3.0, 2.0)  # [1,2], [2,3]: the step decided at 3 admits B's prompt
    assert times["B"][0] == 4.0


def test_several_replicas_run_iteration_by_iteration(monkeypatch):
    *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 8), (0.0, 10, 8)], "orca", replicas=2)
    assert seen == []


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "faster_transformer"])
def test_async_loop_stretches_overlap_host_time_and_stop_before_a_decision_that_sees_an_arrival(monkeypatch, policy):
    # host 0.25 s hidden under each 1 s step: prefill [0.25, 1.25] -> token at 1.25; then a step a second, each
    # decided as the previous one starts. B arrives at 3.5: the step decided at 4.25 (after 3.5) is the first
    # to see it, so the stretch ends with the step decided at 3.25, which runs [4.25, 5.25]
    times, _, _, _, seen = _same_as_reference(monkeypatch, [(0.0, 10, 12), (3.5, 10, 3)], policy,
                                                     host=0.25, loop=AsyncReplica)
    assert times["A"][:5] == [1.25, 2.25, 3.25, 4.25, 5.25]
    assert seen[0] == (5.25, 4.25)  # (the stretch's end, its last step's device start)


@pytest.mark.parametrize("policy", PAGED)
def test_async_loop_stretches_under_kv_pressure_and_caching(monkeypatch, policy):
    spec = [(0.0, 6, 14), (0.0, 6, 14), (9.5, 40, 6)]
    *_, seen = _same_as_reference(monkeypatch, spec, policy, blocks=9, block_size=4, host=0.4, loop=AsyncReplica,
                                  caching=True)
    assert seen


@pytest.mark.parametrize("model,gpu,kw", [
    ("llama-2-7b", "a100-80gb", {}), ("llama-2-7b", "a100-80gb", {"fitted": False, "pp": 2}),
    ("llama-3.1-70b", "h100-sxm", {"tp": 4, "weight_dtype": "fp8", "kv_cache_dtype": "fp8"}),
    ("mixtral-8x7b", "h100-sxm", {"tp": 2, "ep": 2, "router_skew": 0.5}), ("deepseek-v3", "h200", {"tp": 8}),
])
def test_the_roofline_prices_a_stretch_with_the_floats_of_a_batch_per_step(model, gpu, kw):
    """``RooflineCostModel.decode_run`` and ``chunk_run`` (a stretch priced in one call) are ``stage_cost`` of each
    step's batch, bit for bit: stretches would otherwise change batches.csv and every token time."""
    from sim.batch import Batch, BatchItem
    from sim.cost.roofline import RooflineCostModel

    cost = RooflineCostModel(model, gpu, **kw)
    for cached in ([7], [0, 15, 16, 4095], list(range(3, 300, 7)), [40000] * 5):
        n = len(cached)
        steps = [Batch([(None, 1, c + j) for c in cached], num_decodes=n) for j in range(40)]
        assert cost.decode_run(n, steps[0].decode_context, 40) == [tuple(cost.stage_cost(b, 0)) for b in steps]
    assert cost.decode_run(3, 30, 0) == []
    # a chunk stretch: the decodes beside the next chunk of a prompt, ``done`` tokens of it computed
    for cached, chunk, done in (([], 64, 0), ([7], 1, 5), ([0, 15, 16, 4095], 500, 0),
                                (list(range(3, 300, 7)), 37, 4096)):
        n = len(cached)
        steps = [Batch([*((None, 1, c + j) for c in cached), BatchItem(None, chunk, done + j * chunk)],
                       num_decodes=n) for j in range(30)]
        assert cost.chunk_run(n, steps[0].decode_context, chunk, done, 30) == [tuple(cost.stage_cost(b, 0))
                                                                                 for b in steps]


def test_the_clock_lands_exactly_on_a_stretch_end_that_one_sum_cannot_reach():
    # a run's stretch began at this now; when now's bits below an end's ulp sit exactly half-way, now + d rounds
    # to even and misses that end for every d. Here the last two step ends are such: the hops land on the first,
    # then add each later step's own delay (the loop's expression, exact by design)
    now = 0.08422108070870166
    delays = [0.2508767703708228, 0.30084246022314015, 0.20068349838548374]
    ends, t = [], now
    for d in delays:
        t += d
        ends.append(t)
    assert [now + stretch.exact_delay(now, e) == e for e in ends] == [True, False, False]
    out = stretch.hops(now, ends, delays)
    assert out == [stretch.exact_delay(now, ends[0]), *delays[1:]]
    t = now
    for d in out:
        t += d
    assert t == ends[-1]
    assert stretch.hops(0.5, [1.5, 2.5], [1.0, 1.0]) == [2.0]  # where one delay lands on the end, one timeout


@pytest.mark.parametrize("loop", [None, AsyncReplica])
@pytest.mark.parametrize("policy", ["sarathi", "vllm_v1"])
def test_a_long_prompt_chunks_in_a_stretch_beside_decodes_and_its_blocks_run_short(monkeypatch, policy, loop):
    # budget 8: B's 60-token prompt takes 7 tokens a step beside A's decode. With 4-token blocks and 24 of them,
    # vllm_v1 allocates per chunk and runs short mid-prompt (A then B preempted in turn); Sarathi allocated B's
    # prompt at admission. Each run equals its iteration-by-iteration reference, and chunk stretches happen
    spec = [(0.0, 6, 40), (1.5, 60, 6), (2.5, 9, 5)]
    chunked: list[bool] = []  # per stretch: whether a prompt was still under way after it
    real = stretch.run_stretch

    def spy(replica, *a):
        done = real(replica, *a)
        if done is not None:
            chunked.append(any(not r.is_decoding for r in replica.scheduler.running))
        return done
    for blocks, preempted in ((1000, 0), (24, 1)):
        chunked.clear()
        monkeypatch.setattr(stretch, "run_stretch", spy)
        *_, preemptions, seen = _same_as_reference(monkeypatch, spec, policy, budget=8, blocks=blocks, block_size=4,
                                                   host=0.25, loop=loop)
        assert preemptions == preempted and any(chunked) and seen


def test_a_chunk_stretch_prices_each_step_with_the_chunk_over_its_growing_context(monkeypatch):
    # one request alone, prompt 20 in chunks of 4 (budget 4): [0,1] as usual, then a stretch of 3 chunks over 4, 8,
    # 12 cached tokens, the last chunk [4,5] as usual (its token at 5); batches.csv has a row per chunk
    times, rows, *_ = _same_as_reference(monkeypatch, [(0.0, 20, 2)], "sarathi", budget=4)
    assert times == {"A": [5.0, 6.0]}
    prefill_tokens = [rows[i + 5] for i in range(0, len(rows), 12)]
    assert prefill_tokens == [4, 4, 4, 4, 4, 0]


@pytest.mark.parametrize("policy", POLICIES)
def test_requests_finished_by_a_stretch_reach_the_callback_in_the_same_order_and_state(monkeypatch, policy):
    # a stretch ends with the step that finishes requests: on_finish sees each with all its tokens, in the order
    # (and with the completion times) of the iteration-by-iteration run
    from sim.serving import SimConfig, simulate
    from sim.workload.generator import generate_trace

    trace = generate_trace(40, arrival="poisson", qps=8.0, seed=5, max_total_tokens=600)

    def finished(stretches: bool) -> list:
        seen: list = []
        with monkeypatch.context() as m:
            m.setattr(Replica, "decode_stretches", stretches)
            simulate(trace, SimConfig(scheduler=policy, kv_blocks=300),
                     on_finish=lambda r: seen.append((r.request_id, r.completion_time, list(r.token_times))))
        return seen
    fast = finished(True)
    assert fast == finished(False) and len(fast) == 40


@pytest.mark.parametrize("loop", [None, AsyncReplica])
@pytest.mark.parametrize("policy", POLICIES)
def test_a_stretch_goes_on_after_a_finish_only_where_nothing_arrived_before_the_next_decision(monkeypatch, policy,
                                                                                              loop):
    # A finishes at 3; C arrives at 2.5, during A's last step. Serial: the step decided at 3 must see C, so the
    # stretch stops at 3. Async: the step [3,4] was decided at 2, before C; the one decided at 3 sees it: the stretch
    # goes on through [3,4]. FasterTransformer admits no one while B runs: its stretch goes on through A's finish to
    # B's end at 8, in either loop
    *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 3), (0.0, 10, 8), (2.5, 4, 2)], policy, loop=loop)
    if policy == "faster_transformer":
        assert seen[0] == (8.0, 7.0)
    else:
        assert seen[0] == ((3.0, 2.0) if loop is None else (4.0, 3.0))


def test_a_waiting_request_blocks_a_stretch_queue_exactly_as_the_policy_would_admit_it():
    """vLLM V1 admits the first waiting request for the chunk the budget leaves after the decodes; Sarathi for its
    whole prompt. With prefix caching only a request declaring no reuse counts as blocked (another's hit could grow,
    and looking it up registers blocks)."""
    from sim.kv.prefix_keys import prefix_spec
    from sim.request import Request, Status

    # (decoding requests of 4 blocks each out of 20, prompt, blocked for V1, for Sarathi); a budget of 100 tokens
    cases = [(3, 1000, False, True),  # V1: 97 tokens, 7 blocks of 8 free; Sarathi: 63 blocks
             (3, 120, False, False),  # 8 blocks either way
             (4, 1000, True, True)]   # V1: 96 tokens, 6 blocks of 4 free
    for policy, caching in [("vllm_v1", False), ("vllm_v1", True), ("sarathi", False), ("sarathi", True)]:
        for decoding, prompt, v1_blocked, sarathi_blocked in cases:
            bm = (CachingBlockManager if caching else BlockManager)(20, 16, 0.0)
            sched = make_scheduler(policy, SchedulerConfig(64, 100), bm)
            for i in range(decoding):
                r = Request(f"r{i}", 0.0, 64, 50)
                bm.admit(r, 64)
                r.status, r.num_computed = Status.RUNNING, 64
                sched.running.append(r)
            head = Request("h", 0.0, prompt, 5)
            sched.add_request(head)
            expect = v1_blocked if policy == "vllm_v1" else sarathi_blocked
            assert sched.waiting_head_blocked() == expect, (policy, caching, decoding, prompt)
            if caching:
                head.prefix = prefix_spec({"prefix_group": "g", "prefix_len": 16})
                assert not sched.waiting_head_blocked()  # its hit could change


def test_a_run_whose_replicas_tie_after_stretches_is_run_again_without_them(monkeypatch):
    """Two round-robin replicas whose steps end together (dyadic costs and arrivals, exact in binary): the tables
    built after stretches leave those rows' order open, so ``simulate`` runs again iteration by iteration; the
    result is the reference's and the progress callback nets one count per request."""
    import json

    from sim.serving import SimConfig, simulate
    from sim.serving.recorder import Recorder
    from sim.workload.trace import TraceRequest

    trace = [TraceRequest("0", 0.0, 64, 12), TraceRequest("1", 5 / 256, 64, 12)]
    cfg = SimConfig(model="llama-2-7b", gpu="a100-80gb", scheduler="orca", replicas=2)
    cost = ConstantCostModel(1 / 64, host=1 / 256)  # 5/256 a step: replica 1 runs one step behind replica 0
    flags: list[bool] = []
    real = Recorder.take_tables

    def spy(self):
        frames = real(self)
        flags.append(self.ambiguous)
        return frames
    monkeypatch.setattr(Recorder, "take_tables", spy)
    counts: list[int] = []
    fast = simulate(trace, cfg, cost_model=cost, progress=counts.append)
    assert flags == [True, False] and sum(counts) == 2 and min(counts) < 0
    monkeypatch.setattr(Replica, "decode_stretches", False)
    ref = simulate(trace, cfg, cost_model=cost)
    assert fast.batches.equals(ref.batches) and fast.requests.equals(ref.requests)
    a, b = (json.dumps({k: v for k, v in r.summary.items() if k != "versions"}, sort_keys=True, default=str)
            for r in (fast, ref))
    assert a == b


@pytest.mark.parametrize("loop", [None, AsyncReplica])
def test_a_stretch_runs_while_a_preempted_request_that_shares_nothing_is_held_back(monkeypatch, loop):
    # vLLM V1 with prefix caching, 14 blocks of 4 tokens: C is preempted and waits with its own cached blocks; it
    # cannot be admitted next to A's and B's decodes (its hit counts against the free blocks), and stays so while
    # they decode (they take a free block each, evicting C's tail first), so a stretch runs while C waits
    held: list[bool] = []
    real = stretch.run_stretch

    def spy(replica, *a):
        waiting = replica.scheduler.waiting
        head_preempted = bool(waiting) and waiting[0].num_preemptions > 0
        done = real(replica, *a)
        if done is not None:
            held.append(head_preempted)
        return done
    spec = [(0.0, 8, 20), (0.0, 8, 12), (0.0, 8, 20)]
    ref = _run(monkeypatch, spec, "vllm_v1", stretches=False, blocks=14, block_size=4, caching=True, budget=64,
               loop=loop)
    monkeypatch.setattr(stretch, "run_stretch", spy)
    fast = _run(monkeypatch, spec, "vllm_v1", blocks=14, block_size=4, caching=True, budget=64, loop=loop)
    assert fast[:4] == ref[:4] and ref[3] == 1
    assert any(held)
