"""The caching block manager's two indexes: which block holds a shared prefix key, and the LRU order
of the cached free blocks.

Both keep their state in numpy arrays and work a request's blocks at a time: on a full cache every new
block evicts one and every computed block registers one, millions of each on a long trace.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from itertools import compress, repeat
from operator import is_

import numpy as np

from sim.kv.prefix_keys import NO_KEY, OWN

W = 32  # consecutive keys per dictionary entry: a Mooncake hash block's 512 tokens in 16-token blocks
SUB = (W - 1) << 2  # the key bits naming a key within its run (above the two tag bits, sim.kv.prefix_keys)


class KeyRuns:
    """A request's shared keys cut into the index's runs, once per request: its lookups and registrations slice
    these instead of finding the runs again each time."""

    __slots__ = ("aligned", "heads", "keys", "pos", "starts")

    def __init__(self, keys: np.ndarray, per_id: int | None = None) -> None:
        """``per_id``: how many keys each trace hash id covers (``sim.kv.prefix_keys.blocks_per_hash_id``); when that is
        ``W`` (Mooncake's 512-token blocks in 16-token ones), every ``W`` keys form one run, found without search."""
        self.keys = keys
        self.aligned = aligned = per_id == W
        self.starts: list[int] = []  # each run's first key
        self.heads: list[int] = []  # each run's key with its position bits cleared
        if aligned:
            self.pos = _positions(len(keys))
            self.starts = list(range(0, len(keys), W))
            self.heads = (keys[::W] & ~SUB).tolist()
            return
        self.pos = (keys >> 2) & (W - 1)  # each key's slot within its run's row
        if len(keys):
            runs = keys & ~SUB
            change = (runs[1:] != runs[:-1]).nonzero()[0] + 1  # (nonzero: flatnonzero costs three times more)
            self.starts = [0, *change.tolist()]
            self.heads = [int(runs[0]), *runs[change].tolist()]

    def span(self, a: int, b: int) -> tuple[int, int]:
        """The runs holding keys ``[a, b)``: ``range(*span)`` indexes ``starts`` and ``heads``."""
        return bisect_right(self.starts, a) - 1, bisect_left(self.starts, b)


_POS = np.zeros(0, dtype=np.int64)


def _positions(n: int) -> np.ndarray:
    """``[0, 1, .., W-1, 0, 1, ..]``, ``n`` long: the slots of aligned runs' keys (a view of one kept array)."""
    global _POS
    if len(_POS) < n:
        _POS = np.tile(np.arange(W, dtype=np.int64), -(-max(n, 2 * len(_POS), 4096) // W))
    return _POS[:n]


class KeyIndex:
    """Shared prefix key -> the block holding it; one dictionary entry (a row of ``W`` block ids) per run of
    ``W`` consecutive keys, since a prefix's blocks have consecutive keys (``sim.kv.prefix_keys``).

    Evictions only clear the block's key (``key_of``, the manager's array, whose spare last entry stays
    ``NO_KEY``: an empty slot, -1, reads it); an entry naming a block that holds another key since is stale and
    reads as absent. Stale rows go when the table is rebuilt from ``key_of``, which happens when the table
    fills, so it stays within a few times the rows its cached blocks need.
    """

    def __init__(self, key_of: np.ndarray, min_rows: int = 256) -> None:
        assert key_of[-1] == NO_KEY, "key_of needs a spare NO_KEY entry at the end"
        self._key_of = key_of
        self._min_rows = min_rows
        self._row: dict[int, int] = {}  # the key with its run bits cleared -> its row of ``_table``
        self._table = np.full(min_rows * W, -1, dtype=np.int32)  # rows of W block ids, flat

    def get(self, key: int) -> int | None:
        """The block holding ``key``, or None."""
        r = self._row.get(key & ~SUB)
        if r is None:
            return None
        b = int(self._table[r * W + ((key >> 2) & (W - 1))])
        return b if self._key_of[b] == key else None

    def match(self, runs: KeyRuns, a: int, b: int) -> np.ndarray:
        """The blocks holding the leading stretch of ``runs.keys[a:b]`` that is all indexed (a cached prefix)."""
        first = self.get(int(runs.keys[a]))
        if first is None or b - a == 1:
            return np.array([] if first is None else [first], dtype=np.int64)
        r0, r1 = runs.span(a, b)
        rows = list(map(self._row.get, runs.heads[r0:r1]))
        if None in rows:  # a run never indexed: the prefix ends at its start
            n = rows.index(None)
            b, rows = runs.starts[r0 + n], rows[:n]
        held = self._table[self._slots(runs, a, b, r0, rows)]
        ok = self._key_of[held] == runs.keys[a:b]
        return held if np.count_nonzero(ok) == len(ok) else held[:int(np.argmin(ok))]

    def add(self, runs: KeyRuns, a: int, b: int, blocks: np.ndarray) -> np.ndarray | None:
        """Index ``blocks`` under ``runs.keys[a:b]`` unless a block still holding the key is indexed already (a
        twin): None when all were added, else the mask of those added. The caller writes their keys into
        ``key_of``. The keys are distinct (a request's keys name their positions, ``sim.kv.prefix_keys``)."""
        r0, r1 = runs.span(a, b)
        rows, fresh = self._rows_for(runs.heads[r0:r1])
        if fresh and runs.aligned:  # new rows, one after the other, each run filling its row: one stretch
            start = rows[0] * W + a - runs.starts[r0]
            self._table[start:start + b - a] = blocks
            return None
        slot = self._slots(runs, a, b, r0, rows)
        if fresh:  # new rows only: no twin
            self._table[slot] = blocks
            return None
        twin = self._key_of[self._table[slot]] == runs.keys[a:b]
        if np.count_nonzero(twin):
            mine = ~twin
            self._table[slot[mine]] = blocks[mine]
            return mine
        self._table[slot] = blocks
        return None

    def add_one(self, key: int, block: int) -> bool:
        """``add`` for one block (a decode's): whether it was added."""
        slot = self._rows_for([key & ~SUB])[0][0] * W + ((key >> 2) & (W - 1))
        if self._key_of[self._table[slot]] == key:
            return False
        self._table[slot] = block
        return True

    @staticmethod
    def _slots(runs: KeyRuns, a: int, b: int, r0: int, rows: list[int]) -> np.ndarray:
        """Keys ``[a, b)``'s slots in the flat table (``rows``: those of runs ``r0`` on)."""
        if len(rows) == 1:  # one run (most chunks of a Mooncake prompt)
            return runs.pos[a:b] + rows[0] * W
        ends = runs.starts[r0 + 1:r0 + len(rows)] + [b]  # each run's keys within [a, b)
        counts = [e - s for s, e in zip([a, *ends[:-1]], ends)]
        return runs.pos[a:b] + np.repeat(np.asarray(rows, dtype=np.int64) * W, counts)

    def _rows_for(self, runs: list[int]) -> tuple[list[int], bool]:
        """The rows of these runs, new ones allocated (the table rebuilt or grown first if they may not fit), and
        whether all are new (so empty: a run absent from the dictionary has no cached block left)."""
        rows = list(map(self._row.get, runs))
        if None not in rows:
            return rows, False
        fresh = rows.count(None) == len(rows)
        new = list(dict.fromkeys(compress(runs, map(is_, rows, repeat(None)))))  # once each, in order
        if len(self._row) + len(new) > len(self._table) // W:
            self._rebuild(len(runs))  # room for all of them: it keeps only the runs whose blocks hold keys
            new = list(dict.fromkeys(r for r in runs if r not in self._row))
        d = self._row
        d.update(zip(new, range(len(d), len(d) + len(new))))
        return list(map(d.__getitem__, runs)), fresh

    def _rebuild(self, extra: int) -> None:
        """Rows for the runs whose blocks still hold their keys only, with room for seven times as many more
        (a small table: the simulator runs faster with its arrays in the processor's cache)."""
        key = self._key_of
        live = np.flatnonzero((key != NO_KEY) & (key & 3 != OWN))
        k = key[live]
        runs, row = np.unique(k & ~SUB, return_inverse=True)
        rows = max(self._min_rows, 8 * (len(runs) + extra))
        self._table = np.full(rows * W, -1, dtype=np.int32)
        self._table[row * W + ((k >> 2) & (W - 1))] = live
        self._row = dict(zip(runs.tolist(), range(len(runs))))


_NONE = np.zeros(0, dtype=np.int64)


class LRUList:
    """Blocks in the order they became cached-free. A block taken off by a hit leaves a dead entry behind,
    marked and skipped; while no entry ahead is dead (the usual case), pops take the next entries unchecked,
    single pops from a short list read ahead (a decode's block: no numpy call per pop).

    Blocks pushed ``anonymous`` (holding no key, so never hit) are listed as ``~block`` (negative): pops return them
    so, and the caller skips forgetting a key they do not hold (``decode`` gives the block ids). While nothing else
    is listed they go on a plain list in front instead (``_front``: older than every other entry, no numpy call to
    push or pop them; without reuse, every cached free block is there); while keyed blocks are listed, on a plain
    list behind them (``_back``: newer than every other entry; into the array only when a keyed block follows
    them, in front once the array's entries are gone), so that a few keyed blocks (a preempted request's own)
    do not send every later push and pop through numpy.
    """

    AHEAD = 64  # entries a single pop reads ahead into ``_ahead``

    def __init__(self, num_blocks: int) -> None:
        size = max(1024, num_blocks // 8)
        self._order = np.empty(size, dtype=np.int64)
        self._dead = np.zeros(size, dtype=bool)  # entries whose block a hit took off
        self._num_dead = 0  # dead entries at or past the head
        self._pos = np.zeros(num_blocks, dtype=np.int64)  # each listed block's position (others: stale)
        self._head = self._tail = 0  # the caller counts the live entries (its cached free blocks)
        self._ahead: list[int] = []  # entries [_head - len, _head), live, next last: taken, not yet popped
        self._front: list[int] = []  # anonymous blocks older than all the above, from ``_fh`` on
        self._fh = 0
        self._back: list[int] = []  # anonymous blocks newer than all the above

    def push(self, blocks: np.ndarray | list[int], anonymous: bool = False) -> None:
        """Append ``blocks`` as the most recently freed (``anonymous``: listed as ``~block``, see the class)."""
        if not len(blocks):
            return
        if anonymous:
            if self._tail - self._head + len(self._ahead) == self._num_dead:  # the array holds none: in front
                front = self._front
                if self._fh > 4096 and 2 * self._fh > len(front):
                    del front[:self._fh]
                    self._fh = 0
                if self._back:
                    front += self._back
                    self._back = []
                front.extend(blocks if type(blocks) is list else blocks.tolist())
            else:
                self._back.extend(blocks if type(blocks) is list else blocks.tolist())
            return
        if self._back:  # they were freed before these: into the array first
            back, self._back = self._back, []
            self._append(~np.array(back, dtype=np.int64))  # (anonymous: never removed, no position needed)
        blocks = np.asarray(blocks, dtype=np.int64)
        self._append(blocks)
        self._pos[blocks] = np.arange(self._tail - len(blocks), self._tail)

    def _append(self, entries: np.ndarray) -> None:
        """Append entries (blocks, or ``~block`` for anonymous ones) to the array."""
        n = len(entries)
        if self._tail + n > len(self._order):
            self._compact(n)
        self._order[self._tail:self._tail + n] = entries
        self._tail += n

    def remove(self, blocks: np.ndarray) -> None:
        """Take ``blocks`` (on the list) off it: a request hit them (their entries die)."""
        if self._ahead:
            self._settle()
        self._dead[self._pos[blocks]] = True
        self._num_dead += len(blocks)

    def pop_one(self) -> int:
        """Remove and return the least recently freed live block (``~block`` if anonymous)."""
        front = self._front
        if front:
            b = front[self._fh]
            self._fh += 1
            if self._fh == len(front):
                front.clear()
                self._fh = 0
            return ~b
        ahead = self._ahead
        if ahead:
            return ahead.pop()
        head = self._head
        if self._tail - head == self._num_dead:  # the array holds none: the ones behind it come to the front
            if not self._back:
                raise IndexError("pop from an empty LRU list")
            self._drain()
            return self.pop_one()
        if self._num_dead:
            dead = self._dead
            while dead[head]:
                head += 1
                self._num_dead -= 1
            end = min(self._tail, head + self.AHEAD)
            if self._num_dead and np.count_nonzero(dead[head:end]):  # a dead entry close: one at a time
                self._head = head + 1
                return int(self._order[head])
        else:
            end = min(self._tail, head + self.AHEAD)
        self._head = end
        self._ahead = ahead = self._order[end - 1:head - 1 if head else None:-1].tolist()
        return ahead.pop()

    def take(self, n: int) -> tuple[list[int], np.ndarray]:
        """``pop(n)`` in two parts: the anonymous blocks of the front (ids, a list), then the rest (``pop``'s)."""
        front, fh = self._front, self._fh
        k = min(n, len(front) - fh)
        got = front[fh:fh + k]
        if fh + k == len(front):
            front.clear()
            self._fh = 0
        else:
            self._fh = fh + k
        return got, self.pop(n - k) if n > k else _NONE

    def pop(self, n: int) -> np.ndarray:
        """Remove and return the ``n`` least recently freed live blocks (``~block`` for anonymous ones)."""
        if self._front:
            got, rest = self.take(n)
            return np.concatenate((~np.array(got, dtype=np.int64), rest))
        if n <= 8:  # a few blocks: element by element beats numpy's per-call cost
            return np.array([self.pop_one() for _ in range(n)], dtype=np.int64)
        if self._ahead:
            self._settle()
        live = self._tail - self._head - self._num_dead
        if live < n:  # all of the array's, then from behind it
            got = self.pop(live) if live else _NONE
            back, k = self._back, n - live
            rest = ~np.array(back[:k], dtype=np.int64)
            del back[:k]
            self._drain()
            return np.concatenate((got, rest)) if live else rest
        head, end = self._head, self._head + n
        if not self._num_dead or not np.count_nonzero(self._dead[head:end]):  # all live
            self._head = end
            return self._order[head:end].copy()
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            end = min(self._tail, self._head + max(2 * (n - got), 256))
            live = (~self._dead[self._head:end]).nonzero()[0][:n - got]
            out.append(self._order[self._head:end][live])
            got += len(live)
            last = self._head + int(live[-1]) + 1 if got == n else end  # right after the last block taken
            self._num_dead -= (last - self._head) - len(live)
            self._head = last
        return out[0] if len(out) == 1 else np.concatenate(out)

    def listed(self) -> np.ndarray:
        """The live blocks, least recently freed first (for checks; not on any fast path)."""
        head = self._head - len(self._ahead)
        return np.concatenate((np.array(self._front[self._fh:], dtype=np.int64),
                               decode(self._order[head:self._tail][~self._dead[head:self._tail]]),
                               np.array(self._back, dtype=np.int64)))

    def _drain(self) -> None:
        """The array holds no live entry (none read ahead): its consumed entries go, and the blocks behind it move
        to the front (the oldest listed now)."""
        self._head, self._num_dead = self._tail, 0
        if self._back:
            if self._fh:
                del self._front[:self._fh]
                self._fh = 0
            self._front += self._back
            self._back = []

    def _settle(self) -> None:
        """Give the entries read ahead back to the list (they are still in place, live, just before the head)."""
        self._head -= len(self._ahead)
        self._ahead = []

    def _compact(self, extra: int) -> None:
        """Drop the consumed head and the dead entries (and grow the buffer if it must) before appending
        ``extra`` entries."""
        if self._ahead:
            self._settle()
        live = self._order[self._head:self._tail][~self._dead[self._head:self._tail]]
        size = max(len(self._order), 2 * (len(live) + extra))
        self._order = np.empty(size, dtype=np.int64)
        self._order[:len(live)] = live
        self._dead = np.zeros(size, dtype=bool)
        self._num_dead = 0
        self._pos[decode(live)] = np.arange(len(live))
        self._head, self._tail = 0, len(live)


def decode(listed: np.ndarray) -> np.ndarray:
    """Block ids of ``LRUList`` entries (``~block`` for anonymous ones: ``x ^ (x >> 63)`` flips negatives only)."""
    return listed ^ (listed >> 63)
