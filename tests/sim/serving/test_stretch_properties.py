"""Stretches change nothing, on random small deployments: every policy, with and without prefix caching (requests
that share a prefix beside requests that share nothing), the serial and the async engine loop, host time or none,
KV caches small enough to preempt and token budgets small enough to chunk, one replica or several under round-robin
(whose stretches advance apart, ``Replica.independent``). Each run is compared with the same run iteration by
iteration (``Replica.decode_stretches = False``): every token's time, every batches.csv and micro-batch row,
preemptions and the prefix cache's counters. Several replicas whose rows end at the same time leave the order of
those rows undecided after stretches (``Recorder.ambiguous``: ``simulate`` runs again without stretches); such
draws are skipped here, and ``test_ties_between_replicas_are_found`` checks the flag.
"""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.kv.prefix_cache import CachingBlockManager
from sim.kv.prefix_keys import prefix_spec
from sim.request import Request
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.serving.async_loop import AsyncReplica
from sim.serving.cluster import Replica, run_cluster

CHUNKING = ("sarathi", "vllm_v1")
PAGED = ("vllm", "sarathi", "vllm_v1")


@st.composite
def deployments(draw):
    policy = draw(st.sampled_from(["faster_transformer", "orca", "vllm", "sarathi", "vllm_v1"]))
    caching = policy in PAGED and draw(st.booleans())
    replicas = draw(st.sampled_from([1, 1, 2, 3]))
    # several replicas: gaps that rarely line two replicas' step ends up (a tie leaves their rows' order open), none
    # zero (requests arriving together keep replicas from advancing apart, ``run_cluster``)
    gaps = [0.0, 0.0, 0.5, 1.0, 2.5, 4.0] if replicas == 1 else [0.3, 0.55, 1.1, 2.35, 4.05]
    blocks = draw(st.integers(12, 60))
    t, reqs = 0.0, []
    for i in range(draw(st.integers(1, 14 * replicas))):
        t += draw(st.sampled_from(gaps))
        prompt = draw(st.integers(1, 40))
        shared = caching and draw(st.booleans())
        prefix = {"prefix_group": draw(st.integers(0, 1)), "prefix_len": draw(st.integers(1, prompt))} if shared \
            else None
        # servable: its whole sequence fits the cache (``simulate`` skips the others; alone, such a request is
        # preempted and readmitted forever, stretches or not)
        reqs.append((i, t, prompt, draw(st.integers(1, min(24, 4 * blocks - prompt))), prefix))
    return {"policy": policy, "caching": caching, "reqs": reqs,
            "blocks": blocks, "max_batch": draw(st.integers(2, 16)),
            "budget": draw(st.integers(8, 48)) if policy in CHUNKING else None,
            "host": draw(st.sampled_from([0.0, 0.25])),
            "loop": AsyncReplica if policy in CHUNKING and draw(st.booleans()) else None,
            "router": "cache_aware" if caching and replicas == 1 and draw(st.booleans()) else "round_robin",
            "replicas": replicas}


def _outcome(d: dict, stretches: bool) -> tuple:
    saved = Replica.decode_stretches
    Replica.decode_stretches = stretches
    try:
        reqs = [Request(str(i), t, prompt, output, index=i, prefix=prefix_spec(p) if p else None)
                for i, t, prompt, output, p in d["reqs"]]
        managers = [(CachingBlockManager if d["caching"] else BlockManager)(d["blocks"], 4, 0.0)
                    for _ in range(d.get("replicas", 1))]
        scheds = [make_scheduler(d["policy"], SchedulerConfig(d["max_batch"], d["budget"]), m) for m in managers]
        rec = run_cluster(reqs, scheds, ConstantCostModel(1.0, host=d["host"]), 1, d["router"],
                          replica_cls=d["loop"])
        frames = rec.stage_frame().to_numpy().tolist(), rec.microbatch_frame().to_numpy().tolist()
    finally:
        Replica.decode_stretches = saved
    return ([(r.token_times, r.num_preemptions, r.cached_tokens, r.completion_time, r.replica) for r in reqs],
            *frames, [s.num_preemptions for s in scheds], [m.stats for m in managers] if d["caching"] else None,
            [list(s.cached_free_log) for s in scheds], rec.ambiguous)


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(d=deployments())
def test_stretches_change_nothing_on_random_small_deployments(d):
    fast = _outcome(d, True)
    assume(not fast[-1])  # rows of two replicas end together: simulate() reruns such a run without stretches
    assert fast == _outcome(d, False)


