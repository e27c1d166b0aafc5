"""Paged KV-cache block manager, shared by the simulator and the real engine.

Blocks hold ``block_size`` tokens. Admission keeps ``watermark`` (a fraction of
all blocks) free so running decodes can still grow, as vLLM does; a running
request asks for one more block only when it crosses a block boundary. Real
block ids are handed out so the engine can build block tables and slot
mappings from the same object.
"""

from __future__ import annotations

from sim.request import Request


class KVCacheError(RuntimeError):
    """Raised when a caller asks for blocks it was told it could not have."""


def blocks_for(num_tokens: int, block_size: int) -> int:
    """Blocks needed to hold ``num_tokens`` tokens."""
    return -(-num_tokens // block_size)


class BlockManager:
    """Block ids for per-request block tables (kept on the request); memory grows with blocks in use, not capacity.

    Ids never handed out are a counter (``_next``: all ids at or above it are free); returned ids go on a
    stack that is reused first, so the lowest ids are handed out first from a fresh cache and a freed
    request's blocks come back in its table's order (what a full free list popped from the end gave).
    """

    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01) -> None:
        if num_blocks <= 0:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = int(watermark * num_blocks)
        self._next = 0                   # ids >= _next were never handed out
        self._recycled: list[int] = []   # returned ids; pop() reuses the last returned first

    @property
    def num_free(self) -> int:
        return self.num_blocks - self._next + len(self._recycled)

    @property
    def num_used(self) -> int:
        return self._next - len(self._recycled)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def fits_ever(self, num_tokens: int) -> bool:
        """Whether ``num_tokens`` can be admitted into an otherwise empty cache."""
        return self.blocks_for(num_tokens) <= self.num_blocks - self.watermark_blocks

    def can_admit(self, num_tokens: int, use_watermark: bool = True, request: Request | None = None) -> bool:
        """Admission check: free blocks minus the new blocks stay at or above the watermark."""
        floor = self.watermark_blocks if use_watermark else 0
        return self.num_free - self.blocks_for(num_tokens) >= floor

    # ---- prefix caching hooks: no cache here (sim.kv.prefix_cache.CachingBlockManager has one) ----------------
    caching = False

    def prefix_hit(self, request: Request) -> int:
        """Prompt tokens of ``request`` whose KV the cache already holds (0: this manager caches nothing)."""
        return 0

    def admit(self, request: Request, num_tokens: int) -> None:
        """Blocks for a newly admitted ``request`` to hold ``num_tokens`` tokens (a cache reuses what it holds)."""
        self.grow(request, num_tokens)

    def on_computed(self, request: Request) -> None:
        """``request``'s KV advanced (a cache registers its newly full blocks)."""

    def can_grow(self, request: Request, num_tokens: int) -> bool:
        """Whether ``request`` can hold ``num_tokens`` tokens with the free blocks left (no watermark)."""
        return self.blocks_for(num_tokens) - len(request.block_table) <= self.num_free

    def grow(self, request: Request, num_tokens: int) -> None:
        """Extend ``request``'s block table to hold ``num_tokens`` tokens."""
        need = self.blocks_for(num_tokens) - len(request.block_table)
        if need <= 0:
            return
        free = self.num_free
        if need > free:
            raise KVCacheError(f"request {request.request_id} needs {need} blocks, only {free} free")
        request.block_table.extend(self.take_blocks(need)[0])

    def appends_blocks(self, requests: list[Request]) -> bool:
        """Whether ``add_block_each`` gives each of ``requests`` the next of ``take_blocks``' blocks by appending it
        to its table (so a stretch may take a run of steps' blocks at once)."""
        return type(self).grow is BlockManager.grow

    def take_blocks(self, n: int) -> tuple[list[int], int]:
        """The next ``n`` free blocks, in the order ``n`` one-block grows hand them out, and how many of them (the
        first ones) were never cached: all of them here. The caller puts them in tables (``appends_blocks``)."""
        recycled = self._recycled
        reuse = min(n, len(recycled))
        new = recycled[-1:-reuse - 1:-1]  # the last returned first, as pop() one at a time
        del recycled[len(recycled) - reuse:]
        new += range(self._next, self._next + n - reuse)
        self._next += n - reuse
        return new, n

    def add_block_each(self, requests: list[Request]) -> None:
        """One more block for each of ``requests``, in order: what ``grow`` to one block more each hands out (a
        manager that grows otherwise, a cache's, grows each)."""
        if type(self).grow is not BlockManager.grow:
            bs = self.block_size
            for r in requests:
                self.grow(r, (len(r.block_table) + 1) * bs)
            return
        if len(requests) > self.num_free:
            raise KVCacheError(f"{len(requests)} requests need a block each, only {self.num_free} free")
        for r, b in zip(requests, self.take_blocks(len(requests))[0]):
            r.block_table.append(b)

    def free(self, request: Request) -> None:
        """Return all of ``request``'s blocks."""
        if request.block_table:
            self._recycled.extend(reversed(request.block_table))
            request.block_table = []
