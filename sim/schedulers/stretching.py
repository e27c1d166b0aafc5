"""What a scheduler tells a decode stretch (``sim.serving.stretch``): which batches would repeat, and their blocks.

A mixin of ``Scheduler``: the questions a stretch asks about the policy's state (what the next batches would be
while nothing changes) and the two things it does through it (grow blocks as ``schedule`` would, take batch ids).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sim.request import Status

if TYPE_CHECKING:
    from sim.batch import Batch
    from sim.request import Request


class StretchSteps:
    """Decode stretches' view of a policy (mixed into ``sim.schedulers.base.Scheduler``, whose state it reads)."""

    def stretch_plan(self, batch: Batch | None, waiting_blind: bool = False, chunk_stretch: bool = True,
                     last_token: bool = False) -> tuple[int, Request | None, int]:
        """(steps, partial, chunk): the batches after ``batch`` (None: after a stretch) that would each be every
        running request's decode, plus (``chunk_stretch``, a chunking policy) the next ``chunk`` tokens of the one
        prompt under way, ``partial``, while more than a chunk of it remains; 0 steps unless nothing is in flight,
        no speculation, the budget covers the decodes, nothing waits (but for a ``waiting_blind`` queue, or behind
        a chunk that fills the budget); up to the step before a last token (``last_token``: through it,
        ``stretch_finish`` finishing the requests it completes). Blocks are ``stretch_grow``'s."""
        run = self.running
        n = len(run)
        budget = self.token_budget
        if (not n or self._in_flight or self.num_incoming or self.spec is not None or self.speculative
                or (budget is not None and budget < n)):
            return 0, None, 0
        partial = None
        # after a prefill or a finish: is every running request decoding?
        if batch is None or batch.prefill_items or batch.num_decode_tokens != n:
            # after a batch of every running request that finished none, only its prompts may not be decoding
            whole = batch is not None and batch.size == n and self.last_batch_done == (batch.batch_id, 0)
            for r in ([it[0] for it in batch.prefill_items] if whole else run):
                g = r.num_generated
                if not g or r.num_computed + 1 != r.prompt_tokens + g:
                    if partial is not None or not chunk_stretch or not self.chunks_prefills or budget is None:
                        return 0, None, 0
                    partial = r
        if partial is None:
            if self.waiting and not (waiting_blind or self.budget_full(n)):
                return 0, None, 0
            return min([r.output_tokens - r.num_generated for r in run]) - (not last_token), None, 0
        chunk = self.stretch_chunk(partial, n - 1, partial.num_pending)
        if not chunk or (self.waiting and not (waiting_blind or self.budget_full(n - 1, chunk))):
            return 0, None, 0
        steps = -(-partial.num_pending // chunk) - 1  # the chunks before its last (which samples a token)
        if n > 1:
            steps = min(steps, min([r.output_tokens - r.num_generated for r in run if r is not partial])
                        - (not last_token))
        return steps, partial, chunk

    def stretch_chunk(self, partial: Request, num_decodes: int, pending: int) -> int:
        """The chunk ``partial`` gets next to ``num_decodes`` decodes when ``pending`` of its tokens remain and
        nothing waits (0: this policy's batches do not repeat so; chunking policies say)."""
        return 0

    def budget_full(self, num_decodes: int, chunk: int = 0) -> bool:
        """Whether decodes plus a chunk use the whole token budget of a policy that admits from what they leave
        (then no waiting request can be admitted, whatever arrives)."""
        return self.admits_after_decodes and self.token_budget is not None and num_decodes + chunk >= self.token_budget

    #: whether ``_head_tokens`` counts a preempted first waiting request's own cached blocks as ``_form_batch`` does
    #: (then a decode stretch may run while such a request is held back: ``waiting_head_blocked``)
    head_tokens_count_hit = False

    def waiting_head_blocked(self) -> bool:
        """Whether the first waiting request cannot be admitted next to the running decodes (batch cap or KV): it
        stays so while decodes only grow, and later arrivals queue behind it (FCFS), so a decode stretch may go on
        past them. With prefix caching only for a request declaring no reuse: never preempted, its hit is none and
        stays none (and asking looks nothing up), where another's could grow as running requests register blocks,
        and looking it up registers blocks computed so far (the order in which they register matters). Preempted
        (``head_tokens_count_hit``), it finds only its own blocks, listed together, tail first, when it was
        preempted: a stretch's decodes take a free block each and evict those (tail first) only as they take
        them, so what it needs falls by at most what is free falls by, and it stays held back."""
        if not self.waiting:
            return False
        head = self.waiting[0]
        if self.bm.caching and (head.prefix is not None
                                or (head.last_blocks is not None and not self.head_tokens_count_hit)):
            return False
        return not self._can_admit(head, self._head_tokens(head))

    def _head_tokens(self, head: Request) -> int | None:
        """Tokens the first waiting request must find blocks for to be admitted next to the running decodes (None:
        the policy's ``_admit_tokens``, its whole known sequence or reservation; chunking policies say)."""
        return None

    def stretch_grow(self, decodes: list[Request], chunk: tuple[Request, int] | None = None) -> bool:
        """Blocks for one step of a stretch, as ``schedule`` allocates them: one more for each of ``decodes`` (each
        crossing a block boundary, in running order), then the chunk's (request, tokens to hold); False, changing
        nothing, if blocks run short."""
        bm = self.bm
        need = len(decodes) + (bm.blocks_for(chunk[1]) - len(chunk[0].block_table) if chunk else 0)
        if need > bm.num_free:
            return False
        if decodes:
            bm.add_block_each(decodes)
        if chunk:
            bm.grow(*chunk)
        return True

    def stretch_finish(self, reqs: list[Request], now: float, partial: Request | None = None, chunk: int = 0
                       ) -> list[Request]:
        """The last step of a stretch, ending at ``now``, produced some of ``reqs``' last tokens: each one decoding
        (then ``partial``'s ``chunk``) advanced as ``on_batch_done`` does, in batch order (a later one's block is
        shared after an earlier one is freed); returns the finished."""
        finished: list[Request] = []
        entries = [(r, 1, r.num_computed) for r in reqs]
        if partial is not None:
            entries.append((partial, chunk, partial.num_computed))
        self._advance(entries, now, finished)
        if finished:
            self.running = [r for r in self.running if r.status is not Status.FINISHED]
        return finished

    def stretch_finished(self, reqs: list[Request], now: float) -> list[Request]:
        """The last step of a stretch, ending at ``now`` and already advanced, produced some of ``reqs``' last
        tokens, and none of its blocks is noted for a prefix cache: finish those requests in batch order, as
        ``_advance`` would; returns them."""
        finished: list[Request] = []
        self.stretch_finish_each([r for r in reqs if r.num_generated >= r.output_tokens], now, finished)
        self.drop_finished()
        return finished

    def stretch_finish_each(self, reqs: list[Request], now: float, finished: list[Request]) -> None:
        """Finish ``reqs``, each advanced through its last token, which a stretch's step ending at ``now`` produced,
        in batch order, as ``_advance`` would (onto ``finished``; ``running`` is left to ``drop_finished``)."""
        for r in reqs:
            self._finish(r, now, finished)

    def drop_finished(self) -> None:
        """Take the finished requests out of ``running`` (once, after a stretch that finished several)."""
        self.running = [r for r in self.running if r.status is not Status.FINISHED]

    def take_batch_ids(self, k: int, cached_free: list[int] | None = None) -> int:
        """The first of ``k`` batch ids a stretch's steps take (with prefix caching: each step's cached free blocks)."""
        if cached_free is not None:
            self.cached_free_log.extend(cached_free)
        first = self._next_batch_id
        self._next_batch_id += k
        return first
