"""Decode-only stretches (sim.serving.stretch): where each policy's stretch stops, and that it changes nothing.

Constant-cost runs (1 s an iteration, no host time), so every time is a whole number derived by hand; each run
is compared with the same run iteration by iteration (``Replica.decode_stretches = False``).
"""

from __future__ import annotations

import pytest

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.kv.prefix_cache import CachingBlockManager
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.serving import stretch
from sim.serving.async_loop import AsyncReplica
from sim.serving.cluster import Replica, run_cluster
from tests.helpers import make_requests

POLICIES = ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1")
PAGED = ("vllm", "sarathi", "vllm_v1")  # grow blocks as they decode (and preempt when they run out)


def _run(monkeypatch, spec, policy, *, stretches=True, blocks=1000, block_size=16, caching=False, replicas=1,
         budget=None, max_batch=64, host=0.0, loop=None):
    """(token times by request, batches rows, micro-batch rows, preemptions, the stretches' (end, host done))."""
    seen: list = []
    real = stretch.run_stretch

    def spy(*a):
        done = real(*a)
        if done is not None:
            seen.append(done)
        return done
    with monkeypatch.context() as m:
        m.setattr(Replica, "decode_stretches", stretches)
        m.setattr(stretch, "run_stretch", spy)
        reqs = make_requests(spec)
        manager = CachingBlockManager if caching else BlockManager
        scheds = [make_scheduler(policy, SchedulerConfig(max_batch, budget), manager(blocks, block_size, 0.0))
                  for _ in range(replicas)]
        rec = run_cluster(reqs, scheds, ConstantCostModel(1.0, host=host), 1, replica_cls=loop)
    times = {r.request_id: list(r.token_times) for r in reqs}
    return (times, rec.stage_rows.tolist(), rec.microbatch_rows.tolist(), sum(s.num_preemptions for s in scheds),
            seen)


def _same_as_reference(monkeypatch, spec, policy, **kw):
    fast = _run(monkeypatch, spec, policy, **kw)
    ref = _run(monkeypatch, spec, policy, stretches=False, **kw)
    assert fast[:4] == ref[:4]
    assert ref[4] == []
    return fast


@pytest.mark.parametrize("policy", POLICIES)
def test_a_stretch_stops_before_the_step_that_produces_a_last_token(monkeypatch, policy):
    # prefill [0,1] -> token at 1; decode [1,2] -> 2; a stretch of [2,3] and [3,4]; the last token's step [4,5] as usual
    times, rows, micro, _, seen = _same_as_reference(monkeypatch, [(0.0, 10, 5)], policy)
    assert times == {"A": [1.0, 2.0, 3.0, 4.0, 5.0]}
    assert seen == [(4.0, 3.0)]  # (the stretch's end, its last step's host-done time: no host time here)
    assert [rows[i + 2] for i in range(0, len(rows), 12)] == [0, 1, 2, 3, 4]  # one batches.csv row per iteration
    assert [micro[i + 2] for i in range(0, len(micro), 5)] == [0.0, 1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "faster_transformer"])  # FT: below
@pytest.mark.parametrize("arrival", [4.5, 5.0])
def test_a_stretch_stops_before_the_step_during_or_at_whose_end_a_request_arrives(monkeypatch, policy, arrival):
    # A decodes from t=1; B arrives at 4.5 (or exactly as the step [4,5] ends): the stretch ends at 4
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 10), (arrival, 10, 3)], policy)
    assert seen[0] == (4.0, 3.0)
    assert times["A"][:4] == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("policy", PAGED)
def test_a_stretch_stops_where_the_decodes_need_more_blocks_than_are_free(monkeypatch, policy):
    # 4-token blocks, 7 of them: two 6-token prompts (2 blocks each) decode until the cache runs dry and one is
    # preempted; the stretch hands out the same blocks as the iterations would and stops before the preemption
    _, _, _, preemptions, seen = _same_as_reference(monkeypatch, [(0.0, 6, 14), (0.0, 6, 14)], policy,
                                                           blocks=7, block_size=4)
    assert preemptions >= 1 and seen


@pytest.mark.parametrize("policy", POLICIES)
def test_stretches_with_prefix_caching_share_the_same_blocks(monkeypatch, policy):
    spec = [(0.0, 40, 30), (0.5, 40, 20), (30.0, 40, 9)]
    _, _, _, _, seen = _same_as_reference(monkeypatch, spec, policy, caching=True, blocks=20, block_size=4)
    assert seen


@pytest.mark.parametrize("policy", POLICIES)
def test_a_stretch_goes_on_while_the_first_waiting_request_cannot_be_admitted(monkeypatch, policy):
    # one request at a time: B arrives at 0.5 and waits (the batch cap holds it) until A is done, so A's stretch
    # runs from 2 to the step before A's last token, past B's arrival
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 8, 12), (0.5, 8, 4)], policy, max_batch=1)
    assert seen[0] == (11.0, 10.0) and times["A"][-1] == 12.0


