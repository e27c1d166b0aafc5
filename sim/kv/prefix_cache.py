"""Automatic prefix caching on the paged KV cache (vLLM's), for the simulator and the engine alike.

A full block is known by the chained hash of its tokens (``sim.kv.prefix_keys``). Blocks carry
reference counts; a block whose count drops to zero keeps its hash and goes on an LRU list of
cached free blocks, evicted (least recently freed first) only when a fresh block is needed.
Admission reuses the longest run of cached blocks at the start of the prompt and prefills the
rest; a whole-prompt hit still computes its last token (the hit stops at ``prompt - 1`` tokens,
as vLLM does), so the model samples the first output token. A request's blocks can be hit as
soon as they are full and computed, so a request admitted later hits them while the first is
still running; so can the blocks its answer fills (a conversation's next turn resends them).
(They are registered in bulk, when a lookup could reach them or at release, at a fraction of the
cost: every lookup finds what it would have found with each block registered as computed, except
between twins, below.) Watermark and preemption are unchanged: a preempted request's
blocks are freed (and stay cached until evicted).
"""

from __future__ import annotations

import numpy as np

from sim.kv.block_manager import BlockManager, KVCacheError
from sim.kv.cache_stats import PrefixCacheStats
from sim.kv.key_index import KeyIndex, KeyRuns, LRUList, decode
from sim.kv.prefix_keys import NO_KEY, blocks_per_hash_id, own_key, own_keys, shared_keys
from sim.request import Request, Status

NO_BLOCKS = np.zeros(0, dtype=np.int64)  # a lookup that found nothing
NO_RUNS = KeyRuns(np.zeros(0, dtype=np.int64))  # the shared keys of a request that shares nothing (never written)


