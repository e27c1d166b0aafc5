"""The block manager: ids unique and within capacity, lowest first, and memory that grows with blocks in use."""

from __future__ import annotations

import random
import sys

import pytest

from sim.kv.block_manager import BlockManager, KVCacheError
from sim.request import Request


def test_ids_lowest_first_reused_in_table_order_and_never_shared():
    bm = BlockManager(10, block_size=4, watermark=0.0)
    a, b = Request("a", 0.0, 8, 1), Request("b", 0.0, 12, 1)
    bm.grow(a, 8)
    bm.grow(b, 12)
    assert a.block_table == [0, 1] and b.block_table == [2, 3, 4] and bm.num_used == 5 and bm.num_free == 5
    bm.free(a)
    c = Request("c", 0.0, 16, 1)
    bm.grow(c, 16)
    assert c.block_table == [0, 1, 5, 6]  # a's blocks back in order, then fresh ones
    with pytest.raises(KVCacheError):
        bm.grow(Request("d", 0.0, 20, 1), 20)  # 5 blocks asked, 3 free


def test_random_grow_and_free_keeps_every_id_unique_and_counts_exact():
    rng = random.Random(0)
    bm = BlockManager(200, block_size=8, watermark=0.0)
    live: list[Request] = []
    for i in range(3000):
        if live and rng.random() < 0.45:
            bm.free(live.pop(rng.randrange(len(live))))
        else:
            r = Request(f"r{i}", 0.0, rng.randint(1, 80), 1)
            if bm.can_grow(r, r.prompt_tokens):
                bm.grow(r, r.prompt_tokens)
                live.append(r)
        ids = [b for r in live for b in r.block_table]
        assert len(ids) == len(set(ids)) == bm.num_used and all(0 <= b < 200 for b in ids)
        assert bm.num_free == 200 - bm.num_used


def test_a_huge_cache_costs_nothing_until_used():
    """Ten billion blocks (what --kv-blocks 10000000000 asks): no list of free ids, a few hundred bytes."""
    bm = BlockManager(10_000_000_000, block_size=16)
    r = Request("a", 0.0, 100, 1)
    bm.grow(r, 100)
    assert r.block_table == list(range(7)) and bm.num_free == 10_000_000_000 - 7
    assert sys.getsizeof(bm._recycled) < 1000 and not hasattr(bm, "_free")


def test_take_blocks_hands_out_what_one_block_grows_would():
    """A stretch takes a run of steps' blocks at once (``take_blocks``): the same ids, in the same order, as one
    block at a time for each request, from recycled and fresh ids alike."""
    rng = random.Random(1)
    for _ in range(40):
        history = [(rng.randrange(6), rng.randint(1, 12), rng.random() < 0.3) for _ in range(rng.randint(0, 12))]
        pair = [BlockManager(64, block_size=4, watermark=0.0) for _ in range(2)]
        held = [[Request(f"r{i}", 0.0, 1, 1) for i in range(6)] for _ in pair]
        for bm, reqs in zip(pair, held):  # the same grows and frees on both
            for i, n, free in history:
                if free:
                    bm.free(reqs[i])
                elif bm.num_free >= n:
                    bm.grow(reqs[i], (len(reqs[i].block_table) + n) * 4)
        one, bulk = pair
        n = min(one.num_free, rng.randint(1, 20))
        order = [rng.randrange(6) for _ in range(n)]
        assert bulk.appends_blocks(held[1])
        for i in order:
            one.add_block_each([held[0][i]])
        taken, fresh = bulk.take_blocks(n)
        for i, b in zip(order, taken):
            held[1][i].block_table.append(b)
        assert fresh == n and [r.block_table for r in held[0]] == [r.block_table for r in held[1]]
        assert (one.num_free, one.num_used) == (bulk.num_free, bulk.num_used)
