"""Requests that share nothing skip key work (``CachingBlockManager.skip_no_reuse``): their finished blocks stay
cached without keys. The shortcut must change nothing: the same hits, evictions, cached-free counts and batches as
the keyed path, on traces without reuse, with reuse, and mixed, with preemptions."""

from __future__ import annotations

from contextlib import contextmanager

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sim.kv.prefix_cache import CachingBlockManager
from sim.kv.prefix_keys import prefix_spec
from sim.request import Request, Status
from tests.helpers import run_constant

BS = 16


def _req(i: int, prompt: int, output: int = 4, arrival: float = 0.0, **prefix) -> Request:
    return Request(str(i), arrival, prompt, output, index=i, prefix=prefix_spec(prefix) if prefix else None)


@contextmanager
def _keyed(keyed: bool):
    """``keyed``: every block gets its key, as before the shortcut (the reference path)."""
    saved = CachingBlockManager.skip_no_reuse
    CachingBlockManager.skip_no_reuse = not keyed
    try:
        yield
    finally:
        CachingBlockManager.skip_no_reuse = saved


def _finish(bm: CachingBlockManager, r: Request, tokens: int) -> None:
    bm.admit(r, tokens)
    r.num_computed, r.status = tokens, Status.FINISHED
    bm.on_computed(r)
    bm.free(r)


def _by_hand(keyed: bool) -> tuple:
    """8 blocks of 16 tokens. A (no reuse, 48 computed tokens: blocks 0-2) finishes, then B (a 32-token group
    prefix: blocks 3-4); the LRU list is A's 2, 1, 0, then B's 4, 3. C (no reuse) needs 5 blocks: the 3 never used
    (5-7), then evicts the 2 least recent, A's 2 and 1. D, B's prefix again, still hits B's first block (the hit
    stops a token short of its 32-token prompt: one block) and evicts A's 0 for its second: B's 4 stays cached."""
    with _keyed(keyed):
        bm = CachingBlockManager(8, BS, 0.0)
        a, b = _req(0, 48), _req(1, 32, prefix_group="b", prefix_len=32)
        _finish(bm, a, 48)
        _finish(bm, b, 32)
        cached_after_ab, keyed_0 = bm.num_cached_free, bm.is_cached(0)
        c, d = _req(2, 80), _req(3, 32, prefix_group="b", prefix_len=32)
        bm.admit(c, 80)
        bm.admit(d, 32)
        return (cached_after_ab, list(c.block_table), d.num_computed, list(d.block_table), bm.stats.evictions,
                bm.num_cached_free, keyed_0)


def test_a_finished_request_that_shares_nothing_leaves_its_blocks_cached_in_lru_order_without_keys():
    fast, keyed = _by_hand(False), _by_hand(True)
    assert fast[:-1] == keyed[:-1] == (5, [5, 6, 7, 2, 1], 16, [3, 0], 3, 1)
    assert keyed[-1] and not fast[-1]  # A's block 0, cached: with its own key (reference) or none (shortcut)


@st.composite
def scenarios(draw):
    """Small traces, each request without reuse, with a group prefix or with hash ids (all of one kind or mixed),
    on a cache small enough to evict and preempt."""
    kinds = draw(st.sampled_from([["none"], ["group", "hash"], ["none", "group", "hash"]]))
    t, reqs = 0.0, []
    for i in range(draw(st.integers(1, 14))):
        t += draw(st.sampled_from([0.0, 0.0, 0.5, 1.0, 3.0]))
        prompt, kind = draw(st.integers(1, 48)), draw(st.sampled_from(kinds))
        extra = ({} if kind == "none" else
                 {"prefix_group": draw(st.integers(0, 2)), "prefix_len": draw(st.integers(0, prompt))}
                 if kind == "group" else
                 {"hash_ids": draw(st.lists(st.integers(0, 3), min_size=1, max_size=6)), "hash_block_size": 8})
        reqs.append((i, prompt, draw(st.integers(1, 12)), t, extra))
    policy = draw(st.sampled_from(["orca", "vllm", "sarathi", "vllm_v1"]))
    return {"reqs": reqs, "scheduler": policy, "blocks": draw(st.integers(12, 40)),
            "replicas": draw(st.sampled_from([1, 2])),
            "budget": draw(st.integers(4, 40)) if policy in ("sarathi", "vllm_v1") else None,
            "router": draw(st.sampled_from(["round_robin", "cache_aware"]))}


def _outcome(sc: dict, keyed: bool) -> tuple:
    """Everything a run reports: batches, each request's tokens, hits and preemptions, cache counters over time."""
    with _keyed(keyed):
        reqs = [_req(i, p, o, t, **extra) for i, p, o, t, extra in sc["reqs"]]
        reqs, comps, rec, scheds = run_constant(reqs, sc["scheduler"], budget=sc["budget"], blocks=sc["blocks"],
                                                block_size=4, watermark=0.0, caching=True, replicas=sc["replicas"],
                                                router=sc["router"])
    return (comps, [(r.token_times, r.cached_tokens, r.num_preemptions, r.replica) for r in reqs],
            rec.stage_frame().to_numpy().tolist(), [(s.bm.stats, list(s.cached_free_log)) for s in scheds])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_the_shortcut_changes_no_output(sc):
    fast, keyed = _outcome(sc, False), _outcome(sc, True)
    assert fast == keyed
