"""Paged KV cache on the device, addressed by the block ids that ``sim.kv.block_manager.BlockManager`` hands out.

Layout: one tensor ``[num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim]``;
layer ``l``'s K and V caches are views ``[num_blocks, block_size, num_kv_heads, head_dim]``
(the paged layout flash-attn's ``block_table`` path expects). Token position ``p`` of a
request lives in slot ``block_table[p // block_size] * block_size + p % block_size``.
"""

from __future__ import annotations

import torch

from sim.catalog.models import ModelSpec

DEFAULT_BLOCK_SIZE = 16


def bytes_per_block(spec: ModelSpec, block_size: int, dtype: torch.dtype) -> int:
    """Device bytes one KV block takes over all layers (K and V); sizes the cache."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * spec.num_layers * block_size * spec.num_kv_heads * spec.head_dim * elem


def blocks_from_free_memory(spec: ModelSpec, block_size: int, dtype: torch.dtype,
                            device: torch.device, fraction: float = 0.9) -> int:
    """KV blocks that fit in ``fraction`` of the device's free memory (call after loading weights)."""
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("free-memory sizing needs a CUDA device; pass kv_blocks explicitly on CPU")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"memory fraction must be in (0, 1], got {fraction}")
    free, _total = torch.cuda.mem_get_info(device)
    return int(free * fraction) // bytes_per_block(spec, block_size, dtype)


class PagedKVCache:
    """Per-layer K and V block tensors for one model replica on one device."""

    def __init__(self, spec: ModelSpec, num_blocks: int, block_size: int = DEFAULT_BLOCK_SIZE, *,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError(f"need positive num_blocks and block_size, got {num_blocks}, {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.num_layers = spec.num_layers
        # zeros, not empty: masked-out keys of a gathered block are multiplied by a zero
        # probability, and NaN garbage would still poison the product
        self.data = torch.zeros(spec.num_layers, 2, num_blocks, block_size, spec.num_kv_heads,
                                spec.head_dim, device=device, dtype=dtype)

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer ``i``'s (K cache, V cache), each ``[num_blocks, block_size, num_kv_heads, head_dim]``."""
        return self.data[i, 0], self.data[i, 1]

    @property
    def num_bytes(self) -> int:
        return self.data.numel() * self.data.element_size()


def store_kv(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write new tokens' K/V ``[T, kv_heads, head_dim]`` into their cache slots."""
    hk, d = k_cache.shape[-2:]
    k_cache.view(-1, hk, d).index_copy_(0, slot_mapping, k)
    v_cache.view(-1, hk, d).index_copy_(0, slot_mapping, v)


def slot_mapping(block_table: list[int], start: int, end: int, block_size: int) -> list[int]:
    """Cache slots of token positions [start, end) of a request with ``block_table``."""
    if -(-end // block_size) > len(block_table):
        raise ValueError(f"block table of {len(block_table)} blocks cannot hold {end} tokens")
    return [block_table[p // block_size] * block_size + p % block_size for p in range(start, end)]


def block_table_tensor(block_tables: list[list[int]], num_tokens: list[int], block_size: int) -> torch.Tensor:
    """Padded ``[num_seqs, max_blocks]`` int32 table (CPU) holding the blocks covering each sequence's tokens.

    Padding is block 0 (a valid id), so gathers stay in bounds; attention masks it out by position.
    """
    needed = [-(-n // block_size) for n in num_tokens]
    width = max(needed, default=0)
    out = torch.zeros(len(block_tables), max(width, 1), dtype=torch.int32)
    for s, (table, nb) in enumerate(zip(block_tables, needed)):
        if nb > len(table):
            raise ValueError(f"sequence {s}: block table of {len(table)} blocks cannot hold "
                             f"{num_tokens[s]} tokens (did the block manager grow it?)")
        if nb:
            out[s, :nb] = torch.tensor(table[:nb], dtype=torch.int32)
    return out
