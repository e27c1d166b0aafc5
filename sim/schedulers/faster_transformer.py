"""FasterTransformer: request-level batching. A batch runs to completion before anyone new is admitted."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.schedulers.base import Scheduler


class FasterTransformerScheduler(Scheduler):
    """Admit up to ``max_batch_size`` waiting requests (whole prompts, max length reserved), then decode them all until the last finishes."""

    name = "faster_transformer"
    reserves_max_length = True

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        if self.running:
            return self._decode_pass(self._schedulable_running(), None)[0], []
        items: list[BatchItem] = []
        budget = self.token_budget
        tokens = 0
        while self.waiting:
            r = self.waiting[0]
            if budget is not None and tokens + r.num_known > budget:
                break
            if not self._can_admit(r):
                break
            self._admit(r)
            items.append(BatchItem(r, r.num_known, 0))
            tokens += r.num_known
        return [], items
