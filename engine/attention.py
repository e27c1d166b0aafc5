"""Attention over the paged KV cache for a mixed batch, with interchangeable backends.

A batch's tokens are laid out flat, prefill items first, then decodes; each group is
an ``AttnPart``. An item with ``new`` tokens over ``cached`` context has queries at
absolute positions [cached, cached+new) that see keys [0, cached+new) of its own
sequence; masks come from these positions only. Metadata is built once per forward
pass and shared by all layers (backends cache derived masks/indices in ``part.cache``).

Backends: ``sdpa`` (reference: gather K/V, explicit mask, torch SDPA), ``flex``
(FlexAttention with a block mask from sequence ids and positions; eager on CPU,
compiled on CUDA) and ``flash`` (flash-attn varlen, only when it imports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F

from engine.kv_cache import block_table_tensor


@dataclass
class AttnPart:
    """Flat metadata of one group of batch items (prefill chunks or decodes) in one forward pass."""

    start: int  # first token of this part in the batch's flat token order
    num_tokens: int
    num_seqs: int
    block_size: int
    positions: torch.Tensor  # [T] int64 absolute positions of the new tokens
    slot_mapping: torch.Tensor  # [T] int64 cache slot for each new token's K/V
    seq_idx: torch.Tensor  # [T] int64 sequence (within the part) of each token
    q_offset: torch.Tensor  # [T] int64 index of each token among its sequence's new tokens
    block_tables: torch.Tensor  # [S, max_blocks] int32, padded with block 0
    seqlens_k: torch.Tensor  # [S] int32 keys each sequence attends to (cached + new)
    cu_seqlens_q: torch.Tensor  # [S+1] int32
    cu_seqlens_k: torch.Tensor  # [S+1] int32
    max_seqlen_q: int
    max_seqlen_k: int
    num_keys: int = -1  # keys of all sequences together (sum of seqlens_k), known on the host; -1: unknown
    cache: dict[str, Any] = field(default_factory=dict)  # backend state shared by all layers


class AttentionBackend(Protocol):
    name: str

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               part: AttnPart, scale: float) -> torch.Tensor:
        """Queries ``[T, H, D]`` of ``part`` over its sequences' cached keys -> ``[T, H, D]``."""
        ...


@dataclass
class AttnMetadata:
    """Everything attention needs for one forward pass: both parts, the backend, the softmax scale."""

    prefill: AttnPart | None
    decode: AttnPart | None
    backend: AttentionBackend
    scale: float

    @property
    def num_tokens(self) -> int:
        return sum(p.num_tokens for p in (self.prefill, self.decode) if p is not None)


