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
    """Free list of block ids plus per-request block tables (kept on the request)."""

    def __init__(self, num_blocks: int, block_size: int = 16, watermark: float = 0.01) -> None:
        if num_blocks <= 0:
            raise ValueError(f"KV cache needs at least one block, got {num_blocks}")
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.watermark_blocks = int(watermark * num_blocks)
        # pop() from the end hands out the lowest ids first
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def fits_ever(self, num_tokens: int) -> bool:
        """Whether ``num_tokens`` can be admitted into an otherwise empty cache."""
        return self.blocks_for(num_tokens) <= self.num_blocks - self.watermark_blocks

    def can_admit(self, num_tokens: int, use_watermark: bool = True) -> bool:
        """Admission check: free blocks minus the new blocks stay at or above the watermark."""
        floor = self.watermark_blocks if use_watermark else 0
        return len(self._free) - self.blocks_for(num_tokens) >= floor

    def can_grow(self, request: Request, num_tokens: int) -> bool:
        """Whether ``request`` can hold ``num_tokens`` tokens with the free blocks left (no watermark)."""
        return self.blocks_for(num_tokens) - len(request.block_table) <= len(self._free)

    def grow(self, request: Request, num_tokens: int) -> None:
        """Extend ``request``'s block table to hold ``num_tokens`` tokens."""
        need = self.blocks_for(num_tokens) - len(request.block_table)
        if need <= 0:
            return
        if need > len(self._free):
            raise KVCacheError(
                f"request {request.request_id} needs {need} blocks, only {len(self._free)} free")
        free = self._free
        request.block_table.extend(free.pop() for _ in range(need))

    def free(self, request: Request) -> None:
        """Return all of ``request``'s blocks."""
        if request.block_table:
            self._free.extend(reversed(request.block_table))
            request.block_table = []
