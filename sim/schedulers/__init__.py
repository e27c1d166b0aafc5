"""Scheduler policies, one per file, sharing the mechanics in ``base``."""

from __future__ import annotations

from sim.kv.block_manager import BlockManager
from sim.schedulers.base import Scheduler, SchedulerConfig
from sim.schedulers.faster_transformer import FasterTransformerScheduler
from sim.schedulers.orca import OrcaScheduler
from sim.schedulers.sarathi import SarathiScheduler
from sim.schedulers.vllm import VLLMScheduler
from sim.schedulers.vllm_v1 import VLLMV1Scheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "faster_transformer": FasterTransformerScheduler,
    "orca": OrcaScheduler,
    "vllm": VLLMScheduler,
    "sarathi": SarathiScheduler,
    "vllm_v1": VLLMV1Scheduler,
}
ALIASES = {"ft": "faster_transformer", "fastertransformer": "faster_transformer", "sarathi_serve": "sarathi",
           "sarathi-serve": "sarathi", "vllm-v1": "vllm_v1", "v1": "vllm_v1", "vllm_v0": "vllm"}


def scheduler_class(name: str) -> type[Scheduler]:
    """Look up a policy by name (case-insensitive, a few aliases)."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(name.strip().lower(), ALIASES.get(key, key))
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(SCHEDULERS)} "
                         f"(aliases: {', '.join(ALIASES)})")
    return SCHEDULERS[key]


def make_scheduler(name: str, config: SchedulerConfig, block_manager: BlockManager) -> Scheduler:
    """Build the named policy over ``block_manager``."""
    return scheduler_class(name)(config, block_manager)


__all__ = ["SCHEDULERS", "Scheduler", "SchedulerConfig", "make_scheduler", "scheduler_class"]
