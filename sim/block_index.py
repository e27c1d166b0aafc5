"""The caching block manager's two indexes: which block holds a shared prefix key, and the LRU order
of the cached free blocks.

Both keep their state in numpy arrays and work a request's blocks at a time: on a full cache every new
block evicts one and every computed block registers one, millions of each on a long trace.
"""

from __future__ import annotations

from itertools import compress, repeat
from operator import is_

import numpy as np

from sim.prefix import NO_KEY, OWN

W = 32  # consecutive keys per dictionary entry: a Mooncake hash block's 512 tokens in 16-token blocks
SUB = (W - 1) << 2  # the key bits naming a key within its run (above the two tag bits, sim.prefix)


class KeyIndex:
    """Shared prefix key -> the block holding it; one dictionary entry (a row of ``W`` block ids) per run of
    ``W`` consecutive keys, since a prefix's blocks have consecutive keys (``sim.prefix``).

    Evictions only clear the block's key (``key_of``, the manager's array); an entry naming a block that holds
    another key since is stale and reads as absent. Stale rows go when the table is rebuilt from ``key_of``,
    which happens when the table fills, so it stays within a few times the rows its cached blocks need.
    """

    def __init__(self, key_of: np.ndarray, min_rows: int = 256) -> None:
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
        return b if b >= 0 and self._key_of[b] == key else None

    def match(self, keys: np.ndarray) -> list[int]:
        """The blocks holding the leading run of ``keys`` that are all indexed (a prompt's cached prefix)."""
        first = self.get(int(keys[0]))
        if first is None or len(keys) == 1:
            return [] if first is None else [first]
        starts, heads = _runs(keys)
        rows = list(map(self._row.get, heads.tolist()))
        if None in rows:  # a run never indexed: the prefix ends at its start
            n = rows.index(None)
            keys, starts, heads, rows = keys[:starts[n]], starts[:n], heads[:n], rows[:n]
        held = self._table[_slots(keys, starts, heads, rows)]
        ok = (held >= 0) & (self._key_of[held] == keys)
        return held.tolist() if ok.all() else held[:int(np.argmin(ok))].tolist()

    def add(self, keys: np.ndarray, blocks: np.ndarray) -> np.ndarray | None:
        """Index each block under its key unless a block still holding that key is indexed already (a twin):
        None when all were added, else the mask of those added. The caller writes their keys into ``key_of``.
        The keys are distinct (a request's keys name their positions, ``sim.prefix``)."""
        starts, heads = _runs(keys)
        slot = _slots(keys, starts, heads, self._rows_for(heads.tolist()))
        held = self._table[slot]
        twin = (held >= 0) & (self._key_of[held] == keys)
        if twin.any():
            mine = ~twin
            self._table[slot[mine]] = blocks[mine]
            return mine
        self._table[slot] = blocks
        return None

    def add_one(self, key: int, block: int) -> bool:
        """``add`` for one block (a decode's): whether it was added."""
        slot = self._rows_for([key & ~SUB])[0] * W + ((key >> 2) & (W - 1))
        held = int(self._table[slot])
        if held >= 0 and self._key_of[held] == key:
            return False
        self._table[slot] = block
        return True

    def _rows_for(self, runs: list[int]) -> list[int]:
        """The rows of these runs, new ones allocated (the table rebuilt or grown first if they may not fit)."""
        rows = list(map(self._row.get, runs))
        if None not in rows:
            return rows
        new = list(dict.fromkeys(compress(runs, map(is_, rows, repeat(None)))))  # once each, in order
        if len(self._row) + len(new) > len(self._table) // W:
            self._rebuild(len(runs))  # room for all of them: it keeps only the runs whose blocks hold keys
            new = list(dict.fromkeys(r for r in runs if r not in self._row))
        d = self._row
        d.update(zip(new, range(len(d), len(d) + len(new))))
        return list(map(d.__getitem__, runs))

    def _rebuild(self, extra: int) -> None:
        """Rows for the runs whose blocks still hold their keys only, with room for three times as many more
        (a small table: the simulator runs faster with its arrays in the processor's cache)."""
        key = self._key_of
        live = np.flatnonzero((key != NO_KEY) & (key & 3 != OWN))
        k = key[live]
        runs, row = np.unique(k & ~SUB, return_inverse=True)
        rows = max(self._min_rows, 4 * (len(runs) + extra))
        self._table = np.full(rows * W, -1, dtype=np.int32)
        self._table[row * W + ((k >> 2) & (W - 1))] = live
        self._row = dict(zip(runs.tolist(), range(len(runs))))


