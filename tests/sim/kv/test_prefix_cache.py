"""Prefix caching in the shared block manager: hand-derived cases, invariants over random traces with reuse."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.kv.prefix_cache import CachingBlockManager
from sim.kv.prefix_keys import block_hashes, prefix_spec, shared_blocks
from sim.request import Request, Status
from sim.schedulers import SchedulerConfig, make_scheduler
from tests.helpers import run_constant

BS = 16


def _req(i: int, prompt: int, output: int = 4, arrival: float = 0.0, **prefix) -> Request:
    return Request(chr(ord("A") + i), arrival, prompt, output, index=i, prefix=prefix_spec(prefix) if prefix else None)


def _group(i, prompt, shared, arrival=0.0, output=4):
    return _req(i, prompt, output, arrival, prefix_group="sys", prefix_len=shared)


def test_two_requests_sharing_three_full_blocks_the_second_prefills_only_the_rest():
    """A: 60 tokens, its first 48 (three blocks) shared with B. After A's prefill B prefills 60 - 48 = 12."""
    a, b = _group(0, 60, 48), _group(1, 60, 48, arrival=5.0)
    reqs, comps, _, scheds = run_constant([a, b], "sarathi", budget=512, caching=True, block_size=BS)
    b_first = next(c for t, c in comps if t >= 5.0)
    assert b_first == (("B", 12, 48),)
    assert b.cached_tokens == 48 and a.cached_tokens == 0
    st = scheds[0].bm.stats
    assert (st.queried_tokens, st.hit_tokens, st.hit_blocks, st.queried_blocks) == (120, 48, 3, 6)
    assert st.as_dict()["hit_rate_tokens"] == 48 / 120
    assert [len(r.token_times) for r in reqs] == [4, 4]


def test_a_whole_prompt_hit_still_computes_its_last_token():
    """Identical 48-token prompts: the hit stops at 47 tokens, i.e. two blocks; B computes 16 (vLLM's rule)."""
    a, b = _group(0, 48, 48), _group(1, 48, 48, arrival=5.0)
    _, comps, _, _ = run_constant([a, b], "vllm_v1", caching=True, block_size=BS)
    assert next(c for t, c in comps if t >= 5.0) == (("B", 16, 32),)


def test_a_later_request_hits_the_blocks_of_a_prefill_still_under_way():
    """Chunked at 32 tokens: A's first two blocks are registered after its first chunk; B, arriving then, hits them."""
    a, b = _group(0, 96, 96, output=2), _group(1, 96, 96, arrival=1.0, output=2)
    _, comps, _, _ = run_constant([a, b], "sarathi", budget=32, caching=True, block_size=BS)
    at_1 = next(c for t, c in comps if t == 1.0)
    assert at_1 == (("A", 32, 32),)  # A's second chunk fills the budget
    b_items = [it for _, c in comps for it in c if it[0] == "B"]
    assert b_items[0][2] >= 32  # B started on top of A's computed blocks


def test_a_lookup_reaches_unregistered_blocks_past_cached_ones_and_admission_agrees():
    """B's block (hash 1) is cached; A, still running, has computed (not yet registered) a block with hash 2 at
    position 1. C = [1, 2] finds both, in the lookup the scheduler sizes its prefill by and in admission alike
    (hash ids here are not prefix hashes: each block is matched by its id and position)."""
    bm = CachingBlockManager(64, 4, 0.0)
    a, b, c = (_req(i, 12, 2, hash_ids=ids, hash_block_size=4) for i, ids in enumerate(([0, 2], [1], [1, 2])))
    bm.admit(b, 12)
    b.num_computed, b.status = 12, Status.FINISHED
    bm.on_computed(b)
    bm.free(b)
    bm.admit(a, 12)
    a.num_computed = 8
    bm.on_computed(a)
    assert bm.prefix_hit(c) == 8 and bm.can_admit(12, request=c)
    bm.admit(c, 12)
    assert c.num_computed == 8 and list(c.block_table[:2]) == [0, a.block_table[1]]  # B's first block (it had 0-2)


