"""Executes one scheduled ``Batch`` as a single forward pass and samples the next token of finished items.

The runner owns the model, the device KV cache and each request's token ids (a
reproducible, per-request seeded prompt plus the ids it sampled). It never changes a
``Request``'s counters: the shared scheduler advances them after the batch.

Token ids follow the trace's reuse fields (``sim.kv.prefix_keys``), so that automatic prefix caching is
exact: a KV block another request computed holds the very tokens the hitting request would have
computed there. Every full block the trace declares shared (its key differs from the request's own
key) holds ids drawn from a generator seeded by (seed, key), identical in every request with that
key; that includes blocks the answer fills (a conversation's next turn resends it), where the
runner teacher-forces the key's ids instead of the sampled ones (``ModelRunner.execute``).
"""

from __future__ import annotations

import functools
import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from engine.attention import AttnMetadata, build_metadata
from engine.backends import select_backend
from engine.cuda_graphs import DecodeGraphs, use_cuda_graphs
from engine.kv_cache import DEFAULT_BLOCK_SIZE, PagedKVCache, blocks_from_free_memory
from engine.model import LlamaModel, default_dtype
from engine.ops import OPS
from sim.batch import Batch, BatchItem
from sim.catalog.models import ModelSpec
from sim.kv.prefix_keys import block_hashes
from sim.request import Request


