"""FlexAttention over a part's packed keys, with a block mask built from block structure and bucketed shapes.

Queries and keys are packed back to back per sequence (a document-causal mask). The block mask
is derived from each 128-row tile's range of sequence ids and positions, so building it costs
(query tiles x key tiles), not (queries x keys) as evaluating the mask at every pair would (89 ms
at 512 x 4096 on a CPU, 2.5e10 elements for a large warm-up batch). Queries and keys are padded to
multiples of the tile (padding never matches a sequence), so the compiled kernel sees no size-1 or
odd dimensions and compiles a handful of times, not once per batch; the recompile limit is raised
deliberately and hitting it fails on CUDA instead of silently running the unfused reference, which
materialises [heads, queries, keys] scores.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from engine.attention import AttnPart, packed_kv_index

#: FlexAttention's tile (queries and keys per block-mask block)
TILE = 128
#: compiles allowed per process: the shapes of one run fall into a few (tokens, keys) tile buckets
RECOMPILE_LIMIT = 64


def padded(n: int, tile: int = TILE) -> int:
    """``n`` rounded up to a multiple of ``tile`` (at least one tile)."""
    return max(tile, -(-n // tile) * tile)


def _tile_ranges(x: torch.Tensor, n_pad: int, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile of ``x`` (padded to ``n_pad`` by repeating its last value): (min, max)."""
    if x.numel() < n_pad:
        x = torch.cat([x, x[-1:].expand(n_pad - x.numel())])
    t = x.view(-1, tile)
    return t.min(dim=1).values, t.max(dim=1).values


