"""vLLM v0 default scheduler: prefill-prioritising; decodes stall while any new prompt can be admitted."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.schedulers.base import Scheduler


class VLLMScheduler(Scheduler):
    """Prefill-only iteration when a waiting request fits (FCFS, token and sequence caps, watermark);
    otherwise every running request decodes, preempting the newest by recompute when blocks run out."""

    name = "vllm"

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        items: list[BatchItem] = []
        budget = self.token_budget
        tokens = 0
        while self.waiting:
            r = self.waiting[0]
            n = r.num_known  # a preempted request re-prefills prompt plus generated tokens
            if budget is not None and tokens + n > budget:
                break
            if not self._can_admit(r):
                break
            self._admit(r)
            items.append(BatchItem(r, n, 0))
            tokens += n
        if items:
            return [], items
        return self._decode_pass(self._schedulable_running(), None)[0], []
