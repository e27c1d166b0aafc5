"""N-gram speculative decoding in the real engine (issue 35): prompt lookup, greedy verification, KV consistency
after rejected drafts, per-request token counts through the shared vllm_v1 scheduler."""

from __future__ import annotations

import dataclasses
import json

import pytest

from engine.speculative import engine_spec_config, greedy_accept, ngram_drafts, prompt_lookup

NGRAM = json.dumps({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4})


# ---- prompt lookup and greedy acceptance, by hand (no torch) ----------------------------------------

def test_ngram_drafts_longest_suffix_earliest_occurrence():
    # suffix 1,2,3 occurred at 0: the two tokens after it
    assert ngram_drafts([1, 2, 3, 4, 1, 2, 3], 2, 3, 2) == [4, 1]
    # 5,6 occurs at 0 and 2 (not at 4: that is the suffix itself): the earliest wins
    assert ngram_drafts([5, 6, 5, 6, 5, 6], 2, 2, 1) == [5]
    # the longest suffix that occurred wins: 1,2,9 (after it 7) over 2,9 (after it 7 too) and 9 (after it 1)
    assert ngram_drafts([1, 2, 9, 7, 2, 9, 1, 2, 9], 1, 3, 1) == [7]
    assert ngram_drafts([8, 9, 1, 7, 2, 9], 1, 3, 2) == [1, 7]  # only the 1-gram 9 occurred before
    assert ngram_drafts([8, 9, 1, 7, 2, 9], 2, 3, 2) == []      # ... which is below prompt_lookup_min
    assert ngram_drafts([3, 4, 3, 4], 2, 2, 5) == [3, 4]        # the history ends after two drafts
    assert ngram_drafts([3], 2, 2, 3) == [] and ngram_drafts([3, 4, 3, 4], 2, 2, 0) == []


def test_greedy_accept_takes_the_leading_matches_then_the_targets_token():
    assert greedy_accept([5, 6, 7], [5, 6, 9, 3]) == (2, [5, 6, 9])
    assert greedy_accept([5, 6, 7], [5, 6, 7, 3]) == (3, [5, 6, 7, 3])
    assert greedy_accept([5, 6, 7], [4, 6, 7, 3]) == (0, [4])  # a later match after a miss counts for nothing


def test_prompt_lookup_defaults_and_refusals():
    assert prompt_lookup('{"method": "ngram", "num_speculative_tokens": 2}') == (5, 5)  # vLLM's defaults
    assert prompt_lookup('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_max": 3}') == (3, 3)
    assert prompt_lookup('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 2}') == (2, 2)
    with pytest.raises(ValueError, match="exceeds"):
        prompt_lookup('{"method": "ngram", "num_speculative_tokens": 2, "prompt_lookup_min": 4, '
                      '"prompt_lookup_max": 3}')
    with pytest.raises(ValueError, match="ngram only"):
        engine_spec_config('{"method": "eagle3", "num_speculative_tokens": 2}')
    assert engine_spec_config(NGRAM).num_speculative_tokens == 3  # no --spec-acceptance needed: it is measured


# ---- the runner's verify pass (tiny model, CPU, float32) ---------------------------------------------

torch = pytest.importorskip("torch")

from engine.replay import EngineConfig, replay  # noqa: E402
from engine.runner import ModelRunner  # noqa: E402
from engine.speculative import EngineSpeculation  # noqa: E402
from sim.batch import Batch, BatchItem  # noqa: E402
from sim.request import Request, TraceRequest  # noqa: E402
from sim.spec.state import SpecDecoding  # noqa: E402

PROMPT, OUTPUT = 21, 8


def _runner() -> ModelRunner:
    return ModelRunner(_spec(), device="cpu", dtype=torch.float32, kv_blocks=16, backend="sdpa", seed=3)


def _spec():
    from sim.catalog.models import get_model
    return get_model("tiny")


def _request() -> Request:
    r = Request("r0", 0.0, PROMPT, OUTPUT)
    r.block_table = list(range(4))  # 64 slots: the prompt, the outputs and the drafts
    return r


def _step(runner: ModelRunner, r: Request, new: int, *, all_logits: bool = False) -> None:
    """Run one item of ``r`` over its computed tokens; advance its counters as the scheduler does."""
    runner.execute(Batch([BatchItem(r, new, r.num_computed)]), all_logits=all_logits)


def _reference():
    """Plain greedy decoding: every output id, and the logits each decode step computed."""
    runner, r = _runner(), _request()
    _step(runner, r, PROMPT)
    r.num_computed, r.num_generated = PROMPT, 1
    logits = []
    while r.num_generated < OUTPUT:
        _step(runner, r, 1, all_logits=True)
        logits.append(runner.last_logits[0][0].clone())
        r.num_computed += 1
        r.num_generated += 1
    return runner.token_ids(r)[PROMPT:], logits