class CachingBlockManager(BlockManager):
    """A ``BlockManager`` whose full blocks are shared by key, reference-counted and evicted LRU.

    Per-block state lives in numpy arrays (references, key; the LRU list's and the key index's in
    ``sim.kv.key_index``), so that a request's hundreds of blocks are freed, registered and evicted a
    request at a time; a request's block table is a view of its block-id array (``block_ids``), not a
    list (a list of a long prompt's block ids cost more to build and free than all the rest), except for
    requests that share nothing (``skip_no_reuse``): their tables are lists beside the array, so that a
    decode's new block is appended rather than a new view made. Nobody else can hold such a request's blocks (they
    hold no shared key), so their references are not counted: 0 in ``_refs`` while it holds them, 1 in truth
    (``references``). Writing and clearing a count per block cost more than all the rest of its bookkeeping.
    """

    caching = True
    #: requests that share nothing skip key work: their lookups return at once unless they were preempted, and when
    #: they finish their blocks stay cached without keys (``_anonymous``). False: full lookups and keys for every
    #: block, the reference the tests compare against (the same hits, evictions and counts)
    skip_no_reuse = True

    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01) -> None:
        super().__init__(num_blocks, block_size, watermark)
        self._refs = np.zeros(num_blocks, dtype=np.int32)          # running requests holding each block
        self._key = np.full(num_blocks + 1, NO_KEY, dtype=np.int64)  # the prefix key a cached block holds (+ a spare)
        self._index = KeyIndex(self._key)                           # shared key -> the block holding it
        self._lru = LRUList(num_blocks)                             # cached, unreferenced: least recent first
        self.num_cached_free = 0  # blocks on the LRU list: unreferenced, still holding a prefix (part of num_free)
        # blocks ever put on the LRU list and taken off it by hits: the rest of those not on it were evicted
        # (counted so, not per eviction: a decode's block evicts one at a time)
        self._listed = self._hit_off = 0
        self._dirty: dict[Request, None] = {}  # requests with newly computed full blocks, registered on next need
        self._twinned: set[Request] = set()  # running requests some of whose full blocks a twin keeps (uncached)
        self._stats = PrefixCacheStats()

    # ---- counts --------------------------------------------------------------------------------------------
    @property
    def stats(self) -> PrefixCacheStats:
        """The counters, evictions brought up to date."""
        self._stats.evictions = self._evictions()
        return self._stats

    def _evictions(self) -> int:
        """Cached blocks given to another use so far (a lookup's answer stands until this changes)."""
        return self._listed - self._hit_off - self.num_cached_free

    @property
    def num_free(self) -> int:
        return self.num_blocks - self._next + len(self._recycled) + self.num_cached_free

    @property
    def num_used(self) -> int:
        return self._next - len(self._recycled) - self.num_cached_free

    def references(self, block: int) -> int:
        """How many running requests hold ``block`` (0: free). For checks (a free block is searched for): a block
        held by a table that is a list is not counted in ``_refs`` (the class docstring)."""
        n = int(self._refs[block])
        if n or block >= self._next or block in self._recycled or block in self._lru.listed():
            return n
        return 1

    def is_cached(self, block: int) -> bool:
        """Whether ``block`` holds a registered key (referenced or on the LRU list; a running request's own
        blocks are registered when it is released; a finished request that shared nothing leaves its blocks on the
        LRU list without keys, ``_anonymous``)."""
        self._flush()
        return bool(self._key[block] != NO_KEY)

    # ---- lookup and admission ------------------------------------------------------------------------------
    def _keys(self, request: Request) -> KeyRuns:
        """The keys of its prompt's and answer's blocks that other requests may share (generated blocks are cached
        too), cut into the index's runs, once per run; the rest are its own (``sim.kv.prefix_keys.own_key``)."""
        if request.prefix_keys is None:
            n = request.max_tokens - 1
            if request.prefix is None:  # no reuse declared: no shared keys (one empty, read-only KeyRuns for all)
                request.prefix_keys = NO_RUNS
            else:
                per_id = blocks_per_hash_id(request.prefix, self.block_size)
                keys = shared_keys(request.prefix, n, self.block_size)
                request.prefix_keys = KeyRuns(keys, per_id) if len(keys) else NO_RUNS
            request.num_shared_blocks = len(request.prefix_keys.keys)
            request.num_key_blocks = n // self.block_size
        return request.prefix_keys

    def cached_prefix(self, request: Request) -> np.ndarray:
        """Block ids of the longest cached run at the start of ``request``'s prompt, leaving a token to compute.

        The last answer is kept on the request and only extended until an eviction may have shortened it.
        (An array: a list costs a conversion each way, some 15 us for a long prompt.)
        """
        if len(request.block_table):
            return NO_BLOCKS
        runs = self._keys(request)
        if self.skip_no_reuse and not request.num_shared_blocks and request.last_blocks is None:
            return NO_BLOCKS  # nothing to share and never preempted: no block anywhere holds one of its keys
        memo = request.prefix_lookup  # (manager, its eviction count, hit): a router asks every replica's manager
        version = self._evictions()
        hit = memo[2] if memo is not None and memo[0] is self and memo[1] == version else NO_BLOCKS
        limit = min(request.num_key_blocks, (request.num_known - 1) // self.block_size)  # a token left to compute
        shared = min(limit, request.num_shared_blocks)
        while len(hit) < shared:  # the index's blocks, then the unregistered ones of any request holding the next
            more = self._index.match(runs, len(hit), shared)
            if len(more):
                hit = np.concatenate((hit, more)) if len(hit) else more
            if len(hit) == shared or not self._dirty:
                break
            holder = self._holder(int(runs.keys[len(hit)]), len(hit))
            if holder is None:
                break
            self._flush(holder)
        own = request.last_blocks  # only its owner can hit its own keys: where its last table put them
        if shared <= len(hit) < limit and own is not None and len(hit) < len(own):
            i, end = len(hit), min(limit, len(own))
            mine = np.asarray(own[i:end], dtype=np.int64)
            ok = self._key[mine] == own_keys(request.index, i, end)
            hit = np.concatenate((hit, mine if np.count_nonzero(ok) == len(ok) else mine[:int(np.argmin(ok))]))
        request.prefix_lookup = (self, version, hit)
        return hit

    def _holder(self, k: int, i: int) -> Request | None:
        """The last noted request holding shared key ``k`` at block ``i``, computed but not registered (None: no
        such request). A key names its block's position (``sim.kv.prefix_keys``), so only block ``i`` can hold it."""
        bs, last = self.block_size, None
        for r in self._dirty:
            if r.num_hashed_blocks <= i < min(r.num_computed // bs, r.num_shared_blocks) and r.prefix_keys.keys[i] == k:
                last = r
        return last

    def prefix_hit(self, request: Request) -> int:
        return len(self.cached_prefix(request)) * self.block_size

    def can_admit(self, num_tokens: int, use_watermark: bool = True, request: Request | None = None) -> bool:
        """As BlockManager's, counting hit blocks other requests hold as already allocated (no free block used)."""
        floor = self.watermark_blocks if use_watermark else 0
        need = self.blocks_for(num_tokens)
        if request is not None:
            hit = self.cached_prefix(request)
            if len(hit):
                need -= np.count_nonzero(self._refs[hit])
        return self.num_free - need >= floor

    def admit(self, request: Request, num_tokens: int) -> None:
        """Reuse the cached prefix (its tokens count as computed), then fresh blocks up to ``num_tokens``."""
        hit = self.cached_prefix(request)
        request.prefix_lookup = None
        st, bs = self._stats, self.block_size
        if request.num_preemptions == 0:  # the hit rate is of prompts as they arrive
            st.queried_tokens += request.prompt_tokens
            st.queried_blocks += request.prompt_tokens // bs
            st.hit_tokens += min(len(hit) * bs, request.prompt_tokens)
            st.hit_blocks += min(len(hit), request.prompt_tokens // bs)
        else:  # a re-admission may find its prompt and the answer computed so far
            st.recompute_hit_tokens += len(hit) * bs
        listed = self.skip_no_reuse and not request.num_shared_blocks  # its table a list (the class docstring)
        if len(hit):
            cached_free = hit[self._refs[hit] == 0]  # they leave the LRU list
            self._lru.remove(cached_free)
            self.num_cached_free -= len(cached_free)
            self._hit_off += len(cached_free)
            if not listed:  # (a list's blocks are not counted)
                self._refs[hit] += 1
        if listed:  # a list, no buffer
            request.block_ids, request.block_table = None, hit.tolist()
        else:
            request.block_ids = hit  # its buffer, holding the hit blocks (grown below)
            request.block_table = hit
        request.num_computed = len(hit) * self.block_size
        request.num_hashed_blocks = len(hit)
        if request.num_preemptions == 0:
            request.cached_tokens = min(request.num_computed, request.prompt_tokens)
        self.grow(request, num_tokens)

    # ---- growth, registration, release ---------------------------------------------------------------------
    def grow(self, request: Request, num_tokens: int) -> None:
        """Extend the table with never-cached free blocks first, then the least recently freed cached ones."""
        table, recycled = request.block_table, self._recycled
        start = len(table)
        need = -(-num_tokens // self.block_size) - start
        if need <= 0:
            return
        if need == 1 and (recycled or self.num_cached_free or self._next < self.num_blocks):  # a decode's next block
            b = self._one_block()
            ids = request.block_ids
            if ids is None and self.skip_no_reuse and not request.num_shared_blocks:  # a list (``admit``): uncounted
                table.append(b)
                return
            self._refs[b] = 1
            if ids is None or len(ids) <= start:
                ids = self._ids(request, start + 1)
            ids[start] = b
            request.block_table = ids[:start + 1]
            return
        if need > self.num_free:
            raise KVCacheError(f"request {request.request_id} needs {need} blocks, only {self.num_free} free")
        if request.block_ids is None and self.skip_no_reuse and not request.num_shared_blocks:  # a list: the blocks in
            table.extend(self.take_blocks(need)[0])  # the order a buffer takes them (not counted)
            return
        refs = self._refs
        ids = self._ids(request, start + need)
        take = min(need, len(recycled))
        if take:
            ids[start:start + take] = recycled[-1:-take - 1:-1]
            del recycled[-take:]
            refs[ids[start:start + take]] = 1
        fresh = min(need - take, self.num_blocks - self._next)
        if fresh:
            ids[start + take:start + take + fresh] = np.arange(self._next, self._next + fresh)
            refs[self._next:self._next + fresh] = 1
            self._next += fresh
        if need - take - fresh:
            evicted = self._evict(need - take - fresh)
            refs[evicted] = 1
            ids[start + take + fresh:start + need] = evicted
        request.block_table = ids[:start + need]

    def _ids(self, request: Request, size: int) -> np.ndarray:
        """The request's block-id buffer (its table is a view of it), with room for ``size`` blocks."""
        ids = request.block_ids
        if ids is None or len(ids) < size:
            n = len(request.block_table)
            grown = np.empty(max(size, 2 * n, self.blocks_for(request.max_tokens) + 1), np.int64)
            if n:
                grown[:n] = ids[:n]
            ids = request.block_ids = grown
        return ids

    def appends_blocks(self, requests: list[Request]) -> bool:
        """Whether ``add_block_each`` appends ``take_blocks``' blocks to each of ``requests``' tables: all are lists
        (they share nothing, ``skip_no_reuse``; uncounted)."""
        if not self.skip_no_reuse:
            return False
        for r in requests:
            if r.block_ids is not None:
                return False
        return True

    def take_blocks(self, n: int) -> tuple[list[int], int]:
        """The next ``n`` free blocks, in the order ``n`` one-block grows take them (``_one_block``: never-cached
        first, then the least recently freed cached ones, keys forgotten), and how many were never cached (they
        come first); unreferenced: for tables that are lists."""
        plain = min(n, len(self._recycled) + self.num_blocks - self._next)  # never cached: the base class's order
        new = super().take_blocks(plain)[0]
        rest = n - plain
        if rest > 8:
            front, keyed = self._take(rest)
            new += front + keyed.tolist()
        else:  # a few: one at a time (numpy's per-call cost is more than theirs)
            new += [self._one_block() for _ in range(rest)]
        return new, plain

    def add_block_each(self, requests: list[Request]) -> None:
        """``grow`` by one block for each of ``requests``, in order (a decode stretch's step), without a call each
        for tables that are lists (``admit``)."""
        if len(requests) > self.num_free:
            raise KVCacheError(f"{len(requests)} requests need a block each, only {self.num_free} free")
        bs, lists, one = self.block_size, self.skip_no_reuse, self._one_block
        for r in requests:
            if r.block_ids is not None or not lists:
                self.grow(r, (len(r.block_table) + 1) * bs)
            else:
                r.block_table.append(one())

    def _one_block(self) -> int:
        """A free block, never-cached first, else the least recently freed cached one (``_evict`` for one, without
        numpy calls: a decode's block, the hot path); the caller counts its reference where it does."""
        if self._recycled:
            b = self._recycled.pop()
        elif self._next < self.num_blocks:
            b = self._next
            self._next += 1
        else:
            b = self._lru.pop_one()
            self.num_cached_free -= 1
            if b < 0:  # listed without a key (``_anonymous``)
                b = ~b
            else:
                self._key[b] = NO_KEY  # its index entry goes stale
        return b

    @staticmethod
    def _ids_of(request: Request) -> np.ndarray:
        """The request's block ids as an array: its buffer (its table's first entries), or its list's copy."""
        ids = request.block_ids
        return ids if ids is not None else np.array(request.block_table, dtype=np.int64)

    def _take(self, n: int) -> tuple[list[int], np.ndarray]:
        """The ``n`` least recently freed cached blocks, keys forgotten: (the LRU list's anonymous front, a list, with
        no key to forget and no numpy round trip; the rest)."""
        front, rest = self._lru.take(n)
        self.num_cached_free -= n
        if len(rest):
            rest = decode(rest)
            self._key[rest] = NO_KEY  # their index entries go stale
        return front, rest

    def _evict(self, n: int) -> np.ndarray:
        """The ``n`` least recently freed cached blocks, their keys forgotten."""
        front, blocks = self._take(n)
        return np.concatenate((np.array(front, dtype=np.int64), blocks)) if front else blocks

    def notes_computed(self, request: Request) -> bool:
        """Whether ``on_computed`` would note ``request`` (it has shared blocks not yet registered): for requests
        that share nothing it does nothing, and a decode stretch need not call it."""
        return request.num_hashed_blocks < request.num_shared_blocks and request.prefix_keys is not None

    def on_computed(self, request: Request) -> None:
        """Note that ``request`` has newly full, computed blocks: shared ones are registered when a lookup could
        find them (``_holder``) or it is released, all of them at once (most requests compute several chunks
        in between); its own ones when it is released, since only it can hit them and only after that."""
        if request.num_hashed_blocks < request.num_shared_blocks and request.prefix_keys is not None:
            self._dirty[request] = None

    def _flush(self, through: Request | None = None) -> None:
        """Register the noted requests' newly full blocks in the order noted: those up to ``through``, or all.
        The order decides twins (``_register``), so a request never registers before one noted earlier."""
        for r in list(self._dirty):
            self._register(r)
            del self._dirty[r]
            if r is through:
                return

    def _register(self, request: Request) -> None:
        """Register the request's blocks that are full and computed (a later request can hit them).

        Shared keys go into the index, unless a twin (another request computing the same block at the same
        time, neither having found the other's) registered it first and still holds it: the first registered
        keeps the key, the later one stays uncached. Registration is deferred, in the order requests were
        noted (``on_computed``; a request keeps its place until registered), so that is usually but not always
        the one computed first (vLLM v1 keeps both findable and hits the first computed). Its own keys go only
        onto their blocks (only it can hit them).
        """
        runs = request.prefix_keys
        done = min(request.num_key_blocks, request.num_computed // self.block_size)
        first = request.num_hashed_blocks
        if done <= first:
            return
        table, shared = request.block_table, request.num_shared_blocks
        cut = min(max(first, shared), done)  # [first, cut) shared, [cut, done) its own
        if done == first + 1:  # one block filled (a decode, a small chunk): no numpy work
            if cut == first:
                self._key[table[first]] = own_key(request.index, first)
            elif self._index.add_one(int(runs.keys[first]), table[first]):
                self._key[table[first]] = runs.keys[first]
            else:
                self._twinned.add(request)
        else:
            if cut > first:
                blocks = self._ids_of(request)[first:cut]
                added = self._index.add(runs, first, cut, blocks)
                if added is None:
                    self._key[blocks] = runs.keys[first:cut]
                else:  # twins hold some: those blocks stay uncached
                    self._key[blocks[added]] = runs.keys[first:cut][added]
                    self._twinned.add(request)
            if done > cut:
                self._key[self._ids_of(request)[cut:done]] = own_keys(request.index, cut, done)
        request.num_hashed_blocks = done

    @staticmethod
    def _anonymous(request: Request) -> bool:
        """Whether ``request`` is finished, was looked up here, and shares no key: only it could ever hit its blocks
        (by its own keys, after a preemption), so ``free`` keeps them cached (counted, evicted in LRU order among
        the others) without keys (``LRUList``'s anonymous blocks), and since nobody else can hold them, their
        references all drop to 0."""
        return request.status is Status.FINISHED and not request.num_shared_blocks and request.prefix_keys is not None

    def free(self, request: Request) -> None:
        """Drop ``request``'s references, tail first: cached blocks join the LRU list, the rest are recycled."""
        table = request.block_table
        if request in self._dirty:  # the requests noted before it first, in the order they were noted (twins)
            self._flush(request)
        anonymous = self.skip_no_reuse and type(table) is list and self._anonymous(request)
        if request.prefix_keys is not None and not anonymous:  # its own blocks too
            self._register(request)
        if len(table) and anonymous:  # it alone held them (``_anonymous``): its full computed ones stay cached, keyless
            if request.num_hashed_blocks:  # own blocks it hit again after a preemption: their keys go too
                self._key[table[:request.num_hashed_blocks]] = NO_KEY
            done = max(request.num_hashed_blocks, min(request.num_key_blocks, request.num_computed // self.block_size))
            rev = table[::-1]  # tail first (a list: its table is one, ``admit``)
            self._lru.push(rev[len(table) - done:], anonymous=True)
            self._recycled.extend(rev[:len(table) - done])
            self.num_cached_free += done
            self._listed += done
        elif len(table):
            uncounted = type(table) is list and self.skip_no_reuse  # it alone holds them (the class docstring)
            idx = np.array(table[::-1], dtype=np.int64) if uncounted else self._ids_of(request)[len(table) - 1::-1]
            shared = False  # others hold some, or twins left some uncached
            if not uncounted:
                self._refs[idx] = left = self._refs[idx] - 1
                shared = bool(np.count_nonzero(left)) or request in self._twinned
            if shared:
                self._twinned.discard(request)
                released = idx[left == 0]  # blocks another request holds stay put
                cached = self._key[released] != NO_KEY
                keyed, unkeyed = released[cached], released[~cached]
            else:  # its first num_hashed_blocks hold keys (registered or hit), the rest none: the tail of idx
                cut = len(table) - request.num_hashed_blocks
                keyed, unkeyed = idx[cut:], idx[:cut]
            self._lru.push(keyed)
            if len(unkeyed):
                self._recycled.extend(unkeyed.tolist())
            self.num_cached_free += len(keyed)
            self._listed += len(keyed)
        # a preempted request finds its own blocks again where this table put them (its keys are in no dictionary)
        request.last_blocks = table if request.status is not Status.FINISHED else None
        request.block_table = []
        request.block_ids = None
        request.num_hashed_blocks = 0
        request.prefix_lookup = None
        if request.status is Status.FINISHED:
            request.prefix_keys = None  # its keys are needed only while it runs
