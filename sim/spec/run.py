"""Speculative decoding in a simulated deployment: checks, the drafter's memory, the cost wrapper, the outputs."""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.catalog.models import ModelSpec, get_model
from sim.cost.interface import CostModel
from sim.gap_log import GapLog
from sim.metrics import PERCENTILES, describe
from sim.spec.config import HEAD_METHODS, SpecConfig, parse_speculative_config
from sim.spec.cost import EAGLE3_DRAFT_VOCAB, SpecCost
from sim.spec.state import SpecDecoding
from sim.table import column


def spec_of(config: Any) -> SpecConfig | None:
    """The deployment's speculative decoding (None: off); refuses what is not modelled, in one line."""
    text = getattr(config, "speculative_config", None)
    if not text:
        if getattr(config, "spec_acceptance", None):
            raise ValueError("--spec-acceptance sets the acceptance of speculative decoding: add "
                             "--speculative-config")
        return None
    spec = parse_speculative_config(text, config.spec_acceptance)
    from sim.schedulers import scheduler_class
    if not scheduler_class(config.scheduler).supports_speculation:
        raise ValueError(f"--speculative-config is modelled for vLLM V1 only: use --scheduler vllm_v1 "
                         f"(not {config.scheduler})")
    if getattr(config, "pp", 1) > 1:
        raise ValueError("--speculative-config with --pp > 1 is not modelled here: use one pipeline stage")
    if spec.method == "draft_model":
        get_model(spec.model)  # an unknown draft model fails here, before any simulation
    return spec


def drafter_memory(spec: SpecConfig, model: ModelSpec, tp: int, dtype_bytes: int) -> tuple[int, float]:
    """(drafter weight bytes per GPU, extra KV bytes per token as a fraction of the target's) that vLLM's
    drafter takes from the KV cache: a head is one target-shaped layer (EAGLE-3 adds its 3h->h fusion and a
    32k-token LM head; MTP shares the target's embedding and head) with its own KV layer; a draft model is whole."""
    if spec.method == "ngram":
        return 0, 0.0
    if spec.method in HEAD_METHODS:
        layer = model.layer_params(tp, layer=model.num_layers - 1)
        extra = 0
        if spec.method == "eagle3":
            extra = 3 * model.hidden_size * model.hidden_size // tp + EAGLE3_DRAFT_VOCAB * model.hidden_size // tp
        return (layer + extra) * dtype_bytes, 1.0 / model.num_layers
    draft = get_model(spec.model)
    return draft.weight_bytes(dtype_bytes, tp), draft.kv_bytes_per_token(tp=tp) / model.kv_bytes_per_token(tp=tp)


