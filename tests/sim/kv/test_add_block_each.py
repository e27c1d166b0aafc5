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
