"""The cost wrapper: the verify pass as scheduled plus the drafter's passes, hand-derived on stub models."""

from __future__ import annotations

import pytest

from sim.batch import Batch, BatchItem
from sim.cost.interface import CostModel, StageCost
from sim.request import Request
from sim.spec.config import parse_speculative_config
from sim.spec.cost import EAGLE3_DRAFT_VOCAB, NGRAM_HOST_S, SpecCost, verify_items


class Stub(CostModel):
    """Every batch: 10 s on the device, 1 s on the host; its breakdown: 4 layers of 0.5 s, LM head 0.2, sampling 0.1."""

    name = "stub"
    layers = (4,)

    def stage_cost(self, batch, stage):
        return StageCost(10.0)

    def host_time(self, batch):
        return 1.0

    def breakdown(self, batch, stage):
        return {"qkv_proj": 4 * 0.5, "lm_head": 0.2, "sampling": 0.1, "embedding": 7.0}


def _decoding(name, prompt, generated):
    r = Request(name, 0.0, prompt, 100)
    r.num_computed, r.num_generated = prompt + generated - 1, generated
    return r


def _batch():
    """A verifies 1 + 3 (k=3), B 1 + 1 (k=1), C is a prefill chunk of 5 (not a verify), D a plain decode."""
    a, b, d = _decoding("A", 10, 2), _decoding("B", 20, 1), _decoding("D", 5, 3)
    c = Request("C", 0.0, 30, 10)
    c.num_computed = 10
    return Batch([(d, 1, d.num_computed), BatchItem(a, 4, a.num_computed), BatchItem(b, 2, b.num_computed),
                  BatchItem(c, 5, 10)], num_decodes=1)


def _spec(method, k=3, model=None):
    m = f', "model": "{model}"' if model else ""
    return parse_speculative_config(f'{{"method": "{method}", "num_speculative_tokens": {k}{m}}}', "0.5")


def test_verify_items_are_the_drafting_decodes_only():
    assert verify_items(_batch()) == ([4, 2], [11, 20], [3, 1])


def test_a_head_drafts_one_layer_plus_the_head_per_pass():
    # k = 3 at most: three passes (the verified positions, then two of one token); each 0.5 + 0.2 + 0.1
    cost = SpecCost(Stub(), _spec("mtp"), target_vocab=128256)
    assert cost.stage_cost(_batch(), 0).time == pytest.approx(10.0 + 3 * 0.8)
    assert cost.host_time(_batch()) == 1.0
    assert cost.breakdown(_batch(), 0)["spec_draft"] == pytest.approx(2.4)


def test_eagle3_prices_its_reduced_vocabulary():
    cost = SpecCost(Stub(), _spec("eagle3"), target_vocab=128256)
    per_pass = 0.5 + 0.1 + 0.2 * EAGLE3_DRAFT_VOCAB / 128256
    assert cost.stage_cost(_batch(), 0).time == pytest.approx(10.0 + 3 * per_pass)


def test_ngram_is_host_time_only():
    cost = SpecCost(Stub(), _spec("ngram"))
    assert cost.stage_cost(_batch(), 0).time == 10.0
    assert cost.host_time(_batch()) == pytest.approx(1.0 + 2 * NGRAM_HOST_S)  # two drafting requests


def test_a_draft_model_runs_its_own_passes():
    class Draft(Stub):
        def stage_cost(self, batch, stage):
            return StageCost(0.25)
    cost = SpecCost(Stub(), _spec("draft_model", model="llama-3.2-1b"), draft=Draft())
    assert cost.stage_cost(_batch(), 0).time == pytest.approx(10.0 + 3 * 0.25)
    with pytest.raises(ValueError, match="draft model's cost model"):
        SpecCost(Stub(), _spec("draft_model", model="llama-3.2-1b"))


def test_a_batch_without_drafts_costs_what_the_target_says():
    d = _decoding("D", 5, 3)
    assert SpecCost(Stub(), _spec("mtp")).stage_cost(Batch([(d, 1, d.num_computed)], num_decodes=1), 0).time == 10.0