def block_structure(q_seq: torch.Tensor, q_pos: torch.Tensor, kv_seq: torch.Tensor, kv_pos: torch.Tensor,
                    q_pad: int, kv_pad: int, tile: int = TILE) -> tuple[torch.Tensor, torch.Tensor]:
    """(partial, full) boolean ``[query tiles, key tiles]`` of the document-causal mask on packed sequences.

    A tile pair can hold a visible (query, key) only if their sequence-id ranges overlap, and unless both
    tiles lie in one sequence with every key after every query; it is full when both lie in one sequence,
    every key precedes every query and the key tile has no padding. Sequences are packed in order, so
    these ranges are exact for single-sequence tiles and conservative (partial) otherwise.
    """
    qs_lo, qs_hi = _tile_ranges(q_seq, q_pad, tile)
    qp_lo, qp_hi = _tile_ranges(q_pos, q_pad, tile)
    ks_lo, ks_hi = _tile_ranges(kv_seq, kv_pad, tile)
    kp_lo, kp_hi = _tile_ranges(kv_pos, kv_pad, tile)
    overlap = (qs_lo[:, None] <= ks_hi[None, :]) & (ks_lo[None, :] <= qs_hi[:, None])
    one_seq = (qs_lo == qs_hi)[:, None] & (ks_lo == ks_hi)[None, :] & (qs_lo[:, None] == ks_lo[None, :])
    future = one_seq & (kp_lo[None, :] > qp_hi[:, None])
    real_keys = torch.arange(kv_pad // tile, device=kv_seq.device) < kv_seq.numel() // tile
    full = one_seq & (kp_hi[None, :] <= qp_lo[:, None]) & real_keys[None, :]
    visible = overlap & ~future
    return visible & ~full, full


def _as_kv_blocks(present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """BlockMask's (num_blocks ``[1, 1, Q]``, indices ``[1, 1, Q, K]``) of a boolean tile matrix."""
    counts = present.sum(dim=1, dtype=torch.int32)
    order = torch.argsort(present.to(torch.int8), dim=1, descending=True, stable=True).to(torch.int32)
    return counts[None, None], order[None, None]


def document_block_mask(q_seq: torch.Tensor, q_pos: torch.Tensor, kv_seq: torch.Tensor, kv_pos: torch.Tensor,
                        q_pad: int, kv_pad: int) -> Any:
    """The BlockMask of packed sequences, queries and keys padded to ``q_pad`` and ``kv_pad`` (padding: no match)."""
    from torch.nn.attention.flex_attention import BlockMask

    dev = q_seq.device
    qs = torch.full((q_pad,), -1, dtype=torch.int64, device=dev)
    qs[:q_seq.numel()] = q_seq
    qp = torch.zeros(q_pad, dtype=torch.int64, device=dev)
    qp[:q_pos.numel()] = q_pos
    ks = torch.full((kv_pad,), -2, dtype=torch.int64, device=dev)
    ks[:kv_seq.numel()] = kv_seq
    kp = torch.zeros(kv_pad, dtype=torch.int64, device=dev)
    kp[:kv_pos.numel()] = kv_pos

    def mask_mod(b: Any, h: Any, qi: Any, ki: Any) -> Any:
        return (qs[qi] == ks[ki]) & (kp[ki] <= qp[qi])

    partial, full = block_structure(q_seq, q_pos, kv_seq, kv_pos, q_pad, kv_pad)
    n, idx = _as_kv_blocks(partial)
    fn, fidx = _as_kv_blocks(full)
    return BlockMask.from_kv_blocks(n, idx, fn, fidx, BLOCK_SIZE=TILE, mask_mod=mask_mod, seq_lengths=(q_pad, kv_pad))


def _raise_recompile_limit() -> None:
    """Allow RECOMPILE_LIMIT compiles and make hitting the limit an error instead of a silent eager fallback."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), RECOMPILE_LIMIT))
    for name in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit"):
        if hasattr(cfg, name):
            setattr(cfg, name, True)


class FlexBackend:
    """FlexAttention over keys gathered back to back; block mask from block structure; padded tile shapes.

    ``compile``: None compiles on CUDA (the fused kernel) and runs eagerly elsewhere (an unfused
    reference); ``compile_backend`` is torch.compile's backend (tests count compiles with a counter).
    """

    name = "flex"

    def __init__(self, device: torch.device | str, *, compile: bool | None = None,
                 compile_backend: Any = "inductor") -> None:
        from torch.nn.attention.flex_attention import flex_attention
        self.device = torch.device(device)
        self.compiled = self.device.type == "cuda" if compile is None else compile
        if self.compiled:
            _raise_recompile_limit()
            self._flex = torch.compile(flex_attention, dynamic=True, backend=compile_backend)
        else:
            self._flex = flex_attention

    def _block_mask(self, part: AttnPart) -> tuple[Any, torch.Tensor, int, int]:
        st = part.cache.get("flex")
        if st is None:
            slots, kv_seq, kv_pos = packed_kv_index(part)
            q_pad, kv_pad = padded(part.num_tokens), padded(kv_seq.numel())
            bm = document_block_mask(part.seq_idx, part.positions, kv_seq, kv_pos, q_pad, kv_pad)
            st = part.cache["flex"] = (bm, slots, q_pad, kv_pad)
        return st

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               part: AttnPart, scale: float) -> torch.Tensor:
        """One flex_attention call over the part's packed queries and keys, padded to whole tiles."""
        bm, slots, q_pad, kv_pad = self._block_mask(part)
        hk, d = k_cache.shape[-2:]
        t, h = q.shape[0], q.shape[1]
        qq = q.new_zeros(1, h, q_pad, d)
        qq[0, :, :t] = q.transpose(0, 1)
        k = k_cache.new_zeros(1, hk, kv_pad, d)
        v = v_cache.new_zeros(1, hk, kv_pad, d)
        k[0, :, :slots.numel()] = k_cache.view(-1, hk, d)[slots].transpose(0, 1)
        v[0, :, :slots.numel()] = v_cache.view(-1, hk, d)[slots].transpose(0, 1)
        if self.compiled:
            out = self._flex(qq, k, v, block_mask=bm, scale=scale, enable_gqa=h != hk)
        else:
            with warnings.catch_warnings():  # eager on purpose: the reference, not a fallback
                warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
                out = self._flex(qq, k, v, block_mask=bm, scale=scale, enable_gqa=h != hk)
        return out[0, :, :t].transpose(0, 1)