def blocks_with_drafter(num_blocks: int, memory: dict, spec: SpecConfig, model: ModelSpec, tp: int,
                        dtype_bytes: int) -> int:
    """KV blocks left once the drafter's weights and its KV share of every block are taken (vLLM puts the
    drafter's KV layers in the same block tables); records the split in ``memory``."""
    weights, kv_frac = drafter_memory(spec, model, tp, dtype_bytes)
    per_block = memory.get("bytes_per_block")
    if not per_block:  # a fixed --kv-blocks: the user's capacity stands
        return num_blocks
    kv_bytes = num_blocks * per_block - weights
    blocks = max(1, int(kv_bytes // (per_block * (1.0 + kv_frac))))
    memory["speculative"] = {"drafter_weight_bytes": weights, "drafter_kv_fraction": kv_frac,
                             "num_blocks_without_drafter": num_blocks}
    memory["num_blocks"] = blocks
    return blocks


def spec_cost(cost_model: CostModel, spec: SpecConfig, config: Any, model: ModelSpec) -> SpecCost:
    """The cost wrapper; a draft model is priced by the target's cost model family where it can be (the kernel
    databases on the same GPU), else by the roofline."""
    draft = None
    if spec.method == "draft_model":
        dm = get_model(spec.model)
        kw = dict(config.roofline_kwargs(dm), pp=1, ep=1)
        if getattr(cost_model, "name", "") == "kernels":
            from sim.cost.kernels.model import KernelCostModel
            kw.pop("pp")
            tp = kw.pop("tp")
            draft = KernelCostModel(dm, config.gpu, tp=tp, pp=1,
                                    kernel_db=f"{cost_model.framework}:{cost_model.version}", **kw)
        else:
            from sim.cost.roofline import RooflineCostModel
            draft = RooflineCostModel(dm, config.gpu, **kw)
    return SpecCost(cost_model, spec, model.vocab_size, draft)


def enable(schedulers: list, spec: SpecConfig, seed: int, max_model_len: int | None) -> None:
    """Turn speculative decoding on in every replica's scheduler (each with its own state, the same seed)."""
    for s in schedulers:
        s.enable_speculation(SpecDecoding(spec, seed, max_model_len))


def chunk_gaps(gaps: GapLog) -> GapLog:
    """The gaps between distinct emission times (ITL per chunk: a burst's tokens arrive together, gap 0)."""
    vals = gaps.values()
    if vals is not None:
        out = GapLog(gaps.exact_limit)
        out.add(vals[vals >= 1e-9])
        return out
    out = gaps.merge(GapLog(0))  # a histogram copy; its zero bucket dropped below
    out.count -= out.zeros
    out.zeros = 0
    return out


def add_spec_outputs(summary: dict, batches: Any, req_df: Any, requests: list, schedulers: list,
                     gaps: GapLog, replicas: range | None = None) -> tuple[Any, Any]:
    """summary.json's ``speculative`` section; requests.csv's and batches.csv's speculation columns (``Table``s or
    DataFrames, returned as they came)."""
    per: dict[int, list[int]] = {}
    for s in schedulers:
        per.update(s.spec.per_request)
    order = sorted(r.index for r in requests)  # requests_frame's rows, in trace order
    steps = np.array([per.get(i, (0, 0, 0))[0] for i in order], dtype=np.int64)
    proposed = np.array([per.get(i, (0, 0, 0))[1] for i in order], dtype=np.int64)
    accepted = np.array([per.get(i, (0, 0, 0))[2] for i in order], dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = np.where(proposed > 0, accepted / proposed, np.nan)
        length = np.where(steps > 0, (accepted + steps) / steps, np.nan)
    req_df = req_df.assign(spec_steps=steps, spec_proposed=proposed, spec_accepted=accepted,
                           spec_acceptance_rate=rate, spec_mean_accepted_length=length)
    if len(batches):
        cols = {name: np.zeros(len(batches), dtype=np.int64) for name in ("spec_proposed", "spec_accepted",
                                                                           "kv_spec_blocks")}
        for i, s in zip(replicas or range(len(schedulers)), schedulers):
            rows = column(batches, "replica") == i
            ids = column(batches, "batch_id")[rows]
            for name, log in (("spec_proposed", s.spec.batch_proposed), ("spec_accepted", s.spec.batch_accepted),
                              ("kv_spec_blocks", s.spec.batch_spec_blocks)):
                a = np.zeros(max(len(log), int(ids.max()) + 1 if ids.size else 0), dtype=np.int64)
                a[:len(log)] = np.asarray(log, dtype=np.int64)
                cols[name][rows] = a[ids]
        batches = batches.assign(**cols)
    first = batches[batches["stage"] == 0] if len(batches) else batches
    iterations = len(first)
    tot_p, tot_a, tot_s = int(proposed.sum()), int(accepted.sum()), int(steps.sum())
    out_tokens = summary["throughput"]["output_tokens"]
    spec = schedulers[0].spec.config
    pos_p = [sum(s.spec.position_proposed[i] for s in schedulers) for i in range(spec.num_speculative_tokens)]
    pos_a = [sum(s.spec.position_accepted[i] for s in schedulers) for i in range(spec.num_speculative_tokens)]
    summary["speculative"] = {
        **spec.describe(),
        "verify_steps": tot_s, "proposed_tokens": tot_p, "accepted_tokens": tot_a,
        "acceptance_rate": tot_a / tot_p if tot_p else None,
        "mean_accepted_length": (tot_a + tot_s) / tot_s if tot_s else None,
        # as vLLM logs it (per position: accepted over drafts that reached it): what --spec-acceptance reads back
        "per_position_acceptance": [a / p if p else None for a, p in zip(pos_a, pos_p)],
        "request_acceptance_rate": describe(rate),
        "request_mean_accepted_length": describe(length),
        "output_tokens_per_iteration": out_tokens / iterations if iterations else None,
        "itl_per_token_s": gaps.describe(PERCENTILES),
        "itl_per_chunk_s": chunk_gaps(gaps).describe(PERCENTILES),
        "kv_spec_blocks": {"mean": float(column(first, "kv_spec_blocks").mean()) if iterations else 0.0,
                           "max": int(column(first, "kv_spec_blocks").max()) if iterations else 0},
    }
    return batches, req_df