def test_verify_accepts_exactly_the_matching_drafts_and_kv_stays_consistent():
    """Drafts = the reference's next two ids, then a wrong one: two accepted, the target's third id emitted; the
    rejected position's KV slot is overwritten by the next step, whose logits equal plain decoding's."""
    ref, ref_logits = _reference()
    runner, r = _runner(), _request()
    state = SpecDecoding(engine_spec_config(NGRAM), 0)
    spec = runner.speculation = EngineSpeculation(state, runner, 2, 4)
    _step(runner, r, PROMPT)
    r.num_computed, r.num_generated = PROMPT, 1
    wrong = (ref[3] + 1) % _spec().vocab_size
    state.proposed[r] = 3
    spec.drafts[r.request_id] = [ref[1], ref[2], wrong]
    _step(runner, r, 4, all_logits=True)  # the verify: the last known token and three drafts, one pass
    assert state.outcomes[r] == 2
    assert runner.token_ids(r)[PROMPT:] == ref[:4]  # t1, then t2 and t3 accepted, then the target's t4
    for i in range(3):  # the verify's logits at each position are those plain decoding computed there
        torch.testing.assert_close(runner.last_logits[0][i], ref_logits[i], rtol=1e-4, atol=1e-4)
    state.verify(r, 0)  # what on_batch_done does with the outcome: 1 + 2 tokens
    r.num_computed, r.num_generated = PROMPT + 3, 4
    _step(runner, r, 1, all_logits=True)  # over the rejected draft's slot, rewritten now
    torch.testing.assert_close(runner.last_logits[0][0], ref_logits[3], rtol=1e-4, atol=1e-4)
    assert runner.token_ids(r)[PROMPT:] == ref[:5]
    assert state.per_request[r.index] == [1, 3, 2]  # one verify, three drafts, two accepted


def test_a_verify_of_drafts_never_proposed_is_refused():
    runner, r = _runner(), _request()
    state = SpecDecoding(engine_spec_config(NGRAM), 0)
    runner.speculation = EngineSpeculation(state, runner, 2, 4)
    _step(runner, r, PROMPT)
    r.num_computed, r.num_generated = PROMPT, 1
    with pytest.raises(ValueError, match="0 proposed"):
        _step(runner, r, 3)


# ---- through the shared scheduler -------------------------------------------------------------------

TRACE = [TraceRequest(f"q{i}", 0.0, p, o) for i, (p, o) in enumerate([(40, 40), (17, 30), (90, 45), (33, 1),
                                                                      (64, 50)])]
BASE = EngineConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", kv_blocks=96, warmup=0,
                    offline=True, scheduler="vllm_v1")


@pytest.fixture(scope="module")
def runs():
    return replay(TRACE, BASE), replay(TRACE, dataclasses.replace(BASE, speculative_config=NGRAM))


def test_speculative_replay_emits_the_same_tokens_and_counts(runs):
    """Greedy verification is lossless: every request gets exactly its output ids of a run without speculation,
    in fewer iterations; the counts per request add up (each verify emits 1 + its accepted drafts)."""
    plain, spec = runs
    assert spec.token_ids == plain.token_ids
    assert all(len(spec.token_ids[tr.request_id]) == tr.output_tokens for tr in TRACE)
    sp = spec.summary["speculative"]
    # random weights decode greedily into loops that prompt lookup then predicts: acceptance neither 0 nor 1
    assert 0 < sp["accepted_tokens"] < sp["proposed_tokens"]
    assert len(spec.batches) < len(plain.batches)
    req = spec.requests.set_index("request_id")
    for tr in TRACE:
        row = req.loc[tr.request_id]
        # outputs = the prefill's token + one per plain decode + (1 + accepted) per verify
        plain_decodes = tr.output_tokens - 1 - row["spec_steps"] - row["spec_accepted"]
        assert plain_decodes >= 0 and row["output_tokens"] == tr.output_tokens
    assert req["spec_accepted"].sum() == sp["accepted_tokens"] and req["spec_proposed"].sum() == sp["proposed_tokens"]
    assert spec.batches["spec_accepted"].sum() == sp["accepted_tokens"]
    assert req.loc["q3", "spec_steps"] == 0  # one output token: nothing to draft
    counts = sp["draft_length_counts"]
    assert sum(counts) == sp["lookups"] and sum(i * c for i, c in enumerate(counts)) == sp["proposed_tokens"]
    assert sp["acceptance"]["model"] == "measured"


def test_engine_refuses_speculation_outside_vllm_v1():
    with pytest.raises(ValueError, match="vLLM V1 only"):
        replay(TRACE[:1], dataclasses.replace(BASE, scheduler="vllm", speculative_config=NGRAM))


def test_speculation_survives_preemption_and_small_budgets():
    """14 KV blocks for requests needing 28 at once: recompute preemptions drop proposals (vLLM clears them), a
    20-token budget shrinks drafts; the outputs stay those of the run without speculation."""
    cfg = dataclasses.replace(BASE, kv_blocks=14, token_budget=20)
    plain, spec = replay(TRACE, cfg), replay(TRACE, dataclasses.replace(cfg, speculative_config=NGRAM))
    assert spec.summary["kv_cache"]["preemptions"] > 0 and spec.summary["speculative"]["accepted_tokens"] > 0
    assert spec.token_ids == plain.token_ids
