"""vLLM v0 default scheduler: prefill-prioritising; decodes stall while any new prompt can be admitted."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.schedulers.base import Scheduler


class VLLMScheduler(Scheduler):
    """Prefill-only iteration when a waiting request fits (FCFS, token and sequence caps, watermark);
    otherwise every running request decodes, preempting the newest by recompute when blocks run out."""

    name = "vllm"
    #: vLLM v0's default max_num_seqs (EngineArgs.max_num_seqs = 256, vllm/engine/arg_utils.py, vLLM 0.6.x)
    default_max_num_seqs = 256
    #: with pipeline parallelism vLLM v0 runs one scheduler per virtual engine (sim.schedulers.virtual_engines)
    pp_virtual_engines = True
    admits_after_decodes = False  # prompts first: an admissible prompt runs alone, whatever the decodes use

    @classmethod
    def default_budget(cls, max_model_len: int) -> int | None:
        """vLLM v0's max_num_batched_tokens when none is given: max(max_model_len, 2048) (vllm/config.py,
        SchedulerConfig, without chunked prefill), so any one prompt the model takes fits in an iteration."""
        return max(max_model_len, 2048)

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        prefills = self._admit_whole_prompts(0)
        if prefills:
            return [], prefills
        return self._decode_pass(self._schedulable_running(), None)[0], []
