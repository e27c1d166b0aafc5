"""The deployments a plan sizes: every GPU type x TP x PP x replicas x scheduler x budget, aggregated or with
prefill and decode pools; each with its config, or why it cannot run."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from sim.capacity.outcome import label_of
from sim.catalog.hardware import get_gpu
from sim.catalog.models import get_model
from sim.kv.memory import InfeasibleConfigError
from sim.schedulers import scheduler_class
from sim.serving.disagg import DisaggConfig, LinkConfig
from sim.serving.simulator import SimConfig


@dataclass
class Candidate:
    """One deployment to size: its config, or why it cannot run."""

    gpu: str
    tp: int
    pp: int
    replicas: int
    scheduler: str
    token_budget: int | None
    config: SimConfig | DisaggConfig | None = None
    kv_blocks: int | None = None
    infeasible: str | None = None
    ep: int = 1
    disagg: DisaggConfig | None = None  # a disaggregated deployment (its pools; tp/replicas: the prefill pool's)

    @property
    def mode(self) -> str:
        return "aggregated" if self.disagg is None else "disaggregated"

    @property
    def gpus(self) -> int:
        return self.disagg.num_gpus if self.disagg is not None else self.tp * self.pp * self.replicas

    @property
    def label(self) -> str:
        """E.g. '4x h100-sxm (2 replicas x TP2 PP1) sarathi budget 512': the GPU count first."""
        if self.disagg is not None:
            return self.disagg.label
        return label_of(self.gpu, self.gpus, self.replicas, self.tp, self.ep, self.pp, self.scheduler,
                        self.token_budget)


def powers_of_two(limit: int) -> list[int]:
    """1, 2, 4, ... up to ``limit``."""
    out, v = [], 1
    while v <= limit:
        out.append(v)
        v *= 2
    return out


def enumerate_candidates(model: str, gpus: Sequence[str], *, max_gpus: int, tps: Sequence[int] | None = None,
                         pps: Sequence[int] = (1,), replicas: Sequence[int] | str = (1,),
                         schedulers: Sequence[str] = ("vllm", "sarathi"), budgets: Sequence[int | None] = (None,),
                         max_batch_size: int | None = None, block_size: int = 16, gpu_memory_utilization: float = 0.9,
                         base: SimConfig | None = None) -> list[Candidate]:
    """Every (GPU, TP, PP, replicas, scheduler, budget) within ``max_gpus``; infeasible ones carry the reason.

    ``replicas="max"`` uses as many replicas as fit in ``max_gpus``. Budgets apply only to
    schedulers that chunk prompts (sarathi, vllm_v1); the others get their default budget once.
    """
    if max_gpus < 1:
        raise ValueError(f"max_gpus must be >= 1, got {max_gpus}")
    spec = get_model(model)
    names = list(dict.fromkeys(scheduler_class(s).name for s in schedulers))
    base = base or SimConfig()
    out: list[Candidate] = []
    for gpu_name in gpus:
        gpu = get_gpu(gpu_name)
        for tp in (tps or powers_of_two(max_gpus)):
            for pp in pps:
                if tp * pp > max_gpus:
                    continue
                reps = ([max_gpus // (tp * pp)] if replicas == "max"
                        else [r for r in replicas if tp * pp * r <= max_gpus])
                # a MoE model's experts are split by TP (ep 1) or spread whole over the TP group (ep = tp)
                for ep in ([1, tp] if spec.is_moe and tp > 1 else [1]):
                    shape = dataclasses.replace(base, model=model, gpu=gpu.name, tp=tp, pp=pp, ep=ep,
                                                block_size=block_size,
                                                gpu_memory_utilization=gpu_memory_utilization)
                    try:
                        blocks = shape.plan_memory(spec).num_blocks
                    except (InfeasibleConfigError, ValueError) as exc:  # weights do not fit, heads do not split
                        out.extend(Candidate(gpu.name, tp, pp, rep, "-", None, infeasible=str(exc), ep=ep)
                                   for rep in reps)
                        continue
                    for rep in reps:
                        for name in names:
                            for budget in (budgets if scheduler_class(name).chunks_prefills else [None]):
                                cfg = dataclasses.replace(shape, replicas=rep, scheduler=name, token_budget=budget,
                                                          max_batch_size=max_batch_size)
                                out.extend(Candidate(gpu.name, tp, pp, rep, label, budget, c, blocks, ep=ep)
                                           for label, c in _with_and_without_speculation(cfg))
    return out


def _with_and_without_speculation(cfg: SimConfig) -> list[tuple[str, SimConfig]]:
    """(label, config) of a candidate: with --speculative-config, where speculation is modelled (vLLM V1, one
    stage), both without it and with it ("+spec"), so that the plan compares them; elsewhere without it."""
    off = dataclasses.replace(cfg, speculative_config=None, spec_acceptance=None)
    if not cfg.speculative_config:
        return [(cfg.scheduler, cfg)]
    if not scheduler_class(cfg.scheduler).supports_speculation or cfg.pp > 1:
        return [(cfg.scheduler, off)]
    return [(cfg.scheduler, off), (f"{cfg.scheduler}+spec", cfg)]


def enumerate_disaggregated(model: str, gpus: Sequence[str], *, max_gpus: int, tps: Sequence[int] | None = None,
                            prefill_scheduler: str = "vllm", decode_scheduler: str = "vllm",
                            prefill_budget: int | None = None, max_batch_size: int | None = None,
                            base: SimConfig | None = None, link: LinkConfig | None = None,
                            max_replicas: int = 4) -> list[Candidate]:
    """Every prefill pool (TP, replicas) x decode pool (TP, replicas) of one GPU type within ``max_gpus`` (PP 1).

    The P:D ratios the planner compares with aggregated serving; a pool whose weights do not fit makes the
    candidate infeasible with the reason.
    """
    base = base or SimConfig()
    out: list[Candidate] = []
    tps = list(tps or powers_of_two(max_gpus))
    moe = get_model(model).is_moe

    def eps(tp: int) -> list[int]:  # a MoE pool splits its experts by TP, or spreads them over the TP group
        return [1, tp] if moe and tp > 1 else [1]

    for gpu_name in gpus:
        gpu = get_gpu(gpu_name).name
        for tp_p, tp_d in itertools.product(tps, tps):
            for n_p, n_d in itertools.product(range(1, max_replicas + 1), repeat=2):
                if n_p * tp_p + n_d * tp_d > max_gpus:
                    continue
                for ep_p, ep_d in itertools.product(eps(tp_p), eps(tp_d)):
                    out.append(_disaggregated_candidate(
                        dataclasses.replace(base, model=model, gpu=gpu, pp=1, max_batch_size=max_batch_size),
                        (tp_p, n_p, ep_p, prefill_scheduler, prefill_budget), (tp_d, n_d, ep_d, decode_scheduler),
                        link or LinkConfig()))
    return out


def _disaggregated_candidate(pool: SimConfig, prefill: tuple, decode: tuple, link: LinkConfig) -> Candidate:
    """One P:D deployment, or why it cannot run: (tp, replicas, ep, scheduler, budget) of each pool."""
    tp_p, n_p, ep_p, sched_p, budget = prefill
    tp_d, n_d, ep_d, sched_d = decode
    pre = dataclasses.replace(pool, tp=tp_p, replicas=n_p, ep=ep_p, scheduler=sched_p, token_budget=budget)
    dec = dataclasses.replace(pool, tp=tp_d, replicas=n_d, ep=ep_d, scheduler=sched_d, token_budget=None)
    cfg = DisaggConfig(pre, dec, link)
    try:
        cfg.check()
    except (InfeasibleConfigError, ValueError) as exc:
        return Candidate(pool.gpu, tp_p, 1, n_p, "-", None, infeasible=str(exc), disagg=cfg, ep=ep_p)
    return Candidate(pool.gpu, tp_p, 1, n_p, f"P/D {pre.scheduler}/{dec.scheduler}", budget, cfg, None, disagg=cfg,
                     ep=ep_p)
