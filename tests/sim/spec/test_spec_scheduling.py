"""Speculative decoding in vllm_v1, hand-derived on the constant-cost model (every iteration 1 s, no host time).

One request, prompt 8, 10 outputs, k = 3: step 1 (0-1 s) prefills and samples token 1 at t=1; from then on a
decode verifies its token plus min(3, outputs left - 1) drafts (no draft past max_tokens)."""

from __future__ import annotations

import pytest

from sim.gap_log import GapLog
from sim.spec.run import chunk_gaps
from tests.sim.spec.harness import run_spec


def test_acceptance_one_emits_bursts_of_k_plus_one_at_exact_times():
    # t=2: 1+3 tokens (5 in all), t=3: 1+3 (9), t=4: k = min(3, 10-9-1) = 0, one plain decode (10)
    (a,), comps, sched = run_spec([(0.0, 8, 10)], acceptance="1.0")
    assert a.token_times == [1.0, 2.0, 2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 4.0]
    assert [c for _t, c in comps] == [(("A", 8, 0),), (("A", 4, 8),), (("A", 4, 12),), (("A", 1, 16),)]
    assert a.completion_time == 4.0 and a.num_generated == 10
    assert sched.spec.per_request[a.index] == [2, 6, 6]  # 2 verify steps, 6 drafted, 6 accepted
    assert sched.bm.num_used == 0  # every block back once it finished


def test_acceptance_zero_emits_one_token_a_step_and_shrinks_drafts_near_max_tokens():
    # one token per step, as without speculation; drafts 3,3,3,3,3,3 then 2 (outputs left 3), 1, 0
    (a,), comps, sched = run_spec([(0.0, 8, 10)], acceptance="0.0")
    assert a.token_times == [float(t) for t in range(1, 11)]
    news = [c[0][1] for _t, c in comps]
    assert news == [8, 4, 4, 4, 4, 4, 4, 3, 2, 1]
    cached = [c[0][2] for _t, c in comps]
    assert cached == [0] + list(range(8, 17))  # rejected positions are not computed: the context grows by one
    assert sched.spec.per_request[a.index] == [8, 6 * 3 + 2 + 1, 0]


def test_free_drafting_with_acceptance_zero_matches_the_run_without_speculation():
    # the constant model prices a step the same whatever its tokens and a head drafts for free there
    spec = [(0.0, 8, 10), (0.5, 20, 7), (2.0, 5, 12)]
    off, _, _ = run_spec(spec, method=None)
    on, _, _ = run_spec(spec, acceptance="0.0")
    assert [r.token_times for r in on] == [r.token_times for r in off]


def test_draft_tokens_count_against_the_token_budget():
    # budget 5: step 1 prefills both prompts (2 + 2); step 2: A verifies 1 + 3, B gets the one token left (no draft)
    _, comps, _ = run_spec([(0.0, 2, 6), (0.0, 2, 6)], budget=5, acceptance="0.0")
    assert comps[0][1] == (("A", 2, 0), ("B", 2, 0))
    assert sorted(comps[1][1]) == [("A", 4, 2), ("B", 1, 2)]
    assert sum(n for _r, n, _c in comps[1][1]) == 5


@pytest.mark.parametrize("method, lookahead", [("mtp", 3), ("ngram", 0)])
def test_kv_slots_for_draft_and_lookahead_positions(method, lookahead):
    # block size 4, prompt 3: the first verify needs 3 + 1 + 3 slots, plus 3 more for a head's lookahead
    # (vLLM's num_lookahead_tokens): 10 tokens -> 3 blocks (mtp), 7 -> 2 blocks (ngram); one would do without drafts
    _, comps, sched = run_spec([(0.0, 3, 8)], method=method, acceptance="0.0", block_size=4)
    assert comps[1][1] == (("A", 4, 3),)
    assert sched.used_log[1] == (3 if lookahead else 2)
    assert sched.spec.batch_spec_blocks[1] == sched.used_log[1] - 1  # blocks held only for speculative slots
    assert sched.spec.batch_proposed[1] == 3