def build_part(seqs: list[tuple[list[int], int, int]], start: int, block_size: int,
               device: torch.device | str) -> AttnPart:
    """Metadata for sequences given as (block_table, num_cached, num_new), tokens starting at ``start``."""
    if not seqs:
        raise ValueError("an attention part needs at least one sequence")
    q_lens = torch.tensor([new for _, _, new in seqs], dtype=torch.int64)
    if bool((q_lens <= 0).any()):
        raise ValueError("every batch item must have at least one new token")
    cached = torch.tensor([c for _, c, _ in seqs], dtype=torch.int64)
    k_lens = cached + q_lens
    bt = block_table_tensor([t for t, _, _ in seqs], k_lens.tolist(), block_size)
    n = len(seqs)
    seq_idx = torch.repeat_interleave(torch.arange(n), q_lens)
    cu_q = torch.zeros(n + 1, dtype=torch.int64)
    cu_q[1:] = torch.cumsum(q_lens, 0)
    cu_k = torch.zeros(n + 1, dtype=torch.int64)
    cu_k[1:] = torch.cumsum(k_lens, 0)
    q_offset = torch.arange(int(cu_q[-1])) - cu_q[seq_idx]
    positions = cached[seq_idx] + q_offset
    slots = bt[seq_idx, positions // block_size].long() * block_size + positions % block_size
    dev = torch.device(device)
    return AttnPart(
        start=start, num_tokens=int(cu_q[-1]), num_seqs=n, block_size=block_size,
        positions=positions.to(dev), slot_mapping=slots.to(dev), seq_idx=seq_idx.to(dev),
        q_offset=q_offset.to(dev), block_tables=bt.to(dev), seqlens_k=k_lens.to(torch.int32).to(dev),
        cu_seqlens_q=cu_q.to(torch.int32).to(dev), cu_seqlens_k=cu_k.to(torch.int32).to(dev),
        max_seqlen_q=int(q_lens.max()), max_seqlen_k=int(k_lens.max()), num_keys=int(cu_k[-1]),
    )


def build_metadata(prefill: list[tuple[list[int], int, int]], decode: list[tuple[list[int], int, int]],
                   block_size: int, device: torch.device | str, backend: AttentionBackend,
                   scale: float) -> AttnMetadata:
    """Metadata for a batch laid out prefill sequences first, then decodes; each (block_table, cached, new)."""
    pre = build_part(prefill, 0, block_size, device) if prefill else None
    dec = build_part(decode, pre.num_tokens if pre else 0, block_size, device) if decode else None
    return AttnMetadata(prefill=pre, decode=dec, backend=backend, scale=scale)


def packed_kv_index(part: AttnPart) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cache slot, sequence id, position) of every key of every sequence, packed back to back."""
    st = part.cache.get("packed")
    if st is None:
        k_lens = part.seqlens_k.long()
        total = part.num_keys if part.num_keys >= 0 else int(k_lens.sum())
        # output_size known on the host: no device-to-host sync to size the result
        kv_seq = torch.repeat_interleave(torch.arange(part.num_seqs, device=k_lens.device), k_lens,
                                         output_size=total)
        kv_pos = torch.arange(kv_seq.numel(), device=k_lens.device) - part.cu_seqlens_k[:-1].long()[kv_seq]
        bs = part.block_size
        slots = part.block_tables[kv_seq, kv_pos // bs].long() * bs + kv_pos % bs
        st = part.cache["packed"] = (slots, kv_seq, kv_pos)
    return st


# ---------------------------------------------------------------- sdpa (reference)

_SDPA_GQA: bool | None = None  # whether this torch's SDPA takes enable_gqa


def sdpa_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
             scale: float) -> torch.Tensor:
    """SDPA on ``[B, H, L, D]`` tensors with grouped kv heads (enable_gqa, or repeated heads on old torch)."""
    global _SDPA_GQA
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and _SDPA_GQA is not False:
        try:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=True)
            _SDPA_GQA = True
            return out
        except TypeError:
            _SDPA_GQA = False
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
        v = v.repeat_interleave(groups, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class SdpaBackend:
    """Reference: gather each sequence's K/V into a padded batch, mask by position, one SDPA call."""

    name = "sdpa"

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               part: AttnPart, scale: float) -> torch.Tensor:
        """Padded batched attention: ``[S, H, max_q, D]`` queries over ``[S, Hkv, max_k, D]`` keys."""
        s, mq, mk = part.num_seqs, part.max_seqlen_q, part.max_seqlen_k
        st = part.cache.get("sdpa")
        if st is None:
            bs = part.block_size
            nb = -(-mk // bs)
            bt = part.block_tables[:, :nb].long()
            # padded query rows get position 0 so they see key 0 and never produce NaN
            qpos = torch.zeros(s, mq, dtype=torch.int64, device=q.device)
            qpos[part.seq_idx, part.q_offset] = part.positions
            kpos = torch.arange(mk, device=q.device)
            mask = (kpos[None, None, :] <= qpos[:, :, None]).unsqueeze(1)  # [S, 1, mq, mk]
            st = part.cache["sdpa"] = (bt, mask)
        bt, mask = st
        _, bs, hk, d = k_cache.shape
        k = k_cache[bt].reshape(s, -1, hk, d)[:, :mk].transpose(1, 2)
        v = v_cache[bt].reshape(s, -1, hk, d)[:, :mk].transpose(1, 2)
        qp = q.new_zeros(s, mq, q.shape[1], d)
        qp[part.seq_idx, part.q_offset] = q
        out = sdpa_gqa(qp.transpose(1, 2), k, v, mask, scale)  # [S, H, mq, D]
        return out.transpose(1, 2)[part.seq_idx, part.q_offset]


def flex_available() -> bool:
    """Whether this torch has FlexAttention (engine.flex_attention)."""
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


# ---------------------------------------------------------------- flash (optional)

def flash_available() -> bool:
    """Whether flash-attn imports (never on the project's build machines)."""
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


class FlashBackend:
    """flash_attn_varlen_func; paged via block_table when the block size allows it, else gathered keys."""

    name = "flash"

    def __init__(self) -> None:
        from flash_attn import flash_attn_varlen_func
        self._fn = flash_attn_varlen_func

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               part: AttnPart, scale: float) -> torch.Tensor:
        """Causal varlen attention; flash aligns the causal mask bottom-right, as chunks need."""
        common = dict(cu_seqlens_q=part.cu_seqlens_q, cu_seqlens_k=part.cu_seqlens_k,
                      max_seqlen_q=part.max_seqlen_q, max_seqlen_k=part.max_seqlen_k,
                      softmax_scale=scale, causal=True)
        if part.block_size % 256 == 0:  # upstream flash-attn's paged path needs 256-token pages
            return self._fn(q, k_cache, v_cache, block_table=part.block_tables, **common)
        slots, _, _ = packed_kv_index(part)
        hk, d = k_cache.shape[-2:]
        return self._fn(q, k_cache.view(-1, hk, d)[slots], v_cache.view(-1, hk, d)[slots], **common)