def test_no_stretch_while_a_waiting_request_could_be_admitted(monkeypatch):
    # Sarathi, budget 2: A and B's decodes fill it, so C (KV to spare) waits, admissible: each step is decided anew
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 4, 10), (0.0, 4, 10), (0.5, 4, 3)], "sarathi", budget=2)
    assert all(end > times["C"][0] for end, _ in seen)


def test_faster_transformer_stretches_past_arrivals_and_a_waiting_queue(monkeypatch):
    # FT admits only into an empty batch: A's decodes [1,2] .. [10,11] go on while B arrives (1.5) and waits; the
    # stretch after A's first decode runs to the step before A's last token: it ends at 11
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 8, 12), (1.5, 8, 4), (6.0, 8, 4)],
                                         "faster_transformer")
    assert seen[0] == (11.0, 10.0)
    assert times["A"][-1] == 12.0 and times["B"][0] == 13.0  # B's prefill [12,13] after A's last step
    # with prefix caching (a router may read the cache as a request arrives) arrivals stop it as for the others
    *_, seen = _same_as_reference(monkeypatch, [(0.0, 8, 12), (1.5, 8, 4)], "faster_transformer", caching=True)
    assert all(end > 12.0 for end, _ in seen)  # only B, alone after A


def test_no_stretch_where_the_budget_cuts_the_decodes(monkeypatch):
    # Sarathi with a budget of one token decodes one request of two per iteration: a stretch only once one is done
    times, *_, seen = _same_as_reference(monkeypatch, [(0.0, 4, 8), (0.0, 4, 8)], "sarathi", budget=1)
    first_done = min(t[-1] for t in times.values())
    assert seen and all(end > first_done for end, _ in seen)


def test_several_replicas_run_iteration_by_iteration(monkeypatch):
    *_, seen = _same_as_reference(monkeypatch, [(0.0, 10, 8), (0.0, 10, 8)], "orca", replicas=2)
    assert seen == []


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "faster_transformer"])
def test_async_loop_stretches_overlap_host_time_and_stop_before_a_decision_that_sees_an_arrival(monkeypatch, policy):
    # host 0.25 s hidden under each 1 s step: prefill [0.25, 1.25] -> token at 1.25; then a step a second, each
    # decided as the previous one starts. B arrives at 3.5: the step decided at 4.25 (after 3.5) is the first
    # to see it, so the stretch ends with the step decided at 3.25, which runs [4.25, 5.25]
    times, _, _, _, seen = _same_as_reference(monkeypatch, [(0.0, 10, 12), (3.5, 10, 3)], policy,
                                                     host=0.25, loop=AsyncReplica)
    assert times["A"][:5] == [1.25, 2.25, 3.25, 4.25, 5.25]
    assert seen[0] == (5.25, 4.25)  # (the stretch's end, its last step's device start)


@pytest.mark.parametrize("policy", PAGED)
def test_async_loop_stretches_under_kv_pressure_and_caching(monkeypatch, policy):
    spec = [(0.0, 6, 14), (0.0, 6, 14), (9.5, 40, 6)]
    *_, seen = _same_as_reference(monkeypatch, spec, policy, blocks=9, block_size=4, host=0.4, loop=AsyncReplica,
                                  caching=True)
    assert seen


@pytest.mark.parametrize("model,gpu,kw", [
    ("llama-2-7b", "a100-80gb", {}), ("llama-2-7b", "a100-80gb", {"fitted": False, "pp": 2}),
    ("llama-3.1-70b", "h100-sxm", {"tp": 4, "weight_dtype": "fp8", "kv_cache_dtype": "fp8"}),
    ("mixtral-8x7b", "h100-sxm", {"tp": 2, "ep": 2, "router_skew": 0.5}), ("deepseek-v3", "h200", {"tp": 8}),
])
def test_the_roofline_prices_a_stretch_with_the_floats_of_a_batch_per_step(model, gpu, kw):
    """``RooflineCostModel.decode_run`` (a stretch priced in one call) is ``stage_cost`` of each step's batch, bit
    for bit: stretches would otherwise change batches.csv and every token time."""
    from sim.batch import Batch
    from sim.cost.roofline import RooflineCostModel

    cost = RooflineCostModel(model, gpu, **kw)
    for cached in ([7], [0, 15, 16, 4095], list(range(3, 300, 7)), [40000] * 5):
        n = len(cached)
        steps = [Batch([(None, 1, c + j) for c in cached], num_decodes=n) for j in range(40)]
        assert cost.decode_run(n, steps[0].decode_context, 40) == [tuple(cost.stage_cost(b, 0)) for b in steps]
    assert cost.decode_run(3, 30, 0) == []
