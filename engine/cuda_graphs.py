"""Decode-only iterations replayed from CUDA graphs: static input buffers padded to captured shapes.

A decode batch of ``n`` requests is padded to the next captured batch size ``B`` and its
block tables to the next captured width ``W`` (``padded_width``). Padding rows decode token 0 at
position 0 into a scratch block that the block manager never hands out (the runner's
cache has one extra block). Attention is a static-shape paged gather plus a length mask,
so the whole forward pass and sampling are captured once per ``(B, W)`` and replayed.

On the CPU (``capture=False``) the same static function runs eagerly: that is how the
tests check this path without a GPU. The engine captures the shapes a run can reach during
warm-up (``capture_ahead``), so no capture lands inside a measured iteration; a shape missed
there is captured lazily and counted in ``captures`` (batches.csv's ``graph_captured``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from engine.attention import AttnMetadata, AttnPart, sdpa_gqa
from engine.ops import OPS
from sim.catalog.models import ModelSpec


def use_cuda_graphs(device_type: str, spec: ModelSpec, asked: bool | None = None) -> bool:
    """Whether the engine replays decodes from CUDA graphs: as ``asked``, by default on CUDA for models without
    MoE layers (a MoE layer sizes its expert groups on the host, which a captured graph cannot do)."""
    return device_type == "cuda" and not spec.is_moe if asked is None else asked


#: batch sizes with a graph: 1, 2, 4, then multiples of 8 (as vLLM captures)
BATCH_SIZES: tuple[int, ...] = (1, 2, 4) + tuple(range(8, 1025, 8))


def padded_batch_size(n: int, max_size: int) -> int | None:
    """The captured batch size a decode batch of ``n`` runs at, or None when ``n`` exceeds ``max_size``."""
    if n > max_size:
        return None
    return next((b for b in BATCH_SIZES if b >= n), None)


def padded_width(num_blocks: int) -> int:
    """Block-table width of the graph for sequences needing ``num_blocks`` blocks.

    The next power of two up to 16 blocks, then the next multiple of 16 (at most 256 keys
    per sequence gathered in vain, and few distinct graphs as contexts grow).
    """
    if num_blocks <= 16:
        w = 1
        while w < num_blocks:
            w *= 2
        return w
    return -(-num_blocks // 16) * 16


class StaticDecodeBackend:
    """Graph-safe paged decode attention: gather ``W`` blocks per sequence, mask keys past its length."""

    name = "static-decode"

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
               part: AttnPart, scale: float) -> torch.Tensor:
        """Queries ``[B, H, D]`` (one per sequence) over ``[B, W * block_size]`` gathered keys."""
        b = part.num_seqs
        _, bs, hk, d = k_cache.shape
        bt = part.block_tables.long()
        k = k_cache[bt].reshape(b, -1, hk, d).transpose(1, 2)
        v = v_cache[bt].reshape(b, -1, hk, d).transpose(1, 2)
        kpos = torch.arange(k.shape[2], device=q.device)
        mask = (kpos[None, :] < part.seqlens_k[:, None].long())[:, None, None, :]
        out = sdpa_gqa(q.unsqueeze(2), k, v, mask, scale)  # [B, H, 1, D]
        return out[:, :, 0]


@dataclass
class _Graph:
    """Static buffers of one captured shape, and how to run it."""

    token_ids: torch.Tensor
    positions: torch.Tensor
    slots: torch.Tensor
    block_tables: torch.Tensor
    seqlens: torch.Tensor
    logits: torch.Tensor | None = None
    sampled: torch.Tensor | None = None
    run: Callable[[], None] | None = None


class DecodeGraphs:
    """Per-(batch size, width) captured decode forward passes of one runner."""

    def __init__(self, model, kv_cache, block_size: int, scratch_block: int, *, capture: bool,
                 max_batch_size: int = 256) -> None:
        self.model, self.kv_cache, self.block_size, self.scratch_block = model, kv_cache, block_size, scratch_block
        self.capture, self.max_batch_size = capture, max_batch_size
        self.captures = 0
        self.disabled = False
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None
        self._rope = model.cos
        self._backend = StaticDecodeBackend()

    def supports(self, batch) -> bool:
        """Decode-only, small enough, and inside the rotary table the graphs were captured against."""
        items = batch.items
        if self.disabled or not items or batch.prefill_items or len(items) > self.max_batch_size:
            return False
        if self.model.cos is not self._rope:  # rotary tables were reallocated: captured graphs are stale
            self._graphs.clear()
            self._rope = self.model.cos
        return max(it.num_cached_tokens for it in items) < self.model._rope_len

    def load(self, batch, token_store: Callable) -> tuple[_Graph, int]:
        """Fill the static buffers of ``batch``'s shape (decodes, batch order), capturing it on first use."""
        items = batch.items
        n, bs = len(items), self.block_size
        size = padded_batch_size(n, self.max_batch_size)
        if size is None:
            raise ValueError(f"decode batch of {n} exceeds the largest captured batch size")
        need = max(-(-(it.num_cached_tokens + 1) // bs) for it in items)
        width = padded_width(need)
        scratch = self.scratch_block
        ids, pos = [0] * size, [0] * size
        slots, lens = [scratch * bs] * size, [1] * size
        rows = []
        for i, (r, _new, cached) in enumerate(items):  # host lists first, then one tensor each
            table = r.block_table
            nb = cached // bs + 1
            if nb > len(table):
                raise ValueError(f"request {r.request_id}: block table of {len(table)} blocks cannot hold "
                                 f"{cached + 1} tokens (did the block manager grow it?)")
            ids[i] = token_store(r)[cached]
            pos[i] = cached
            slots[i] = table[cached // bs] * bs + cached % bs
            rows.append([*table[:nb], *[scratch] * (width - nb)])  # (a list, or a numpy view with caching)
            lens[i] = cached + 1
        rows += [[scratch] * width] * (size - n)
        ids_t, pos_t = torch.tensor(ids, dtype=torch.int64), torch.tensor(pos, dtype=torch.int64)
        slots_t, lens_t = torch.tensor(slots, dtype=torch.int64), torch.tensor(lens, dtype=torch.int32)
        bt = torch.tensor(rows, dtype=torch.int32)
        g = self._graphs.get((size, width))
        fresh = g is None
        if fresh:
            g = self._make(size, width)
        for dst, src in ((g.token_ids, ids_t), (g.positions, pos_t), (g.slots, slots_t), (g.block_tables, bt),
                         (g.seqlens, lens_t)):
            dst.copy_(src, non_blocking=True)
        if fresh:
            self._try_capture(g)
        return g, n

    def capture_ahead(self, max_seqs: int, max_tokens: int) -> int:
        """Capture every (batch size, width) a decode batch of at most ``max_seqs`` requests of at most
        ``max_tokens`` tokens can need, on padding buffers (scratch block); returns the graphs captured."""
        if not self.capture or self.disabled:
            return 0
        before = self.captures
        limit = min(max_seqs, self.max_batch_size)
        sizes = [b for b in BATCH_SIZES if b < limit] + [padded_batch_size(limit, self.max_batch_size)]
        widths = sorted({padded_width(nb) for nb in range(1, -(-max_tokens // self.block_size) + 1)})
        for size in sizes:
            for width in widths:
                if (size, width) not in self._graphs and not self.disabled:
                    self._try_capture(self._make(size, width))
        return self.captures - before

    def _try_capture(self, g: _Graph) -> None:
        if not self.capture:
            return
        try:
            self._capture(g)
        except RuntimeError as e:  # the static forward still runs eagerly; later batches skip graphs
            if "out of memory" in str(e).lower():
                raise
            warnings.warn(f"CUDA graph capture failed ({str(e).splitlines()[0] if str(e) else e!r}); "
                          f"decoding eagerly from now on (--no-cuda-graphs silences this)")
            self.disabled = True

    @staticmethod
    def replay(loaded: tuple[_Graph, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a loaded graph: (logits ``[n, V]``, sampled ids ``[n]``), views valid until the next replay."""
        g, n = loaded
        g.run()
        return g.logits[:n], g.sampled[:n]

    # ------------------------------------------------------------ internals

    def _make(self, size: int, width: int) -> _Graph:
        dev = self.kv_cache.data.device
        scratch = self.scratch_block  # buffers start as padding rows: a capture writes only the scratch block
        g = _Graph(token_ids=torch.zeros(size, dtype=torch.int64, device=dev),
                   positions=torch.zeros(size, dtype=torch.int64, device=dev),
                   slots=torch.full((size,), scratch * self.block_size, dtype=torch.int64, device=dev),
                   block_tables=torch.full((size, width), scratch, dtype=torch.int32, device=dev),
                   seqlens=torch.ones(size, dtype=torch.int32, device=dev))
        ar = torch.arange(size, device=dev)
        cu = torch.arange(size + 1, dtype=torch.int32, device=dev)
        part = AttnPart(start=0, num_tokens=size, num_seqs=size, block_size=self.block_size,
                        positions=g.positions, slot_mapping=g.slots, seq_idx=ar, q_offset=torch.zeros_like(ar),
                        block_tables=g.block_tables, seqlens_k=g.seqlens, cu_seqlens_q=cu, cu_seqlens_k=cu,
                        max_seqlen_q=1, max_seqlen_k=width * self.block_size)
        attn = AttnMetadata(prefill=None, decode=part, backend=self._backend, scale=self.model.scale)

        def forward() -> None:
            logits = self.model.forward(g.token_ids, g.positions, attn, self.kv_cache, ar)
            g.logits, g.sampled = logits, OPS["sampling"](logits)

        g.run = forward
        self._graphs[(size, width)] = g
        return g

    def _capture(self, g: _Graph) -> None:
        """Warm up on the capture stream, then capture ``g``'s forward into a CUDA graph sharing one memory pool."""
        forward = g.run
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            forward()  # writes the same K/V the replay writes: the buffers already hold this batch (or padding)
        side.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, stream=side):
            forward()
        torch.cuda.current_stream().wait_stream(side)
        self._pool = graph.pool()
        g.run = graph.replay
        self.captures += 1