def test_the_context_limit_caps_the_drafts():
    # max_model_len 12, prompt 8: the first verify may reach position 10 (one short of the limit): k = 12 - 2 - 8
    _, comps, _ = run_spec([(0.0, 8, 4)], acceptance="0.0", max_model_len=12)
    assert comps[1][1] == (("A", 3, 8),)


def test_itl_per_chunk_drops_the_zero_gaps_of_a_burst():
    (a,), _, _ = run_spec([(0.0, 8, 10)], acceptance="1.0")
    log = GapLog()
    import numpy as np
    log.add(np.diff(np.asarray(a.token_times)))
    assert log.count == 9 and log.describe((50,))["p50"] == 0.0
    chunks = chunk_gaps(log)
    assert chunks.count == 3 and list(chunks.values()) == [1.0, 1.0, 1.0]
    hist = chunk_gaps(log.merge(GapLog(0)))  # the histogram form drops its zero bucket the same way
    assert hist.count == 3 and hist.zeros == 0 and abs(hist.percentiles([50])[0] - 1.0) <= 0.005


def test_draws_are_seeded_per_request():
    spec = [(0.0, 8, 40), (0.0, 16, 30)]
    one = run_spec(spec, acceptance="0.6", seed=1)[0]
    again = run_spec(spec, acceptance="0.6", seed=1)[0]
    other = run_spec(spec, acceptance="0.6", seed=2)[0]
    assert [r.token_times for r in one] == [r.token_times for r in again]
    assert [r.token_times for r in one] != [r.token_times for r in other]
    # a request's draws do not depend on what else runs: alone, A accepts the same tokens
    alone = run_spec(spec[:1], acceptance="0.6", seed=1)[2]
    assert alone.spec.per_request[0] == run_spec(spec, acceptance="0.6", seed=1)[2].spec.per_request[0]


def test_only_vllm_v1_speculates():
    from sim.kv.block_manager import BlockManager
    from sim.schedulers import SchedulerConfig, make_scheduler
    s = make_scheduler("sarathi", SchedulerConfig(), BlockManager(10))
    assert s.speculative is False
    with pytest.raises(ValueError, match="vLLM V1 only"):
        s.enable_speculation(object())


def test_an_executor_that_drafts_and_verifies_for_real_overrides_the_model():
    # the engine's hooks: its proposer finds 2 drafts (of 3 allowed) and the target accepts 1 of them each step
    from sim.cost.constant import ConstantCostModel

    class Executor(ConstantCostModel):
        def stage_cost(self, batch, stage):
            for r, new, _c in batch.entries:
                if new > 1 and r in sched.spec.proposed:
                    sched.spec.outcomes[r] = 1
            return super().stage_cost(batch, stage)

    from sim.kv.block_manager import BlockManager
    from sim.schedulers import SchedulerConfig, make_scheduler
    from sim.serving.cluster import run_cluster
    from sim.spec import SpecDecoding, parse_speculative_config
    from tests.helpers import make_requests
    (a,) = make_requests([(0.0, 8, 7)])
    sched = make_scheduler("vllm_v1", SchedulerConfig(), BlockManager(100, 16, 0.0))
    spec = SpecDecoding(parse_speculative_config('{"method": "ngram", "num_speculative_tokens": 3}', "0.0"))
    spec.proposer = lambda r, k: 2
    sched.enable_speculation(spec)
    run_cluster([a], [sched], Executor(1.0), 1, "round_robin")
    # t=1 token 1; t=2, 3: two drafts, one accepted: 2 tokens each (3, 5); t=4: 1 draft allowed (7 - 5 - 1), kept
    assert a.token_times == [1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0]
    assert spec.per_request[a.index] == [3, 5, 3]
