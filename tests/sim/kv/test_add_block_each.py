"""``BlockManager.add_block_each`` (a decode stretch's step) hands out exactly the blocks ``grow`` would, one by one."""

from __future__ import annotations

import random

import pytest

from sim.kv.block_manager import BlockManager, KVCacheError
from sim.request import Request


def test_add_block_each_gives_the_blocks_grow_gives_one_at_a_time():
    rng = random.Random(7)
    a, b = BlockManager(200, 4, 0.0), BlockManager(200, 4, 0.0)
    ra = [Request(f"r{i}", 0.0, 1, 10) for i in range(12)]
    rb = [Request(f"r{i}", 0.0, 1, 10) for i in range(12)]
    for _ in range(300):
        picks = sorted(rng.sample(range(12), rng.randint(1, 6)))
        if rng.random() < 0.2:  # free some, so that recycled ids come back in their order
            for i in picks[:2]:
                a.free(ra[i])
                b.free(rb[i])
            continue
        if len(picks) > a.num_free:
            with pytest.raises(KVCacheError):
                b.add_block_each([rb[i] for i in picks])
            continue
        for i in picks:
            a.grow(ra[i], (len(ra[i].block_table) + 1) * 4)
        b.add_block_each([rb[i] for i in picks])
        assert [r.block_table for r in ra] == [r.block_table for r in rb]
        assert (a.num_free, a.num_used) == (b.num_free, b.num_used)


def test_the_caching_managers_add_block_each_gives_what_grow_gives():
    """With prefix caching: list tables (requests that share nothing) and array tables (a shared prefix), blocks
    taken from the recycled, the never used and the cached ones (keyed and keyless evictions), as ``grow`` would."""
    from sim.kv.prefix_cache import CachingBlockManager
    from sim.kv.prefix_keys import prefix_spec
    from sim.request import Status

    rng = random.Random(11)

    def fleet() -> tuple[CachingBlockManager, list[Request]]:
        reqs = [Request(f"r{i}", 0.0, 9, 40, index=i,
                        prefix=prefix_spec({"prefix_group": "g", "prefix_len": 8}) if i % 3 == 0 else None)
                for i in range(80)]
        return CachingBlockManager(60, 4, 0.0), reqs

    (a, ra), (b, rb) = fleet(), fleet()
    live: list[int] = []
    for step in range(400):
        op = rng.random()
        if (op < 0.25 or not live) and len(live) < 12:
            fresh = [k for k in range(80) if k not in live and ra[k].status is not Status.FINISHED]
            if a.num_free < 4 or not fresh:
                continue
            i = rng.choice(fresh)
            for bm, r in ((a, ra[i]), (b, rb[i])):
                bm.admit(r, 9)
                r.num_computed, r.status = 9, Status.RUNNING
                bm.on_computed(r)
            live.append(i)
        elif op < 0.4:
            i = live.pop(rng.randrange(len(live)))
            for bm, r in ((a, ra[i]), (b, rb[i])):
                r.status = Status.FINISHED
                bm.free(r)
        else:
            picks = sorted(rng.sample(live, rng.randint(1, len(live))))
            if len(picks) > a.num_free:
                continue
            for i in picks:
                a.grow(ra[i], (len(ra[i].block_table) + 1) * 4)
            b.add_block_each([rb[i] for i in picks])
            for bm, reqs in ((a, ra), (b, rb)):  # decoded into their new blocks (full ones get keys)
                for i in picks:
                    reqs[i].num_computed = min(len(reqs[i].block_table) * 4 - 1, 48)
                    bm.on_computed(reqs[i])
        assert [list(r.block_table) for r in ra] == [list(r.block_table) for r in rb], step
        assert (a.num_free, a.num_used, a.num_cached_free) == (b.num_free, b.num_used, b.num_cached_free)
        assert [a.is_cached(k) for k in range(60)] == [b.is_cached(k) for k in range(60)], step
    assert a.stats == b.stats and a.stats.evictions > 0
