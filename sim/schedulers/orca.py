"""Orca: iteration-level batching of whole prefills with all running decodes; max length reserved, no preemption."""

from __future__ import annotations

from sim.batch import BatchItem
from sim.kv.block_manager import BlockManager
from sim.kv.memory import InfeasibleConfigError
from sim.schedulers.base import Scheduler, SchedulerConfig


def check_reservation(name: str, config: SchedulerConfig, bm: BlockManager) -> None:
    """Refuse a KV cache that cannot hold one max_model_len reservation: no request could ever be admitted
    (Sarathi-Serve would wait forever; vLLM refuses to start when max_model_len exceeds its KV cache's tokens)."""
    if config.kv_reservation != "max-model-len" or config.max_model_len is None:
        return
    need = bm.blocks_for(config.max_model_len)
    if need > bm.num_blocks:
        raise InfeasibleConfigError(
            f"{name} reserves max_model_len = {config.max_model_len} tokens ({need} KV blocks of {bm.block_size}) "
            f"per request, but the KV cache holds {bm.num_blocks} blocks: lower --max-model-len, give the KV cache "
            "more memory, or use --kv-reservation oracle (a what-if that knows each request's length)")


class OrcaScheduler(Scheduler):
    """Every iteration: all running decodes not in flight, then new requests' whole prompts (FCFS) while the batch
    cap and the reservation allow.

    As Sarathi-Serve's OrcaScheduler and OrcaBlockSpaceManager (osdi-sarathi-serve branch): admission reserves
    ceil(max_model_len / block_size) blocks with no watermark (``SchedulerConfig.kv_reservation`` "oracle" reserves
    the request's own prompt + output instead, a what-if), so a decode never needs a block and nothing is preempted.
    """

    name = "orca"
    reserves_max_length = True
    #: Sarathi-Serve's default for every policy (BaseSchedulerConfig.max_num_seqs, sarathi/config/config.py; its
    #: benchmark's replica_scheduler.max_batch_size); its OSDI'24 experiments ran Orca at 16 for memory
    default_max_num_seqs = 128

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        super().__init__(config, block_manager)
        check_reservation(self.name, config, block_manager)

    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        decodes = self._decode_pass(self._schedulable_running(), None)[0]
        return decodes, self._admit_whole_prompts(len(decodes))
