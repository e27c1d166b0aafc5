"""The prefix cache's key index and LRU list against plain-Python models of what they must answer."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.kv.key_index import KeyIndex, KeyRuns, LRUList, W, decode
from sim.kv.prefix_keys import NO_KEY

NUM_BLOCKS = 64


def _key(run: int, sub: int) -> int:
    return ((run * W + sub) << 2) | 1  # a trace-described key (tag 1): consecutive subs share a run


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 3)), min_size=1, max_size=40,
                                   unique=True), st.integers(0, 12)), min_size=1, max_size=40),
       st.randoms(use_true_random=False))
def test_key_index_answers_like_a_dictionary_through_rebuilds(steps, rnd):
    """Keys (of a few runs, in any order) are added for free blocks, blocks are evicted; get() and match() always
    agree with a dictionary holding the first live block of each key. A 2-row table rebuilds all the time."""
    key_of = np.full(NUM_BLOCKS + 1, NO_KEY, dtype=np.int64)  # the spare entry empty slots read
    index, holder = KeyIndex(key_of, min_rows=2), {}
    for pairs, evict in steps:
        free = [b for b in range(NUM_BLOCKS) if key_of[b] == NO_KEY]
        n = min(len(pairs), len(free))
        if n:
            keys = np.array([_key(run, sub) for run, sub in pairs[:n]], dtype=np.int64)
            blocks = np.array(rnd.sample(free, n), dtype=np.int64)
            lead = np.array([_key(99, s) for s in range(rnd.randint(0, 3))], dtype=np.int64)  # a slice of a prompt
            runs = KeyRuns(np.concatenate((lead, keys)))
            added = (index.add(runs, len(lead), len(lead) + n, blocks) if n > 1
                     else np.array([index.add_one(int(keys[0]), int(blocks[0]))]))
            added = np.ones(n, dtype=bool) if added is None else added
            for k, b, a in zip(keys.tolist(), blocks.tolist(), added.tolist()):
                live = holder.get(k) is not None and key_of[holder[k]] == k
                assert a == (not live)  # a block still holding the key keeps it (the first of twins)
                if a:
                    holder[k] = b
                    key_of[b] = k
        for b in rnd.sample(range(NUM_BLOCKS), evict):
            key_of[b] = NO_KEY
        for k, b in holder.items():
            assert index.get(k) == (b if key_of[b] == k else None)
        keys = np.array([_key(pairs[0][0], s) for s in range(4)], dtype=np.int64)  # match: the leading keys held
        expect = []
        for k in keys.tolist():
            if holder.get(k) is None or key_of[holder[k]] != k:
                break
            expect.append(holder[k])
        assert index.match(KeyRuns(keys), 0, len(keys)).tolist() == expect
        assert index.match(KeyRuns(np.concatenate((keys[:1], keys))), 1, len(keys) + 1).tolist() == expect  # a slice


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "push_anonymous", "pop", "pop_one", "take", "remove"]),
                          st.integers(1, 20)), max_size=80),
       st.sampled_from([1, 4, 64]), st.randoms(use_true_random=False))
def test_lru_list_pops_least_recently_pushed_first(ops, ahead, rnd):
    """Bulk pops, single pops (read ahead ``ahead`` entries at a time), hits' removals and pushes (compacting the
    buffer now and then), of keyed and anonymous blocks (a plain list in front while nothing else is listed), always
    leave the live blocks of a plain list, in its order; anonymous ones come back as ``~block``."""
    lru, model, anonymous = LRUList(256), [], set()  # model: live blocks, least recent first
    lru.AHEAD = ahead
    outside = list(range(256))
    for op, n in ops:
        if op.startswith("push"):
            blocks = [outside.pop() for _ in range(min(n, len(outside)))]
            anon = op == "push_anonymous"
            lru.push(blocks if anon and n % 2 else np.array(blocks, dtype=np.int64), anon)  # a list or an array
            model += blocks
            anonymous |= set(blocks) if anon else set()
        elif op in ("pop", "pop_one", "take") and model:
            n = min(n, len(model))
            if op == "take":
                front, rest = lru.take(n)
                got = front + decode(rest).tolist()
                assert all(b in anonymous for b in front)
            else:
                raw = [lru.pop_one() for _ in range(n)] if op == "pop_one" else lru.pop(n).tolist()
                assert [b < 0 for b in raw] == [b in anonymous for b in model[:n]]
                got = decode(np.array(raw, dtype=np.int64)).tolist()
            assert got == model[:n]
            del model[:n]
            outside += got
            anonymous -= set(got)
        elif op == "remove" and model:
            keyed = [b for b in model if b not in anonymous]  # hits find keyed blocks only
            taken = rnd.sample(keyed, min(n, len(keyed)))
            lru.remove(np.array(taken, dtype=np.int64))
            model = [b for b in model if b not in taken]
            outside += taken
        assert lru.listed().tolist() == model


def test_a_rebuild_makes_room_for_every_run_it_drops():
    """A full table of stale rows (every block evicted), then one call adding to 8 of those runs and a new one:
    the rebuild that the new run triggers drops the stale rows, and the table must then hold all 9."""
    key_of = np.full(NUM_BLOCKS + 1, NO_KEY, dtype=np.int64)  # the spare entry empty slots read
    index = KeyIndex(key_of, min_rows=2)
    for runs in (range(8), range(100, 124)):  # 8 rows (the table grows to 32), then 24 more: full
        keys = np.array([_key(run, 0) for run in runs], dtype=np.int64)
        assert index.add(KeyRuns(keys), 0, len(keys), np.arange(len(keys))) is None
    keys = np.array([_key(run, 1) for run in [*range(8), 200]], dtype=np.int64)  # 8 stale runs and a new one
    assert index.add(KeyRuns(keys), 0, len(keys), np.arange(30, 39)) is None
    key_of[30:39] = keys
    assert [index.get(k) for k in keys.tolist()] == list(range(30, 39))


def test_anonymous_blocks_behind_keyed_ones_keep_their_place():
    """Anonymous blocks freed after keyed ones wait behind them (``_back``): a bulk pop across the two returns the
    keyed ones first; once hits have removed every keyed one, a later anonymous push still goes after them."""
    lru = LRUList(64)
    lru.push(np.array([1, 2, 3], dtype=np.int64))
    lru.push(list(range(4, 14)), anonymous=True)
    assert lru.pop(12).tolist() == [1, 2, 3, *(~b for b in range(4, 13))]
    assert lru.pop_one() == ~13
    lru.push(np.array([20, 21], dtype=np.int64))
    lru.push([22, 23], anonymous=True)
    lru.remove(np.array([20, 21], dtype=np.int64))  # hits take every keyed block: the array holds none
    lru.push([24], anonymous=True)
    assert lru.listed().tolist() == [22, 23, 24]
    assert [lru.pop_one() for _ in range(3)] == [~22, ~23, ~24]
