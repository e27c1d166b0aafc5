"""Sarathi-Serve: stall-free batching. Decodes first, then chunked prefills fill the token budget."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.request import Request
from sim.schedulers.base import Scheduler

DEFAULT_TOKEN_BUDGET = 512


class SarathiScheduler(Scheduler):
    """Under a per-iteration token budget: every running decode (preempting from the tail when blocks run out),
    then partially done prefills, then new requests, each chunk min(remaining prompt, budget left)."""

    name = "sarathi"
    chunks_prefills = True
    default_token_budget = DEFAULT_TOKEN_BUDGET
    #: Sarathi-Serve's default (BaseSchedulerConfig.max_num_seqs = 128, sarathi/config/config.py; replica_scheduler
    #: max_batch_size 128 in the osdi-sarathi-serve branch's sarathi/benchmark/config/default.yml)
    default_max_num_seqs = 128

    def stretch_chunk(self, partial: Request, num_decodes: int, pending: int) -> int:
        """The prompt under way takes the budget the decodes leave, as ``_form_batch`` chunks it (its blocks were
        allocated at admission)."""
        return self._chunk(pending, self.token_budget - num_decodes, num_decodes)

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        decodes, partial = self._decode_pass(self._schedulable_running(), self.token_budget)
        items: list[BatchItem] = []
        budget_left = self.token_budget - len(decodes)
        tokens = len(decodes)
        for r in partial:
            if budget_left <= 0:
                break
            c = self._chunk(r.num_pending, budget_left, tokens)
            items.append(BatchItem(r, c, r.num_computed))
            tokens += c
            budget_left -= c
        while self.waiting and budget_left > 0:
            r = self.waiting[0]
            if not self._can_admit(r):
                break
            self._admit(r)  # blocks for the whole prompt, as Sarathi-Serve allocates at admission
            c = self._chunk(r.num_pending, budget_left, tokens)  # after a prefix hit, only the rest
            items.append(BatchItem(r, c, r.num_computed))
            tokens += c
            budget_left -= c
        return decodes, items
