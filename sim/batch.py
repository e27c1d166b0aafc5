"""The one batch type: scheduler produces it, cost model prices it, engine runs it, metrics record it."""

from __future__ import annotations

from typing import NamedTuple

from sim.request import Request


class BatchItem(NamedTuple):
    """``num_new_tokens`` tokens of ``request`` processed over ``num_cached_tokens`` of cached context."""

    request: Request
    num_new_tokens: int
    num_cached_tokens: int

    @property
    def is_decode(self) -> bool:
        """A decode processes the request's last sampled token (only valid before the batch completes)."""
        r = self.request
        return self.num_new_tokens == 1 and r.num_generated > 0 and self.num_cached_tokens == r.num_known - 1


class Batch:
    """A list of items plus the aggregates every consumer needs, computed once.

    On the simulator's hot path schedulers hand decode items in as plain ``(request, new, cached)``
    tuples (``entries``); ``items`` turns them into ``BatchItem``s the first time someone asks.
    """

    __slots__ = (
        "entries", "_items", "batch_id", "num_prefill_tokens", "num_decode_tokens", "decode_context",
        "prefill_items", "kv_blocks_used",
    )

    def __init__(self, items: list[BatchItem] | list[tuple[Request, int, int]], batch_id: int = 0,
                 kv_blocks_used: int = 0, num_decodes: int | None = None) -> None:
        """``num_decodes``: the first that many items are known to be decodes (schedulers pass it; saves a pass)."""
        self.entries = items
        self._items: list[BatchItem] | None = None
        self.batch_id = batch_id
        self.kv_blocks_used = kv_blocks_used
        if num_decodes is not None:
            prefill = items[num_decodes:]
            decode_tokens = num_decodes
            decode_context = sum([it[2] for it in items[:num_decodes]]) + num_decodes
        else:
            prefill = []
            decode_tokens = 0
            decode_context = 0
            for it in items:  # BatchItem.is_decode inlined
                r, new, cached = it
                if new == 1 and r.num_generated and cached == r.prompt_tokens + r.num_generated - 1:
                    decode_tokens += 1
                    decode_context += cached + 1
                else:
                    prefill.append(it)
        self.prefill_items = [it if type(it) is BatchItem else BatchItem(*it) for it in prefill]
        self.num_decode_tokens = decode_tokens
        self.decode_context = decode_context  # keys read by all decodes together
        self.num_prefill_tokens = sum([it[1] for it in prefill])

    @property
    def items(self) -> list[BatchItem]:
        """Every item as a ``BatchItem`` (decodes first when a scheduler built the batch)."""
        if self._items is None:
            self._items = [it if type(it) is BatchItem else BatchItem(*it) for it in self.entries]
        return self._items

    @property
    def num_tokens(self) -> int:
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def size(self) -> int:
        return len(self.entries)

    @property
    def kind(self) -> str:
        """``prefill``, ``decode`` or ``mixed``: how validation and plots group batches."""
        if not self.prefill_items:
            return "decode"
        return "prefill" if self.num_decode_tokens == 0 else "mixed"

    def composition(self) -> tuple[tuple[str, int, int], ...]:
        """Hashable description (request id, new, cached) used to compare engine and simulator batches."""
        return tuple((it.request.request_id, it.num_new_tokens, it.num_cached_tokens) for it in self.items)

    def __repr__(self) -> str:
        return (f"Batch(id={self.batch_id}, size={self.size}, prefill_tokens={self.num_prefill_tokens}, "
                f"decode_tokens={self.num_decode_tokens})")


def synthetic_batch(decode_contexts: list[int], chunks: list[tuple[int, int]], prefix: str = "s") -> Batch:
    """A batch on fresh requests, decodes first as the schedulers build them: one decode per entry of
    ``decode_contexts`` (keys it reads, its new one included), one prefill chunk per (new, cached) of ``chunks``.
    Request ids are ``prefix`` plus the item's position. For pricing, calibration and the engine's benches."""
    items = []
    for i, context in enumerate(decode_contexts):
        r = Request(f"{prefix}{i}", 0.0, context - 1, 1 << 30)
        r.num_computed, r.num_generated = context - 1, 1  # prompt + 1 generated known; the decode covers it
        items.append(BatchItem(r, 1, context - 1))
    for i, (new, cached) in enumerate(chunks, start=len(items)):
        r = Request(f"{prefix}{i}", 0.0, cached + new, 1 << 30)
        r.num_computed = cached
        items.append(BatchItem(r, new, cached))
    return Batch(items, 0, 0, num_decodes=len(decode_contexts))
