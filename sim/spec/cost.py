"""Speculative decoding's price: the target's verify pass (the batch as scheduled) plus the drafter's work.

A verify item is a request's k+1 positions over its context (the inner model prices it as a chunk). The
drafter's cost is added to the last pipeline stage, one proposal step at a time, as vLLM's proposers run:

- ``eagle``/``eagle3``/``mtp``: a one-layer head on the target's hidden states: its first pass reads the k+1
  verified positions, each further pass one token per request; each pass is priced as one decoder layer of the
  target (the stage's layer ops divided by its layers) plus the final norm, LM head and sampling (EAGLE-3's head
  has its own 32k-token vocabulary: the LM head is scaled to it);
- ``draft_model``: the same passes through a whole draft model priced by the same cost model family;
- ``ngram``: no device work; host time per drafting request (prompt lookup on the CPU).
"""

from __future__ import annotations

from typing import Any

from sim.batch import Batch, synthetic_batch
from sim.cost.interface import CostModel, DelegatingCost, StageCost
from sim.ops import LAST_STAGE_OPS, LAYER_OPS, MOE_OPS
from sim.spec.config import HEAD_METHODS, SpecConfig

#: EAGLE-3 heads predict over a reduced vocabulary: draft_vocab_size 32000 in yuhuili/EAGLE3-LLaMA3.1-Instruct-8B's
#: config.json (the EAGLE-3 paper's released heads)
EAGLE3_DRAFT_VOCAB = 32000
#: host seconds of one request's n-gram lookup per step: measured, about 50 us for a 4096-token request with a
#: NumPy scan on this project's 2-core CPU under load (benchmarks/spec_decode.py --ngram-host: 47-53 us); vLLM's
#: NgramProposer runs a numba-compiled scan, likely faster: an upper-side figure, not a GPU server's measurement
NGRAM_HOST_S = 50e-6


def verify_items(batch: Batch) -> tuple[list[int], list[int], list[int]]:
    """(new tokens, cached tokens, drafts) of the batch's verify items: k+1 >= 2 positions over a context that
    ends one short of the request's known tokens (a prefill chunk never does: it stops at or before them)."""
    news, cached, ks = [], [], []
    for r, new, c in batch.prefill_items:
        if new > 1 and c == r.prompt_tokens + r.num_generated - 1:
            news.append(new)
            cached.append(c)
            ks.append(new - 1)
    return news, cached, ks


class SpecCost(DelegatingCost):
    """``inner``'s price of every batch plus the drafter's (see the module docstring)."""

    def __init__(self, inner: CostModel, spec: SpecConfig, target_vocab: int | None = None,
                 draft: CostModel | None = None) -> None:
        super().__init__(inner)
        self.spec = spec
        self.draft = draft
        self.last = inner.num_stages - 1
        self.head_vocab_scale = (min(1.0, EAGLE3_DRAFT_VOCAB / target_vocab)
                                 if spec.method == "eagle3" and target_vocab else 1.0)
        if spec.method == "draft_model" and draft is None:
            raise ValueError("draft_model speculation needs the draft model's cost model")

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        c = self.inner.stage_cost(batch, stage)
        if stage != self.last or self.spec.method == "ngram":
            return c
        d = self.draft_time(batch)
        return c._replace(time=c.time + d) if d else c

    def host_time(self, batch: Batch) -> float:
        h = self.inner.host_time(batch)
        if self.spec.method == "ngram":
            h += NGRAM_HOST_S * len(verify_items(batch)[2])
        return h

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        out = dict(self.inner.breakdown(batch, stage))
        if stage == self.last and self.spec.method != "ngram":
            out["spec_draft"] = self.draft_time(batch)
        return out

    def draft_time(self, batch: Batch) -> float:
        """Device seconds of the drafter's passes that proposed this batch's drafts."""
        news, cached, ks = verify_items(batch)
        if not ks:
            return 0.0
        # pass 1 reads the verified positions; pass j >= 2 one token per request still drafting
        passes = [synthetic_batch([], list(zip(news, cached)), prefix="d")]
        for j in range(2, max(ks) + 1):
            ctx = [c + j for c, k in zip(cached, ks) if k >= j]
            passes.append(synthetic_batch(ctx, [], prefix="d"))
        return sum(self._pass_time(b) for b in passes)

    def _pass_time(self, b: Batch) -> float:
        if self.spec.method in HEAD_METHODS:
            return self.head_pass(b)
        return sum(self.draft.stage_cost(b, s).time for s in range(self.draft.num_stages))

    def head_pass(self, b: Batch) -> float:
        """One head pass: a decoder layer of the target (the last stage's layer ops over its layers) and the
        final norm, LM head and sampling. A model without an op breakdown (constant) drafts for free."""
        ops = self.inner.breakdown(b, self.last)
        layers = _stage_layers(self.inner, self.last)
        layer = sum(ops.get(op, 0.0) for op in LAYER_OPS + MOE_OPS) / layers if layers else 0.0
        head = sum(ops.get(op, 0.0) for op in LAST_STAGE_OPS if op != "lm_head")
        return layer + head + ops.get("lm_head", 0.0) * self.head_vocab_scale

    def describe(self) -> dict:
        d = dict(self.inner.describe())
        d["speculative"] = {**self.spec.describe(), "draft_cost_model": self.draft.describe() if self.draft else None,
                            "ngram_host_s_per_request": NGRAM_HOST_S if self.spec.method == "ngram" else None}
        return d


def _stage_layers(cost: Any, stage: int) -> int:
    """Decoder layers of ``cost``'s ``stage`` (0: unknown, e.g. the constant model)."""
    layers = getattr(cost, "layers", None)
    try:
        return int(layers[stage]) if layers is not None else 0
    except (IndexError, TypeError):
        return 0
