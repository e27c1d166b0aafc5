"""FasterTransformer: request-level batching. A batch runs to completion before anyone new joins it."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.kv.block_manager import BlockManager
from sim.schedulers.base import Scheduler, SchedulerConfig
from sim.schedulers.orca import check_reservation


class FasterTransformerScheduler(Scheduler):
    """Decode every running request not in flight; when there is none, admit a new batch of waiting requests
    (whole prompts, max length reserved) up to ``max_batch_size`` running in all.

    As Sarathi-Serve's FasterTransformerScheduler (osdi-sarathi-serve branch): with pipeline parallelism a new
    batch is admitted into an idle pipeline slot while the running ones are in flight; its block manager is
    Orca's (max_model_len reserved per request, no watermark).
    """

    name = "faster_transformer"
    reserves_max_length = True
    admits_after_decodes = False  # only into an empty batch (decode stretches treat its queue as blind)
    #: Sarathi-Serve's default for every policy (BaseSchedulerConfig.max_num_seqs, sarathi/config/config.py)
    default_max_num_seqs = 128

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        super().__init__(config, block_manager)
        check_reservation(self.name, config, block_manager)

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        decodes = self._decode_pass(self._schedulable_running(), None)[0]
        if decodes:
            return decodes, []
        return [], self._admit_whole_prompts(0)
