"""Orca: iteration-level batching of whole prefills with all running decodes; max length reserved, no preemption."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.schedulers.base import Scheduler


class OrcaScheduler(Scheduler):
    """Every iteration: all running decodes, then new requests' whole prompts (FCFS) while the batch cap and reservation allow."""

    name = "orca"
    reserves_max_length = True

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        decodes = self._decode_pass(self._schedulable_running(), None)[0]
        return decodes, self._admit_whole_prompts(len(decodes))
