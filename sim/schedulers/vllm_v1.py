"""vLLM v1 unified scheduler: one token budget shared by running requests first, then new ones."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.schedulers.base import Scheduler

DEFAULT_TOKEN_BUDGET = 2048


class VLLMV1Scheduler(Scheduler):
    """Running requests in order take min(tokens they need, budget left), allocating blocks for just those tokens
    and preempting the newest when blocks run out; waiting requests are admitted only if nothing was preempted."""

    name = "vllm_v1"
    chunks_prefills = True
    default_token_budget = DEFAULT_TOKEN_BUDGET
    default_prefix_caching = True  # vLLM v1 enables automatic prefix caching by default
    # V1's KV cache manager admits while blocks are free, with no watermark (vllm/v1/core/kv_cache_manager.py,
    # allocate_slots, vLLM 0.10-0.19; the v0 block manager kept 1% free)
    uses_watermark = False
    # V1's engine core overlaps scheduling with the GPU step (EngineCore.step_with_batch_queue; vLLM 0.11+)
    default_async_scheduling = True

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        decodes: list[BatchItem] = []
        items: list[BatchItem] = []
        budget_left = self.token_budget
        preemptions_before = self.num_preemptions
        queue = self._schedulable_running()
        while queue and budget_left > 0:
            r = queue.popleft()
            cached = r.num_computed
            pending = r.prompt_tokens + r.num_generated - cached
            n = pending if pending < budget_left else budget_left
            if self._grow_or_preempt(r, cached + n, queue):
                if pending == 1 and r.num_generated:
                    decodes.append((r, 1, cached))  # plain tuple on the hot path (see Batch)
                else:
                    items.append(BatchItem(r, n, cached))
                budget_left -= n
        if self.num_preemptions != preemptions_before:
            return decodes, items
        while self.waiting and budget_left > 0:
            r = self.waiting[0]
            hit = self.bm.prefix_hit(r)  # tokens a cached prefix gives (computed, in shared blocks)
            n = min(r.num_pending - hit, budget_left)
            if not self._can_admit(r, hit + n):
                break
            self._admit(r, hit + n)
            items.append(BatchItem(r, n, hit))
            budget_left -= n
        return decodes, items