def test_eviction_is_lru_among_unreferenced_blocks_tail_first():
    bm = CachingBlockManager(8, BS, 0.0)
    a, b = (_req(i, 64, prefix_group=g, prefix_len=64) for i, g in enumerate("ab"))  # 4 shareable blocks each
    for r in (a, b):
        bm.admit(r, 64)
        r.num_computed = 64
        bm.on_computed(r)
    blocks_a, blocks_b = list(a.block_table), list(b.block_table)
    assert bm.num_free == 0
    for r in (a, b):
        r.status = Status.FINISHED
        bm.free(r)
    assert bm.num_free == 8 and bm.num_cached_free == 8
    c = _req(2, 48)  # needs 3 fresh blocks: A's last three, last block first (A was freed first, tail first)
    bm.admit(c, 48)
    assert list(c.block_table) == blocks_a[::-1][:3]
    assert bm.stats.evictions == 3
    d = _req(3, 64, prefix_group="a", prefix_len=64)  # A's prompt again: only its first block is still cached
    bm.admit(d, 64)
    assert d.num_computed == 16 and d.block_table[0] == blocks_a[0]
    assert list(d.block_table[1:]) == blocks_b[::-1][:3]  # then B's tail, the least recently freed after A's
    assert bm.stats.evictions == 6 and bm.is_cached(blocks_b[0]) and not bm.is_cached(blocks_b[1])


def test_no_block_is_freed_while_referenced():
    bm = CachingBlockManager(16, BS, 0.0)
    a, b = _group(0, 64, 64), _group(1, 64, 64)
    bm.admit(a, 64)
    a.num_computed = 64
    bm.on_computed(a)
    bm.admit(b, 64)
    shared = list(b.block_table[:3])  # (64 - 1) // 16 = 3 blocks hit
    assert shared == list(a.block_table[:3]) and all(bm.references(x) == 2 for x in shared)
    a.status = Status.FINISHED
    bm.free(a)
    assert all(bm.references(x) == 1 for x in shared)
    assert bm.num_cached_free == 1  # A's fourth block only: the shared three are still held by B
    assert bm.num_used == len(b.block_table)


def test_a_preempted_request_is_released_and_hits_its_own_blocks_again():
    sched = make_scheduler("sarathi", SchedulerConfig(8, 512), CachingBlockManager(64, BS, 0.0))
    r = _req(0, 80, output=8)
    sched.add_request(r)
    batch = sched.schedule(0.0)
    sched.on_batch_done(batch, 1.0)
    assert r.num_generated == 1 and sched.bm.num_cached_free == 0
    sched._preempt(r)
    assert r.block_table == [] and sched.bm.num_cached_free == 5  # its 5 full prompt blocks stay cached
    batch = sched.schedule(2.0)
    item = batch.entries[0]
    assert item[0] is r and item[2] == 80 and item[1] == 1  # recompute: 80 cached, only the generated token
    assert r.cached_tokens == 0  # the metric counts the first admission's hit


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["hash", "group", "none"]), st.lists(st.integers(0, 40), max_size=8), st.integers(0, 3000),
       st.sampled_from([1, 3, 8, 16, 100]), st.sampled_from([8, 64, 100, 512]))
def test_shared_keys_lead_and_shared_blocks_counts_them(kind, ids, tokens, block_size, hash_block):
    """Keys other requests may share (tags 1, 2) come first, the request's own (tag 3) after; shared_blocks says
    where the first own key is without looking at the keys."""
    groups = {"prefix_group": list(range(len(ids))), "prefix_len": sorted(i * 40 for i in ids)}
    extra = ({"hash_ids": ids, "hash_block_size": hash_block} if kind == "hash" else
             groups if kind == "group" and ids else {})
    spec = prefix_spec(extra)
    keys = block_hashes(spec, 7, tokens, block_size)
    n = shared_blocks(spec, tokens, block_size)
    assert len(keys) == tokens // block_size and (keys[:n] & 3 != 3).all() and (keys[n:] & 3 == 3).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["hash", "group"]), st.lists(st.integers(0, 5), min_size=1, max_size=6),
                          st.integers(0, 800)), min_size=2, max_size=5), st.sampled_from([4, 16, 100]),
       st.sampled_from([16, 64, 100]))
def test_equal_keys_sit_at_equal_positions(reqs, block_size, hash_block):
    """A key names its block's position: what lets a lookup that misses block i skip registering others' blocks."""
    seen: dict[int, int] = {}
    for index, (kind, ids, tokens) in enumerate(reqs):
        extra = ({"hash_ids": ids, "hash_block_size": hash_block} if kind == "hash" else
                 {"prefix_group": ids[0], "prefix_len": min(tokens, 40 * ids[-1])})
        for pos, k in enumerate(block_hashes(prefix_spec(extra), index, tokens, block_size).tolist()):
            assert seen.setdefault(k, pos) == pos