def _generator(text: str) -> torch.Generator:
    digest = hashlib.sha256(text.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


@functools.lru_cache(maxsize=8192)
def _block_ids(key: int, block_size: int, vocab_size: int, seed: int) -> tuple[int, ...]:
    return tuple(torch.randint(0, vocab_size, (block_size,), generator=_generator(f"{seed}:block:{key}")).tolist())


def block_token_ids(key: int, block_size: int, vocab_size: int, seed: int = 0) -> list[int]:
    """The ids of a shared KV block: drawn from a generator seeded by (seed, the block's prefix key)."""
    return list(_block_ids(int(key), block_size, vocab_size, seed))


def shared_blocks(request: Request, block_size: int) -> dict[int, int]:
    """Block index -> prefix key of the full blocks ``request``'s trace line declares shared with others.

    The keys are the caching block manager's (``sim.kv.prefix_keys.block_hashes`` over ``max_tokens - 1``
    tokens: the prompt's blocks and those its answer fills). A block is shared when its key is not the
    request's own (the tag-3 key ``block_hashes`` gives a block the trace does not describe), which also
    covers keys of trace blocks straddling two of ours, whose low bits are a hash's. Empty without reuse fields.
    """
    if request.prefix is None:
        return {}
    n = request.max_tokens - 1
    keys = block_hashes(request.prefix, request.index, n, block_size)
    own = block_hashes(None, request.index, n, block_size)
    idx = np.flatnonzero(keys != own)
    return dict(zip(idx.tolist(), keys[idx].tolist()))


def prompt_token_ids(request_id: str, num_tokens: int, vocab_size: int, seed: int = 0,
                     shared: dict[int, int] | None = None, block_size: int = DEFAULT_BLOCK_SIZE) -> list[int]:
    """Reproducible prompt ids for a request: drawn from a generator seeded by (seed, request id).

    ``shared`` (``shared_blocks``) replaces the ids of each shared block, as far as the prompt reaches
    into it, with the block's key-derived ids (``block_token_ids``); the other positions keep the ids the
    request's own generator gives them, so a request without shared blocks gets the ids it always did.
    A shared block the prompt only begins (its answer fills the rest, and the cache registers it once full)
    is key-derived on the prompt's part too, so the cached block holds the key's tokens throughout.
    """
    toks = torch.randint(0, vocab_size, (num_tokens,), generator=_generator(f"{seed}:{request_id}")).tolist()
    for blk, key in (shared or {}).items():
        start = blk * block_size
        if start < num_tokens:
            end = min(num_tokens, start + block_size)
            toks[start:end] = block_token_ids(key, block_size, vocab_size, seed)[:end - start]
    return toks


def _completes(item: BatchItem) -> bool:
    """Whether the item reaches the request's known tokens, so the model samples the next one."""
    r = item.request
    return item.num_cached_tokens + item.num_new_tokens == r.prompt_tokens + r.num_generated


class ModelRunner:
    """One model replica on one device: ``execute(batch)`` runs it and returns sampled ids per item."""

    def __init__(self, model_spec: ModelSpec, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, kv_blocks: int | None = None,
                 block_size: int = DEFAULT_BLOCK_SIZE, backend: str = "auto", seed: int = 0,
                 checkpoint: str | Path | None = None, kv_memory_fraction: float = 0.9,
                 cuda_graphs: bool | None = None) -> None:
        self.spec = model_spec
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype or default_dtype(self.device)
        self.block_size = block_size
        self.seed = seed
        self.model = LlamaModel(model_spec, device=self.device, dtype=self.dtype, seed=seed,
                                checkpoint=checkpoint)
        if kv_blocks is None:
            kv_blocks = blocks_from_free_memory(model_spec, block_size, self.dtype, self.device,
                                                kv_memory_fraction)
        self.num_blocks = kv_blocks
        # decode-only batches replay CUDA graphs (engine.cuda_graphs); on the CPU, True runs the
        # same static padded path eagerly (for tests). Graphs need one scratch block past num_blocks.
        self.cuda_graphs = use_cuda_graphs(self.device.type, model_spec, cuda_graphs)
        if self.cuda_graphs and self.device.type == "cuda" and model_spec.is_moe:
            raise ValueError(f"{model_spec.name}: a mixture-of-experts forward pass cannot be captured in a CUDA graph "
                             f"(its expert groups are sized on the host); run it with --no-cuda-graphs")
        self.kv_cache = PagedKVCache(model_spec, kv_blocks + int(self.cuda_graphs), block_size,
                                     device=self.device, dtype=self.dtype)
        self.backend = select_backend(self.device, backend, self.dtype)
        self.graphs: DecodeGraphs | None = None
        if self.cuda_graphs:
            self.graphs = DecodeGraphs(self.model, self.kv_cache, block_size, kv_blocks,
                                       capture=self.device.type == "cuda")
        self._tokens: dict[str, list[int]] = {}
        self._shared: dict[str, dict[int, int]] = {}  # request id -> its shared blocks' keys (shared_blocks)
        self.last_timing: dict[str, float | int | str | bool] = {}
        self.last_logits: list[torch.Tensor | None] = []
        #: speculative decoding's drafts and verification (engine.speculative.EngineSpeculation) when on
        self.speculation = None

    # ------------------------------------------------------------ token store

    def token_ids(self, request: Request) -> list[int]:
        """The runner's ids for ``request``: its prompt, then every output id so far (see ``execute``)."""
        toks = self._tokens.get(request.request_id)
        if toks is None:
            shared = shared_blocks(request, self.block_size)
            if shared:
                self._shared[request.request_id] = shared
            toks = prompt_token_ids(request.request_id, request.prompt_tokens, self.spec.vocab_size, self.seed,
                                    shared, self.block_size)
            self._tokens[request.request_id] = toks
        return toks

    def forced_token(self, request: Request, position: int) -> int | None:
        """The id the trace fixes at ``position`` (inside a shared block), or None where the model's sample stands."""
        shared = self._shared.get(request.request_id)
        if not shared:
            return None
        key = shared.get(position // self.block_size)
        if key is None:
            return None
        return _block_ids(key, self.block_size, self.spec.vocab_size, self.seed)[position % self.block_size]

    def shares_blocks(self, request: Request) -> bool:
        """Whether the trace fixes some of ``request``'s ids (shared blocks: ``forced_token``)."""
        self.token_ids(request)
        return bool(self._shared.get(request.request_id))

    def _verifies(self, item: BatchItem) -> bool:
        """A speculative verify: the item runs past the request's known tokens, over its drafts."""
        r = item.request
        return self.speculation is not None and item.num_cached_tokens + item.num_new_tokens > r.num_known

    def release(self, request: Request) -> None:
        """Forget a finished request's token ids (other requests' ids and the KV blocks they share are untouched)."""
        self._tokens.pop(request.request_id, None)
        self._shared.pop(request.request_id, None)

    # ------------------------------------------------------------ execution

    def prepare(self, batch: Batch, all_logits: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, AttnMetadata, torch.Tensor, list[int], list[list[int]]]:
        """Device inputs for ``batch``: token ids, positions, attention metadata, logits rows.

        Tokens are laid out prefill items first, then decodes. Also returns that order of
        item indices and, per item (batch order), the flat token indices whose logits are
        computed; ``logits_rows`` concatenates them in batch order.
        """
        items = batch.items
        if not items:
            raise ValueError("cannot execute an empty batch")
        order = [i for i, it in enumerate(items) if not it.is_decode]
        n_prefill_items = len(order)
        order += [i for i, it in enumerate(items) if it.is_decode]
        ids: list[int] = []
        rows: list[list[int]] = [[] for _ in items]
        seqs: list[tuple[list[int], int, int]] = []
        max_len = 0
        for i in order:
            it = items[i]
            r, start, end = it.request, it.num_cached_tokens, it.num_cached_tokens + it.num_new_tokens
            toks = self.token_ids(r)
            verify = self._verifies(it)
            if verify:  # the last known token, then the drafts (engine.speculative)
                toks = toks[:r.num_known] + self.speculation.drafts_for(r, end - r.num_known)
            if (end > r.num_known and not verify) or end > len(toks):
                raise ValueError(f"request {r.request_id}: item covers tokens [{start}, {end}) but only "
                                 f"{min(r.num_known, len(toks))} are known")
            first = len(ids)
            ids.extend(toks[start:end])
            if all_logits or verify:  # a verify needs the target's token at every position
                rows[i] = list(range(first, first + it.num_new_tokens))
            elif _completes(it):
                rows[i] = [first + it.num_new_tokens - 1]
            seqs.append((r.block_table, start, it.num_new_tokens))
            max_len = max(max_len, end)
        self.model.ensure_rope(max_len)
        dev = self.device
        attn = build_metadata(seqs[:n_prefill_items], seqs[n_prefill_items:], self.block_size, dev,
                              self.backend, self.model.scale)
        positions = torch.cat([p.positions for p in (attn.prefill, attn.decode) if p is not None])
        flat_rows = [row for i in range(len(items)) for row in rows[i]]
        logits_rows = torch.tensor(flat_rows, dtype=torch.int64).to(dev)
        token_ids = torch.tensor(ids, dtype=torch.int64).to(dev)
        return token_ids, positions, attn, logits_rows, order, rows

    @torch.inference_mode()
    def execute(self, batch: Batch, *, all_logits: bool = False) -> list[int | None]:
        """Run ``batch``; per item, the next id if it completes the request's known tokens, else None.

        The next id is the sampled one, except at a position inside a block the trace declares shared
        (``shared_blocks``: a conversation's answer that its next turn resends): there the block's
        key-derived id is fed instead (teacher forcing a recorded conversation), so that the position holds
        the same token whether its KV is computed here or found in the prefix cache. What is returned is
        what is stored and fed next, and what the request's output ids report: the forced id where forced.

        ``all_logits`` keeps logits for every new token (tests); ``self.last_logits`` holds
        each item's float32 logits rows (or None; after a graph replay, valid until the next
        call) and ``self.last_timing`` host/device seconds (``forward_s``: launch to outputs, wall).
        """
        t0 = time.perf_counter()
        graph = not all_logits and self.graphs is not None and self.graphs.supports(batch)
        if graph:  # decode-only: every item samples, one logits row each, in batch order
            rows = [[i] for i in range(len(batch.items))]
            num_tokens = (0, len(batch.items))
            captures = self.graphs.captures
            loaded = self.graphs.load(batch, self.token_ids)  # host: static buffers (and a first capture)
        else:
            token_ids, positions, attn, logits_rows, _order, rows = self.prepare(batch, all_logits)
            num_tokens = tuple(p.num_tokens if p else 0 for p in (attn.prefill, attn.decode))
        cuda = self.device.type == "cuda"
        if cuda:
            start_ev = torch.cuda.Event(enable_timing=True)
            end_ev = torch.cuda.Event(enable_timing=True)
            start_ev.record()
        t1 = time.perf_counter()
        if graph:
            logits, sampled = self.graphs.replay(loaded)
        else:
            logits = self.model.forward(token_ids, positions, attn, self.kv_cache, logits_rows)
            sampled = OPS["sampling"](logits) if logits.shape[0] else logits.new_zeros(0, dtype=torch.int64)
        if cuda:
            end_ev.record()
            torch.cuda.synchronize(self.device)
        sampled_ids = sampled.tolist()
        t2 = time.perf_counter()

        results: list[int | None] = []
        self.last_logits = []
        cursor = 0
        for it, item_rows in zip(batch.items, rows):
            n = len(item_rows)
            self.last_logits.append(logits[cursor:cursor + n] if n else None)
            if n and self._verifies(it):  # greedy verify: accepted drafts and the target's next token
                r = it.request
                emitted = self.speculation.verified(r, sampled_ids[cursor:cursor + n])
                store = self._tokens[r.request_id]
                del store[r.num_known:]
                store.extend(emitted)
                results.append(emitted[-1])
            elif n and _completes(it):
                tok = sampled_ids[cursor + n - 1]
                r = it.request
                forced = self.forced_token(r, r.num_known)
                if forced is not None:
                    tok = forced
                store = self._tokens[r.request_id]
                del store[r.num_known:]  # a re-executed or recomputed item overwrites
                store.append(tok)
                results.append(tok)
            else:
                results.append(None)
            cursor += n
        device_s = start_ev.elapsed_time(end_ev) / 1e3 if cuda else t2 - t1
        self.last_timing = {
            "host_s": t1 - t0, "device_s": device_s, "forward_s": t2 - t1, "total_s": time.perf_counter() - t0,
            "num_tokens": sum(num_tokens), "num_prefill_tokens": num_tokens[0], "num_decode_tokens": num_tokens[1],
            "backend": self.backend.name, "cuda_graph": graph,
            "graph_captured": graph and self.graphs.captures > captures,
        }
        return results
