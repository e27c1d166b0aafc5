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
        return [], self._admit_whole_prompts(0)