@st.composite
def reuse_scenarios(draw):
    n = draw(st.integers(1, 14))
    t, spec = 0.0, []
    for i in range(n):
        t += draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]))
        prompt = draw(st.integers(1, 48))
        kind = draw(st.sampled_from(["none", "group", "hash"]))
        extra = ({} if kind == "none" else
                 {"prefix_group": draw(st.integers(0, 2)), "prefix_len": draw(st.integers(0, prompt))}
                 if kind == "group" else
                 {"hash_ids": draw(st.lists(st.integers(0, 3), min_size=1, max_size=6)), "hash_block_size": 8})
        spec.append(_req(i, prompt, draw(st.integers(1, 12)), t, **extra))
        spec[-1].request_id = str(i)
    policy = draw(st.sampled_from(["orca", "vllm", "sarathi", "vllm_v1"]))
    return {"reqs": spec, "scheduler": policy, "blocks": draw(st.integers(16, 40)),
            "replicas": draw(st.sampled_from([1, 2])),
            "budget": draw(st.integers(4, 40)) if policy in ("sarathi", "vllm_v1") else None,
            "router": draw(st.sampled_from(["round_robin", "least_outstanding", "cache_aware"]))}


def _check_manager(bm: CachingBlockManager, running: list[Request]) -> bool:
    """No block both free and referenced; references = holders; free count = unreferenced blocks; every
    unreferenced block ever used is either recycled (no key) or cached (on the LRU list, as many as counted: with a
    key, or without one when a finished request that shared nothing left it, ``CachingBlockManager._anonymous``).
    ``_refs`` counts the holders whose tables are arrays (a list's blocks are its own, uncounted)."""
    refs = np.zeros(bm.num_blocks, dtype=np.int64)
    counted = np.zeros(bm.num_blocks, dtype=np.int64)
    for r in running:
        np.add.at(refs, r.block_table, 1)
        if type(r.block_table) is not list:
            np.add.at(counted, r.block_table, 1)
        elif len(r.block_table) and refs[r.block_table].max() > 1:  # a list's blocks are held by it alone
            return False
    free = set(bm._recycled) | set(range(bm._next, bm.num_blocks))
    cached = [b for b in range(bm._next) if refs[b] == 0 and b not in free]
    held = np.flatnonzero(refs)
    return (np.array_equal(counted, bm._refs) and all(bm.references(int(b)) == refs[b] for b in held)
            and all(refs[b] == 0 and not bm.is_cached(b) for b in bm._recycled)
            and bm.num_free == int((refs == 0).sum()) and len(free) == len(bm._recycled) + bm.num_blocks - bm._next
            and sorted(cached) == sorted(bm._lru.listed().tolist()) and len(cached) == bm.num_cached_free)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reuse_scenarios())
def test_invariants_with_reuse(sc):
    checks = []
    hook = lambda s, b: checks.append(_check_manager(s.bm, s.running))
    reqs, _, rec, scheds = run_constant(sc["reqs"], sc["scheduler"], budget=sc["budget"], blocks=sc["blocks"],
                                        block_size=4, watermark=0.0, caching=True, hook=hook,
                                        replicas=sc["replicas"], router=sc["router"])
    assert checks and all(checks)
    for r in reqs:  # no request lost; each gets exactly its output tokens
        assert len(r.token_times) == r.output_tokens and r.block_table == []
        assert 0 <= r.cached_tokens <= max(0, r.prompt_tokens - 1)  # a first hit never covers the whole prompt
    for s in scheds:
        assert s.bm.num_free == s.bm.num_blocks and not s.bm._refs.any()
        st_ = s.bm.stats
        assert st_.hit_tokens <= st_.queried_tokens and st_.hit_blocks <= st_.queried_blocks
    assert all(row[9] <= sc["blocks"] for row in rec.stage_frame().to_numpy().tolist())


