"""Speculative decoding's runtime state inside one scheduler: proposals, seeded acceptance draws, statistics.

Shared by the simulator and the engine through the scheduler (no clock, no simpy, no torch). A policy asks
``proposal`` how many tokens a decoding request drafts this step; ``Scheduler.on_batch_done`` asks ``verify`` how
many of them the target accepted. Each request draws from its own stream (seed, trace index), so a request's
draws do not depend on what else runs: the same seed gives the same bytes, at any load.
"""

from __future__ import annotations

import random
from array import array

from sim.request import Request
from sim.spec.config import SpecConfig


class SpecDecoding:
    """Proposals in flight, per-request and per-batch counts of proposed and accepted draft tokens."""

    def __init__(self, config: SpecConfig, seed: int = 0, max_model_len: int | None = None) -> None:
        self.config = config
        self.k = config.num_speculative_tokens
        self.lookahead = config.lookahead
        self.max_model_len = max_model_len
        self._conditional = config.acceptance.conditional(self.k)
        self.seed = seed
        self.proposed: dict[Request, int] = {}   # drafts of each request in a batch in flight
        #: an executor that verifies for real (the engine) puts each verified request's accepted count here
        #: before ``on_batch_done``; ``verify`` takes it instead of a draw
        self.outcomes: dict[Request, int] = {}
        #: an executor that drafts for real sets this: (request, k allowed) -> drafts it found (n-gram: 0 on a miss)
        self.proposer = None
        self._rngs: dict[Request, random.Random] = {}
        #: per request (by trace index): [verify steps with drafts, tokens proposed, tokens accepted]
        self.per_request: dict[int, list[int]] = {}
        #: per scheduled batch (by batch id): draft tokens verified, KV blocks held only for speculative slots,
        #: draft tokens accepted (filled when the batch completes)
        self.batch_proposed = array("q")
        self.batch_spec_blocks = array("q")
        self.batch_accepted = array("q")
        #: per draft position i (0-based): drafts that proposed it, drafts that had it accepted (vLLM's
        #: num_accepted_tokens_per_pos over the drafts long enough to reach it)
        self.position_proposed = [0] * self.k
        self.position_accepted = [0] * self.k

    def proposal(self, request: Request, budget_left: int, cached: int) -> int:
        """Draft tokens a decoding ``request`` verifies this step: k, less where the token budget left (its own
        token first), its remaining outputs (no draft past max_tokens) or the context limit (vLLM keeps a step's
        last position below max_model_len) would be passed."""
        k = min(self.k, budget_left - 1, request.output_tokens - request.num_generated - 1)
        if self.max_model_len is not None:
            k = min(k, self.max_model_len - 2 - cached)
        if k > 0 and self.proposer is not None:
            k = min(k, self.proposer(request, k))
        return max(0, k)

    def note_batch(self, batch_id: int, proposed: int, spec_blocks: int) -> None:
        """Record a scheduled batch's draft tokens and the blocks its speculative slots hold."""
        for log in (self.batch_proposed, self.batch_spec_blocks, self.batch_accepted):
            while len(log) <= batch_id:
                log.append(0)
        self.batch_proposed[batch_id] = proposed
        self.batch_spec_blocks[batch_id] = spec_blocks

    def verify(self, request: Request, batch_id: int) -> int:
        """Draft tokens of ``request``'s proposal accepted by the target (a seeded draw); forgets the proposal."""
        k = self.proposed.pop(request)
        accepted = self.outcomes.pop(request, None)
        if accepted is None:
            accepted = self._draw(request, k)
        elif not 0 <= accepted <= k:
            raise ValueError(f"request {request.request_id}: {accepted} drafts accepted of {k} proposed")
        for i in range(k):
            self.position_proposed[i] += 1
        for i in range(accepted):
            self.position_accepted[i] += 1
        st = self.per_request.get(request.index)
        if st is None:
            st = self.per_request[request.index] = [0, 0, 0]
        st[0] += 1
        st[1] += k
        st[2] += accepted
        if batch_id < len(self.batch_accepted):
            self.batch_accepted[batch_id] += accepted
        return accepted

    def _draw(self, request: Request, k: int) -> int:
        """Leading drafts accepted, each with its conditional rate, from the request's own seeded stream."""
        rng = self._rngs.get(request)
        if rng is None:
            rng = self._rngs[request] = random.Random(self.seed * 1_000_003 + request.index)
        accepted = 0
        for p in self._conditional[:k]:
            if rng.random() >= p:
                break
            accepted += 1
        return accepted

    def finished(self, request: Request) -> None:
        """``request`` is done: drop its random stream."""
        self._rngs.pop(request, None)

    def preempted(self, request: Request) -> None:
        """``request`` lost its KV: a proposal not yet verified is dropped (vLLM clears spec_token_ids)."""
        self.proposed.pop(request, None)