def test_ties_between_replicas_are_found():
    """Two replicas whose steps (1.25 each) end together, their requests arriving 1.25 apart: after stretches the
    order of those rows is undecided (flagged), and an iteration-by-iteration run flags nothing."""
    d = {"policy": "orca", "caching": False, "blocks": 40, "max_batch": 4, "budget": None, "host": 0.25,
         "loop": None, "router": "round_robin", "replicas": 2, "reqs": [(0, 0.0, 8, 6, None), (1, 1.25, 8, 6, None)]}
    assert _outcome(d, True)[-1] is True
    assert _outcome(d, False)[-1] is False


def test_requests_arriving_together_keep_replicas_in_step():
    """Two requests at the same time on two replicas: no stretch runs apart (their rows would end together)."""
    from sim.serving import stretch

    d = {"policy": "orca", "caching": False, "blocks": 40, "max_batch": 4, "budget": None, "host": 0.25,
         "loop": None, "router": "round_robin", "replicas": 2, "reqs": [(0, 0.0, 8, 6, None), (1, 0.0, 8, 6, None)]}
    real, calls = stretch.run_stretch, []
    stretch.run_stretch = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        fast = _outcome(d, True)
    finally:
        stretch.run_stretch = real
    assert not calls and fast == _outcome(d, False)


def test_several_round_robin_replicas_stretch_apart_and_change_nothing():
    """Three replicas, arrivals that never tie: every replica advances stretches, and the outcome (every token's
    time, the rows in time order) is the iteration-by-iteration run's."""
    from sim.serving import stretch

    d = {"policy": "sarathi", "caching": False, "blocks": 60, "max_batch": 8, "budget": 16, "host": 0.25,
         "loop": None, "router": "round_robin", "replicas": 3,
         "reqs": [(i, 0.37 * i + 0.011 * (i % 5), 10 + 7 * (i % 4), 12 + 5 * (i % 3), None) for i in range(24)]}
    stretched: set[int] = set()
    real = stretch._stretch

    def spy(replica, *a):
        done = real(replica, *a)
        if done is not None:
            stretched.add(replica.index)
        return done
    stretch._stretch = spy
    try:
        fast = _outcome(d, True)
    finally:
        stretch._stretch = real
    assert stretched == {0, 1, 2}
    assert not fast[-1] and fast == _outcome(d, False)


def test_a_request_arriving_exactly_as_a_stretched_step_ends_is_seen_as_the_loop_would_see_it():
    """Found by the property above: FasterTransformer's stretch runs past arrivals; request 10 arrives at 17.0, just
    as a step ends. The loop's timeout for that step was set at 16, after the arrival's (set at 13), so the arrival
    comes first and the decision at 17 admits it; a stretch that reached 17 in one timeout set at 1 decided first."""
    d = {"policy": "faster_transformer", "caching": False, "blocks": 12, "max_batch": 6, "budget": None, "host": 0.0,
         "loop": None, "router": "round_robin",
         "reqs": [(0, 0.0, 1, 17, None), *((i, 0.0, 1, 1, None) for i in range(1, 6)), (6, 1.0, 1, 1, None),
                  *((i, 5.0 + 4 * (i - 7), 1, 1, None) for i in range(7, 11))]}
    fast, ref = _outcome(d, True), _outcome(d, False)
    assert fast == ref
    assert ref[0][10][0] == [18.0]  # admitted at 17 with the four before it