def _runs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of ``keys`` (keys equal but for their position in a ``W`` window) starts, and its key with
    those bits cleared (the dictionary's key)."""
    runs = keys & ~SUB
    starts = np.concatenate(([0], np.flatnonzero(runs[1:] != runs[:-1]) + 1))
    return starts, runs[starts]


def _slots(keys: np.ndarray, starts: np.ndarray, heads: np.ndarray, rows: list[int]) -> np.ndarray:
    """Each key's slot in the flat table: row * W + position in the run = (key >> 2) + row * W - (run >> 2)."""
    offset = np.asarray(rows, dtype=np.int64) * W - (heads >> 2)
    if len(starts) == 1:  # one run (most chunks of a Mooncake prompt)
        return (keys >> 2) + int(offset[0])
    return (keys >> 2) + np.repeat(offset, np.diff(np.append(starts, len(keys))))


class LRUList:
    """Blocks in the order they became cached-free; an entry whose block was taken off since is stale, skipped."""

    def __init__(self, num_blocks: int) -> None:
        self._order = np.empty(max(1024, num_blocks // 8), dtype=np.int64)
        self._pos = np.full(num_blocks, -1, dtype=np.int64)  # each block's latest position on the list
        self._head = self._tail = 0  # the caller counts the live entries (its cached free blocks)

    def push(self, blocks: np.ndarray) -> None:
        """Append ``blocks`` as the most recently freed."""
        n = len(blocks)
        if not n:
            return
        if self._tail + n > len(self._order):
            self._compact(n)
        self._order[self._tail:self._tail + n] = blocks
        self._pos[blocks] = np.arange(self._tail, self._tail + n)
        self._tail += n

    def remove(self, blocks: np.ndarray) -> None:
        """Take ``blocks`` (on the list) off it: a request hit them (their entries go stale)."""
        self._pos[blocks] = -1

    def pop_one(self) -> int:
        """Remove and return the least recently freed live block."""
        order, pos, head = self._order, self._pos, self._head
        while True:
            b = int(order[head])
            head += 1
            if pos[b] == head - 1:
                pos[b] = -1
                self._head = head
                return b

    def pop(self, n: int) -> np.ndarray:
        """Remove and return the ``n`` least recently freed live blocks."""
        if n <= 8:  # a few blocks: element by element beats numpy's per-call cost
            return np.array([self.pop_one() for _ in range(n)], dtype=np.int64)
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            end = min(self._tail, self._head + max(2 * (n - got), 256))
            chunk = self._order[self._head:end]
            live = np.flatnonzero(self._pos[chunk] == np.arange(self._head, end))[:n - got]
            out.append(chunk[live])
            got += len(live)
            self._head = self._head + int(live[-1]) + 1 if got == n else end  # right after the last block taken
        blocks = out[0] if len(out) == 1 else np.concatenate(out)
        self._pos[blocks] = -1
        return blocks

    def _compact(self, extra: int) -> None:
        """Drop the consumed head (and grow the buffer if it must) before appending ``extra`` entries."""
        live = self._order[self._head:self._tail]
        size = max(len(self._order), 2 * (len(live) + extra))
        order = np.empty(size, dtype=np.int64)
        order[:len(live)] = live
        valid = self._pos[live] == np.arange(self._head, self._tail)
        self._pos[live[valid]] = np.flatnonzero(valid)
        self._order, self._head, self._tail = order, 0, len(live)
