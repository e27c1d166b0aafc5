"""vLLM v1 unified scheduler: one token budget shared by running requests first, then new ones."""

from __future__ import annotations

from collections import deque
from itertools import islice

from sim.batch import BatchItem
from sim.request import Request, Status
from sim.schedulers.base import Scheduler

DEFAULT_TOKEN_BUDGET = 2048
USAGE_CONTEXTS = ("api-server", "offline")  # vLLM's UsageContext.OPENAI_API_SERVER and LLM_CLASS
#: vLLM's EngineArgs.get_batch_defaults (vllm/engine/arg_utils.py, the same from 0.11 to 0.19): (max_num_batched_tokens,
#: max_num_seqs) per usage context, larger on GPUs of at least 70 GiB that are not A100s (H100, H200, B200, MI300x)
LARGE_GPU_DEFAULTS = {"api-server": (8192, 1024), "offline": (16384, 1024)}
OTHER_GPU_DEFAULTS = {"api-server": (2048, 256), "offline": (8192, 256)}
LARGE_GPU_BYTES = 70 * 2**30


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
    # V1's engine core overlaps scheduling with the GPU step (EngineCore.step_with_batch_queue; default since 0.14)
    default_async_scheduling = True
    # V1 verifies draft tokens in the same step (scheduled_spec_decode_tokens; sim.spec)
    supports_speculation = True

    @classmethod
    def batch_defaults(cls, max_model_len: int, gpu_memory_bytes: float | None = None, gpu_name: str = "",
                       usage_context: str = "api-server") -> tuple[int | None, int]:
        """vLLM V1's defaults by GPU memory class and usage context, with its caps: the budget at most
        max_num_seqs x max_model_len, max_num_seqs at most the budget
        (_set_default_max_num_seqs_and_batched_tokens_args)."""
        large = gpu_memory_bytes is not None and gpu_memory_bytes >= LARGE_GPU_BYTES and "a100" not in gpu_name.lower()
        tokens, seqs = (LARGE_GPU_DEFAULTS if large else OTHER_GPU_DEFAULTS)[usage_context]
        tokens = min(tokens, seqs * max_model_len)
        return tokens, min(seqs, tokens)

    def stretch_chunk(self, partial: Request, num_decodes: int, pending: int) -> int:
        """The prompt under way, last in running order, takes what the budget leaves after the decodes before it (0 if
        some running request comes after it: that one would get no budget)."""
        return min(pending, self.token_budget - num_decodes) if self.running[-1] is partial else 0

    head_tokens_count_hit = True

    def _head_tokens(self, head: Request) -> int | None:
        """The first waiting request is admitted for its cached prefix (``waiting_head_blocked`` asks only where
        that is a preempted request's own blocks, or none) and the tokens the budget leaves after the decodes (its
        first chunk), as ``_form_batch`` admits it."""
        hit = self.bm.prefix_hit(head)
        return hit + min(head.num_pending - hit, self.token_budget - len(self.running))

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        decodes: list[BatchItem] = []
        items: list[BatchItem] = []
        budget_left = self.token_budget
        preemptions_before = self.num_preemptions
        # V1 counts scheduled tokens as computed (Scheduler.schedule advances num_computed_tokens, vLLM 0.10-0.19):
        # with micro-batches in flight (pipeline parallelism) a prompt's next chunk is scheduled before the
        # previous one finishes; a request whose known tokens are all in flight waits for its sampled token
        ahead = self._tokens_in_flight() if self._in_flight else None
        if ahead:
            queue = deque(r for r in self.running if r.num_known - r.num_computed > ahead.get(r, 0))
        elif self.spec is None:  # the leading decodes at once where that preempts nothing (the pass below goes on)
            fast = self._plain_decodes(islice(self.running, budget_left), stop=True)
            if fast is not None:
                decodes += fast[0]
                budget_left -= len(decodes)
            queue = deque(self.running[len(decodes):])
        else:
            queue = deque(self.running)
        waits = False  # a request in flight could not grow (it is never preempted mid-pipeline)
        bs = self.bm.block_size
        if self.spec is not None:  # speculative decoding (sim.spec): decodes verify 1 + k tokens
            budget_left = self._running_speculative(queue, budget_left, decodes, items)
        while queue and budget_left > 0:
            r = queue.popleft()
            cached = r.num_computed + ahead.get(r, 0) if ahead else r.num_computed
            pending = r.prompt_tokens + r.num_generated - cached
            n = min(budget_left, pending)
            if len(r.block_table) * bs >= cached + n or self._grow_or_preempt(r, cached + n, queue, ahead):
                if pending == 1 and r.num_generated:
                    decodes.append((r, 1, cached))  # plain tuple on the hot path (see Batch)
                else:
                    items.append(BatchItem(r, n, cached))
                budget_left -= n
            elif r.status is Status.RUNNING:
                waits = True
        if waits or self.num_preemptions != preemptions_before:
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

    def _running_speculative(self, queue: deque, budget_left: int, decodes: list, items: list) -> int:
        """The running requests' pass with speculative decoding (one pipeline stage), as vLLM V1's scheduler runs
        it: a decoding request schedules its token plus k drafts (k shrunk by the budget left, its remaining outputs
        and the context limit; ``SpecDecoding.proposal``), all counted against the budget, and allocates slots for
        them plus the drafter's lookahead (allocate_slots(num_lookahead_tokens), every running request). Fills
        ``decodes`` (plain decodes, no draft) and ``items``; consumes ``queue``; returns the budget left."""
        spec, bm = self.spec, self.bm
        look, bs = spec.lookahead, bm.block_size
        room = bm.num_blocks * bs
        proposed = spec_blocks = 0
        while queue and budget_left > 0:
            r = queue.popleft()
            cached = r.num_computed
            pending = r.prompt_tokens + r.num_generated - cached
            k = spec.proposal(r, budget_left, cached) if pending == 1 and r.num_generated else 0
            n = 1 + k if k else min(pending, budget_left)
            need = cached + n + look
            if spec.max_model_len is not None and need > spec.max_model_len:  # allocate_slots caps it there
                need = max(spec.max_model_len, cached + n)
            if need > room:  # a cache below max_model_len (vLLM refuses to start): a lone request must still fit
                need = max(room, cached + n)
            if not self._grow_or_preempt(r, need, queue):
                continue
            # blocks held only for draft and lookahead slots (beyond the request's own next tokens)
            spec_blocks += max(0, len(r.block_table) - -(-(cached + (1 if k else n)) // bs))
            if k:
                items.append(BatchItem(r, n, cached))  # a verify of n positions, priced as a chunk over its context
                spec.proposed[r] = k
                proposed += k
            elif pending == 1 and r.num_generated:
                decodes.append((r, 1, cached))
            else:
                items.append(BatchItem(r, n, cached))
            budget_left -= n
        spec.note_batch(self._next_batch_id, proposed, spec_blocks)
        return budget_left
