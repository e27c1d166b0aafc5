"""Automatic prefix caching on the paged KV cache (vLLM's), for the simulator and the engine alike.

A full block is known by the chained hash of its tokens (``sim.prefix``). Blocks carry
reference counts; a block whose count drops to zero keeps its hash and goes on an LRU list of
cached free blocks, evicted (least recently freed first) only when a fresh block is needed.
Admission reuses the longest run of cached blocks at the start of the prompt and prefills the
rest; a whole-prompt hit still computes its last token (the hit stops at ``prompt - 1`` tokens,
as vLLM does), so the model samples the first output token. A request's prompt blocks are
registered as soon as they are full and computed, so a request admitted later hits them while
the first is still running; so are the blocks its answer fills (a conversation's next turn
resends them). Watermark and preemption are unchanged: a preempted request's
blocks are freed (and stay cached until evicted).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sim.kv_cache import BlockManager, KVCacheError
from sim.prefix import block_hashes
from sim.request import Request, Status

NO_KEY = np.iinfo(np.int64).min  # a block holding no registered prefix
OWN = 3  # the low two bits of a key unique to one request (sim.prefix): only that request can hit it


@dataclass
class PrefixCacheStats:
    """Counters for the summary: what admissions asked for, what they found, what was evicted."""

    queried_tokens: int = 0   # prompt tokens of every first admission
    hit_tokens: int = 0       # of which found in the cache
    queried_blocks: int = 0   # full prompt blocks of every first admission
    hit_blocks: int = 0
    recompute_hit_tokens: int = 0  # tokens a preempted request found again when re-admitted (its own, mostly)
    evictions: int = 0        # cached blocks given to another use

    def as_dict(self) -> dict:
        """The counters with hit rates (None before any lookup)."""
        d = asdict(self)
        d["hit_rate_tokens"] = self.hit_tokens / self.queried_tokens if self.queried_tokens else None
        d["hit_rate_blocks"] = self.hit_blocks / self.queried_blocks if self.queried_blocks else None
        return d


class CachingBlockManager(BlockManager):
    """A ``BlockManager`` whose full blocks are shared by key, reference-counted and evicted LRU.

    Per-block state lives in numpy arrays (references, key, position on the LRU list), so that a
    request's hundreds of blocks are freed, registered and evicted a request at a time.
    """

    caching = True

    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01) -> None:
        super().__init__(num_blocks, block_size, watermark)
        self._refs = np.zeros(num_blocks, dtype=np.int32)          # running requests holding each block
        self._key = np.full(num_blocks, NO_KEY, dtype=np.int64)     # the prefix key a cached block holds
        self._block_of: dict[int, int] = {}                         # key -> cached block
        self._lru = _LRUList(num_blocks)                            # cached, unreferenced: least recent first
        self._evict_version = 0  # bumped by evictions: a request's last lookup is extended, not redone, until then
        self.stats = PrefixCacheStats()

    # ---- counts --------------------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return self.num_blocks - self._next + len(self._recycled) + self._lru.size

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    @property
    def num_cached_free(self) -> int:
        """Unreferenced blocks still holding a cached prefix (part of ``num_free``)."""
        return self._lru.size

    def references(self, block: int) -> int:
        """How many running requests hold ``block`` (0: free)."""
        return int(self._refs[block])

    def is_cached(self, block: int) -> bool:
        """Whether ``block`` holds a registered prefix (referenced or waiting on the LRU list)."""
        return bool(self._key[block] != NO_KEY)

    # ---- lookup and admission ------------------------------------------------------------------------------
    def _keys(self, request: Request) -> list[int]:
        """Its prompt's and its answer's block keys (generated blocks are cached too); the shared ones lead."""
        if request.block_hashes is None:
            keys = block_hashes(request.prefix, request.index, request.max_tokens - 1, self.block_size)
            own = np.flatnonzero((keys & 3) == OWN)
            request.num_shared_blocks = int(own[0]) if len(own) else len(keys)  # sim.prefix: shared keys lead
            request.block_hashes = keys.tolist()
        return request.block_hashes

    def cached_prefix(self, request: Request) -> list[int]:
        """Block ids of the longest cached run at the start of ``request``'s prompt, leaving a token to compute.

        The last answer is kept on the request and only extended until an eviction may have shortened it.
        """
        if request.block_table:
            return []
        memo = request.prefix_lookup  # (manager, its eviction count, hit): a router asks every replica's manager
        hit = memo[2] if memo is not None and memo[0] is self and memo[1] == self._evict_version else []
        keys = self._keys(request)
        limit = min(len(keys), (request.num_known - 1) // self.block_size)  # at least one token left to compute
        get, own, key_of, shared = self._block_of.get, request.last_blocks, self._key, request.num_shared_blocks
        for i in range(len(hit), limit):
            k = keys[i]
            if i >= shared:  # only its owner can hit it: where its last table put it, unless evicted since
                b = own[i] if own is not None and i < len(own) and key_of[own[i]] == k else None
            else:
                b = get(k)
            if b is None:
                break
            hit.append(b)
        request.prefix_lookup = (self, self._evict_version, hit)
        return hit

    def prefix_hit(self, request: Request) -> int:
        return len(self.cached_prefix(request)) * self.block_size

    def can_admit(self, num_tokens: int, use_watermark: bool = True, request: Request | None = None) -> bool:
        """As BlockManager's, counting hit blocks other requests hold as already allocated (no free block used)."""
        floor = self.watermark_blocks if use_watermark else 0
        need = self.blocks_for(num_tokens)
        if request is not None:
            hit = self.cached_prefix(request)
            if hit:
                need -= int(np.count_nonzero(self._refs[hit]))
        return self.num_free - need >= floor

    def admit(self, request: Request, num_tokens: int) -> None:
        """Reuse the cached prefix (its tokens count as computed), then fresh blocks up to ``num_tokens``."""
        hit = self.cached_prefix(request)
        request.prefix_lookup = None
        st, bs = self.stats, self.block_size
        if request.num_preemptions == 0:  # the hit rate is of prompts as they arrive
            st.queried_tokens += request.prompt_tokens
            st.queried_blocks += request.prompt_tokens // bs
            st.hit_tokens += min(len(hit) * bs, request.prompt_tokens)
            st.hit_blocks += min(len(hit), request.prompt_tokens // bs)
        else:  # a re-admission may find its prompt and the answer computed so far
            st.recompute_hit_tokens += len(hit) * bs
        if hit:
            idx = np.asarray(hit, dtype=np.int64)
            self._lru.size -= int(np.count_nonzero(self._refs[idx] == 0))  # off the LRU list (entries go stale)
            self._refs[idx] += 1
        request.block_table = list(hit)
        request.num_computed = len(hit) * self.block_size
        request.num_hashed_blocks = len(hit)
        if request.num_preemptions == 0:
            request.cached_tokens = min(request.num_computed, request.prompt_tokens)
        self.grow(request, num_tokens)

    # ---- growth, registration, release ---------------------------------------------------------------------
    def grow(self, request: Request, num_tokens: int) -> None:
        """Extend the table with never-cached free blocks first, then the least recently freed cached ones."""
        table, recycled = request.block_table, self._recycled
        need = -(-num_tokens // self.block_size) - len(table)
        if need <= 0:
            return
        if need == 1 and (recycled or self._lru.size or self._next < self.num_blocks):  # a decode's next block
            if recycled:
                b = recycled.pop()
            elif self._next < self.num_blocks:
                b = self._next
                self._next += 1
            else:
                b = self._evict_one()
            table.append(b)
            self._refs[b] = 1
            return
        if need > self.num_free:
            raise KVCacheError(f"request {request.request_id} needs {need} blocks, only {self.num_free} free")
        start = len(table)
        take = min(need, len(recycled))
        if take:
            table.extend(recycled[-1:-take - 1:-1])
            del recycled[-take:]
        fresh = min(need - take, self.num_blocks - self._next)
        if fresh:
            table.extend(range(self._next, self._next + fresh))
            self._next += fresh
        if need - take - fresh:
            table.extend(self._evict(need - take - fresh))
        if need == 1:
            self._refs[table[-1]] = 1
        else:
            self._refs[table[start:]] = 1

    def _evict_one(self) -> int:
        """The least recently freed cached block, its key forgotten (``_evict`` for one, without numpy calls)."""
        b = self._lru.pop_one(self._refs)
        k = int(self._key[b])
        if k & 3 != OWN:
            del self._block_of[k]
        self._key[b] = NO_KEY
        self.stats.evictions += 1
        self._evict_version += 1
        return b

    def _evict(self, n: int) -> list[int]:
        """The ``n`` least recently freed cached blocks, their keys forgotten."""
        if n == 1:
            return [self._evict_one()]
        blocks = self._lru.pop(n, self._refs)
        d, key = self._block_of, self._key
        for k in key[blocks].tolist():
            if k & 3 != OWN:  # a request's own keys are never in the shared dictionary
                del d[k]
        key[blocks] = NO_KEY
        self.stats.evictions += n
        self._evict_version += 1
        return blocks.tolist()

    def on_computed(self, request: Request) -> None:
        """Register the request's blocks that are now full and computed (a later request can hit them).

        Shared keys go into the dictionary (unless a twin computed the same block first, or the trace repeats an
        id: the first block keeps the key); the request's own keys only onto their blocks (only it can hit them).
        """
        keys = request.block_hashes
        if keys is None:
            return
        done = min(len(keys), request.num_computed // self.block_size)
        first = request.num_hashed_blocks
        if done <= first:
            return
        table, shared = request.block_table, request.num_shared_blocks
        if done == first + 1:  # one block filled (a decode, a small chunk): no list or numpy work
            k, b = keys[first], table[first]
            if first >= shared or self._block_of.setdefault(k, b) == b:
                self._key[b] = k
            request.num_hashed_blocks = done
            return
        cut = min(max(first, shared), done)  # [first, cut) shared, [cut, done) its own
        if cut > first:
            d = self._block_of
            new_keys, new_blocks = keys[first:cut], table[first:cut]
            if any(map(d.__contains__, new_keys)) or len(set(new_keys)) < len(new_keys):
                pairs = [(k, b) for k, b in zip(new_keys, new_blocks) if d.setdefault(k, b) == b]
                new_keys, new_blocks = [k for k, _ in pairs], [b for _, b in pairs]
            else:
                d.update(zip(new_keys, new_blocks))
            self._key[new_blocks] = new_keys
        if done > cut:
            self._key[table[cut:done]] = keys[cut:done]
        request.num_hashed_blocks = done

    def free(self, request: Request) -> None:
        """Drop ``request``'s references, tail first: cached blocks join the LRU list, the rest are recycled."""
        table = request.block_table
        if table:
            idx = np.asarray(table[::-1], dtype=np.int64)
            self._refs[idx] -= 1
            released = idx[self._refs[idx] == 0]
            cached = self._key[released] != NO_KEY
            self._lru.push(released[cached])
            self._recycled.extend(released[~cached].tolist())
        # a preempted request finds its own blocks again where this table put them (its keys are in no dictionary)
        request.last_blocks = table if request.status is not Status.FINISHED else None
        request.block_table = []
        request.num_hashed_blocks = 0
        request.prefix_lookup = None
        if request.status is Status.FINISHED:
            request.block_hashes = None  # its keys are needed only while it runs


class _LRUList:
    """Blocks in the order they became cached-free; a block re-referenced since is a stale entry, skipped."""

    def __init__(self, num_blocks: int) -> None:
        self._order = np.empty(max(1024, num_blocks // 8), dtype=np.int64)
        self._pos = np.full(num_blocks, -1, dtype=np.int64)  # each block's latest position on the list
        self._head = self._tail = 0
        self.size = 0  # live entries: cached blocks with no references

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
        self.size += n

    def pop_one(self, refs: np.ndarray) -> int:
        """Remove and return the least recently freed live block."""
        order, pos, head = self._order, self._pos, self._head
        while True:
            b = int(order[head])
            head += 1
            if pos[b] == head - 1 and refs[b] == 0:
                pos[b] = -1
                self._head = head
                self.size -= 1
                return b

    def pop(self, n: int, refs: np.ndarray) -> np.ndarray:
        """Remove and return the ``n`` least recently freed live blocks."""
        if n <= 8:  # a few blocks: element by element beats numpy's per-call cost
            return np.array([self.pop_one(refs) for _ in range(n)], dtype=np.int64)
        out: list[np.ndarray] = []
        got = 0
        while got < n:
            end = min(self._tail, self._head + max(2 * (n - got), 256))
            chunk = self._order[self._head:end]
            live = chunk[(self._pos[chunk] == np.arange(self._head, end)) & (refs[chunk] == 0)]
            take = live[:n - got]
            if len(take) < len(live):  # stop right after the last block taken
                end = self._head + int(np.flatnonzero(chunk == take[-1])[-1]) + 1
            out.append(take)
            got += len(take)
            self._head = end
        blocks = np.concatenate(out)
        self._pos[blocks] = -1
        self.size -= n
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


def cache_summary(managers: list[CachingBlockManager], occupancy: list[list[int]]) -> dict:
    """summary.json's ``prefix_cache``: totals over replicas, each replica's hit rate and evictions, occupancy."""
    total = PrefixCacheStats()
    for m in managers:
        for k, v in asdict(m.stats).items():
            setattr(total, k, getattr(total, k) + v)
    occ = [x for log in occupancy for x in log]
    return {"enabled": True, **total.as_dict(),
            "cached_free_blocks_mean": sum(occ) / len(occ) if occ else 0.0,
            "cached_free_blocks_max": max(occ, default=0),
            "replicas": [{"hit_rate_tokens": m.stats.as_dict()["hit_rate_tokens"], "evictions": m.stats.evictions}
                         for m in managers]}