def test_malformed_reuse_fields_name_the_line_and_field(tmp_path):
    import pytest

    from sim.workload.trace import TraceError, read_trace
    p = tmp_path / "t.jsonl"
    p.write_text('{"arrival_time": 0, "prompt_tokens": 10, "output_tokens": 2, "prefix_group": "a", "prefix_len": 4}\n'
                 '{"arrival_time": 1, "prompt_tokens": 10, "output_tokens": 2, "prefix_group": "a", "prefix_len": -1}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:2: field 'prefix_len'"):
        read_trace(p)
    p.write_text('{"arrival_time": 0, "prompt_tokens": 10, "output_tokens": 2, "hash_ids": [1, "x"]}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:1: field 'hash_ids'"):
        read_trace(p)


def test_generated_conversations_resend_their_earlier_turns():
    from sim.workload.generator import generate_trace
    plain = generate_trace(6, qps=1.0, prompt_len="fixed:100", output_len="fixed:20", seed=3)
    conv = sorted(generate_trace(6, qps=1.0, prompt_len="fixed:100", output_len="fixed:20", seed=3, turns=3,
                                 think_time_s=0.0, system_prompt=(50, 1.0)), key=lambda r: int(r.request_id))
    assert [r.arrival_time for r in plain][::3] == [r.arrival_time for r in conv][::3]  # first turns keep theirs
    # turn j: system prompt + j earlier turns of 120 tokens + its own 100-token message
    assert [r.prompt_tokens for r in conv] == [150, 270, 390] * 2
    assert conv[1].extra["prefix_group"] == ["system", "session-0"]
    assert conv[1].extra["prefix_len"] == [50, 50 + 120 + 120]  # the group reaches the end of its own answer
    from sim.workload.stats import ideal_reuse
    # by hand, 16-token blocks: a turn hits the blocks its predecessor filled (prompt and answer, 169 and 289
    # tokens: 10 and 18 blocks); the second session's first turn hits the system prompt's 3 full blocks
    hits = (0 + 160 + 288) + (48 + 160 + 288)
    assert ideal_reuse(conv)["ideal_hit_rate_tokens"] == hits / (2 * (150 + 270 + 390))


def test_hash_ids_past_their_packing_are_refused_and_nan_skew_too(tmp_path, capsys):
    import pytest

    from sim.cli.main import main
    from sim.workload.trace import TraceError, read_trace
    p = tmp_path / "t.jsonl"
    p.write_text('{"arrival_time": 0, "prompt_tokens": 10, "output_tokens": 2, "hash_ids": [1, 36893488147419103232]}\n')
    with pytest.raises(TraceError, match=r"t.jsonl:1: field 'hash_ids': expected ids in \[0, 2\^40\)"):
        read_trace(p)
    with pytest.raises(SystemExit):
        main(["simulate", "--model", "mixtral-8x7b", "--router-skew", "nan", "-n", "5"])
    assert "--router-skew" in capsys.readouterr().err


def test_reuse_flags_parse_and_refuse_by_form():
    import argparse
    import re

    import pytest

    from sim.cli.workload_args import sessions_arg, system_prompt_arg
    assert sessions_arg("4:30") == (4, 30.0) and sessions_arg("3") == (3, 0.0)
    assert system_prompt_arg("512") == (512, 1.0) and system_prompt_arg("512:0.8") == (512, 0.8)
    for parse, bad, says in ((sessions_arg, "4:y", "TURNS[:THINK_S]"), (sessions_arg, "0:1", "TURNS >= 1"),
                             (system_prompt_arg, "x", "TOKENS[:FRACTION]"), (system_prompt_arg, "5:2", "(0, 1]")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(says)):
            parse(bad)


def test_take_blocks_hands_out_what_one_block_grows_would():
    """A stretch takes a run of decode steps' blocks at once (``take_blocks``) for requests that share nothing: the
    same ids in the same order as one block at a time each (never-cached ones, then cached ones evicted least
    recently freed first, keyed or not), the same counts, the same keys forgotten."""
    import random

    rng = random.Random(3)
    for trial in range(60):
        # a history: requests with and without a shared prefix admitted, computed and finished
        history = [(rng.randint(1, 60), rng.random() < 0.4, rng.random() < 0.7) for _ in range(rng.randint(0, 10))]
        pair = [CachingBlockManager(40, 4, 0.0) for _ in range(2)]
        running = []
        for bm in pair:
            mine = []
            for j, (prompt, shared, done) in enumerate(history):
                r = _group(j, prompt, prompt) if shared else _req(j, prompt)
                if not bm.can_admit(prompt, use_watermark=False, request=r):
                    continue
                bm.admit(r, prompt)
                r.num_computed = prompt
                bm.on_computed(r)
                if done:
                    r.status = Status.FINISHED
                    bm.free(r)
                elif not shared:
                    mine.append(r)
            running.append(mine)
        one, bulk = pair
        if not running[0] or not one.num_free:
            continue
        n = min(one.num_free, rng.randint(1, 14))
        order = [rng.randrange(len(running[0])) for _ in range(n)]
        assert bulk.appends_blocks(running[1])
        cached_before = bulk.num_cached_free
        for i in order:
            one.add_block_each([running[0][i]])
        taken, fresh = bulk.take_blocks(n)
        for i, b in zip(order, taken):
            running[1][i].block_table.append(b)
        assert [list(r.block_table) for r in running[0]] == [list(r.block_table) for r in running[1]], trial
        assert bulk.num_cached_free == cached_before - max(0, n - fresh)
        assert (one.num_free, one.num_cached_free, one.stats.evictions) == \
            (bulk.num_free, bulk.num_cached_free, bulk.stats.evictions)
        assert all(one.is_cached(b) == bulk.is_cached(b) for b in range(40))
