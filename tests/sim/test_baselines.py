"""The baselines as they ran: Orca/FT reserve max_model_len, FT fills idle pipeline slots, vLLM v0's virtual
engines under PP, and each policy's default max_num_seqs. Times are derived by hand on the constant-cost model."""

from __future__ import annotations

import json
import math

import pytest

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.kv.memory import InfeasibleConfigError
from sim.request import TraceRequest
from sim.schedulers import SchedulerConfig, make_scheduler, scheduler_class
from sim.schedulers.virtual_engines import VirtualEngines
from sim.serving.cluster import run_cluster
from sim.serving.simulator import SimConfig, simulate
from tests.helpers import make_requests


def _run(spec, schedulers, *, pp=1, iteration_time=1.0):
    """Replay (arrival, prompt, output) tuples through ``schedulers`` (one per replica) at a constant cost."""
    reqs = make_requests(spec)
    comps: list[tuple] = []
    for s in schedulers:
        orig = s.schedule

        def logged(now=0.0, _orig=orig):
            b = _orig(now)
            if b is not None:
                comps.append((now, tuple(sorted(r.request_id for r, _n, _c in b.entries))))
            return b
        s.schedule = logged
    rec = run_cluster(reqs, schedulers, ConstantCostModel(iteration_time, num_stages=pp), pp)
    return reqs, comps, rec


def _policy(name, blocks, *, max_batch=128, max_model_len=None, reservation="max-model-len", block_size=16):
    cfg = SchedulerConfig(max_batch, None, 0, max_model_len, reservation)
    return make_scheduler(name, cfg, BlockManager(blocks, block_size, 0.01))


# ---- Orca and FasterTransformer reserve max_model_len ------------------------------------------------------

def test_llama2_7b_on_an_a100_runs_at_most_29_requests_under_orca_and_ft():
    """KV blocks // blocks per max_model_len: 4096 tokens are 256 blocks of 16; Orca's admission keeps no
    watermark, so floor(blocks / 256) requests fit at once (29 on one A100-80GB), however short they are."""
    config = SimConfig(model="llama-2-7b", gpu="a100-80gb")
    blocks = config.plan_memory().num_blocks
    per_request = math.ceil(config.model_spec().max_context / config.block_size)
    assert per_request == 256
    cap = blocks // per_request
    assert cap == 29
    trace = [TraceRequest(str(i), i * 0.001, 32, 16) for i in range(120)]  # 1000 req/s of short requests
    for policy in ("orca", "faster_transformer"):
        res = simulate(trace, config, scheduler=policy)
        assert res.summary["requests"]["completed"] == 120
        assert res.batches["batch_size"].max() == cap, policy  # reached, never passed
        # the oracle (each request's own 48 tokens: 3 blocks) lets the default max_num_seqs of 128 bind instead
        oracle = simulate(trace, config, scheduler=policy, kv_reservation="oracle")
        assert oracle.batches["batch_size"].max() > cap, policy


def test_orca_reserves_max_model_len_blocks_and_waits_for_them():
    """max_model_len 64 = 4 blocks of 16 per request; 10 blocks hold two. A and B (4-token prompts, 2 outputs)
    prefill in [0, 1) and decode in [1, 2); C waits for their blocks: prefill [2, 3), decode [3, 4)."""
    reqs, comps, _ = _run([(0.0, 4, 2)] * 3, [_policy("orca", 10, max_model_len=64)])
    assert [r.token_times for r in reqs] == [[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]]
    assert [c[1] for c in comps] == [("A", "B"), ("A", "B"), ("C",), ("C",)]


def test_the_oracle_option_restores_each_requests_own_reservation():
    """kv_reservation oracle: 4 + 2 tokens are one block each, so all three run together in [0, 1) and [1, 2);
    a scheduler given no max_model_len reserves the same (the request's own length)."""
    for sched in (_policy("orca", 10, max_model_len=64, reservation="oracle"), _policy("orca", 10)):
        reqs, comps, _ = _run([(0.0, 4, 2)] * 3, [sched])
        assert [r.token_times for r in reqs] == [[1.0, 2.0]] * 3
        assert [c[1] for c in comps] == [("A", "B", "C")] * 2


def test_a_cache_smaller_than_one_reservation_is_refused():
    """64 tokens are 4 blocks; a cache of 3 can never admit anyone (vLLM likewise refuses to start)."""
    for policy in ("orca", "faster_transformer"):
        with pytest.raises(InfeasibleConfigError, match="reserves max_model_len = 64 tokens"):
            _policy(policy, 3, max_model_len=64)
        _policy(policy, 3, max_model_len=64, reservation="oracle")  # the what-if needs no such cache
        _policy(policy, 4, max_model_len=64)
    with pytest.raises(InfeasibleConfigError):
        SimConfig(model="tiny", scheduler="orca", kv_blocks=63).check()  # tiny: 1024 tokens, 64 blocks
    SimConfig(model="tiny", scheduler="orca", kv_blocks=64).check()


def test_the_cli_flag_and_its_refusal(tmp_path, capsys):
    from sim.cli.main import main

    base = ["simulate", "--model", "tiny", "-n", "3", "-q", "--scheduler", "orca", "--json"]
    assert main([*base, "--kv-reservation", "oracle"]) == 0
    assert json.loads(capsys.readouterr().out)["config"]["kv_reservation"] == "oracle"
    assert main([*base, "--kv-blocks", "63"]) == 2  # tiny's 1024 tokens need 64 blocks
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_model_len = 1024" in err[0] and "Traceback" not in err[0]


# ---- FasterTransformer with pipeline parallelism --------------------------------------------------------

def test_faster_transformer_admits_a_new_batch_into_an_idle_pipeline_slot():
    """Two stages of 1 s. A, B arrive at 0: batch 1 prefills (stage 0 [0, 1), stage 1 [1, 2)). C, D arrive at
    0.5 while it is in flight: as Sarathi-Serve's FasterTransformerScheduler, they form batch 2 ([1, 2), [2, 3)).
    The batches then alternate, one token each per 2 s: A, B at 2, 4, 6; C, D at 3, 5, 7; stage 0 never idles
    from 0 to 6."""
    spec = [(0.0, 4, 3), (0.0, 4, 3), (0.5, 4, 3), (0.5, 4, 3)]
    reqs, comps, rec = _run(spec, [_policy("faster_transformer", 100, max_model_len=64)], pp=2)
    assert [r.token_times for r in reqs] == [[2.0, 4.0, 6.0]] * 2 + [[3.0, 5.0, 7.0]] * 2
    assert [c[1] for c in comps] == [("A", "B"), ("C", "D")] * 3
    stage0 = rec.stage_frame().query("stage == 0")
    assert stage0["start"].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert stage0["end"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_faster_transformer_counts_every_running_request_against_max_num_seqs():
    """With max_num_seqs 2, A and B fill it: C and D wait until both finish at 6 (prefill [6, 8), tokens at
    8, 10, 12), as Sarathi-Serve's check len(running) + 1 > max_num_seqs."""
    spec = [(0.0, 4, 3), (0.0, 4, 3), (0.5, 4, 3), (0.5, 4, 3)]
    reqs, _, _ = _run(spec, [_policy("faster_transformer", 100, max_batch=2, max_model_len=64)], pp=2)
    assert [r.token_times for r in reqs] == [[2.0, 4.0, 6.0]] * 2 + [[8.0, 10.0, 12.0]] * 2


# ---- vLLM v0 with pipeline parallelism: one scheduler per virtual engine ------------------------------------

def test_vllm_pp_builds_one_scheduler_per_virtual_engine_with_its_share_of_blocks():
    config = SimConfig(model="tiny", scheduler="vllm", pp=2, kv_blocks=101)
    sched = config.make_scheduler(101)
    assert isinstance(sched, VirtualEngines)
    assert [e.bm.num_blocks for e in sched.engines] == [50, 50]  # num_gpu_blocks // pp, as vLLM v0
    assert [e.config.max_batch_size for e in sched.engines] == [256, 256]  # each its own max_num_seqs
    assert sched.bm.num_blocks == 100
    for other in ("sarathi", "orca", "faster_transformer", "vllm_v1"):  # one scheduler, the whole cache
        assert not isinstance(SimConfig(model="tiny", scheduler=other, pp=2).make_scheduler(101), VirtualEngines)
    assert not isinstance(SimConfig(model="tiny", scheduler="vllm").make_scheduler(101), VirtualEngines)
    # the what-if of Sarathi-Serve's vLLM baseline: one scheduler over the whole cache, pp micro-batches in flight
    shared = SimConfig(model="tiny", scheduler="vllm", pp=2, virtual_engines=False).make_scheduler(101)
    assert not isinstance(shared, VirtualEngines) and shared.bm.num_blocks == 101
    with pytest.raises(ValueError, match="virtual-engines is vLLM v0's"):
        SimConfig(model="tiny", scheduler="sarathi", pp=2, virtual_engines=True).make_scheduler(101)


def _engines(blocks_each, n=2):
    return VirtualEngines([_policy("vllm", blocks_each) for _ in range(n)])


def test_vllm_pp_pins_requests_to_the_least_loaded_virtual_engine():
    """A, B, C, D arrive at 0: unfinished counts (0, 0) -> A to engine 0, (1, 0) -> B to 1, (1, 1) -> C to 0,
    D to 1. Engine 0 prefills A, C (stage 0 [0, 1), stage 1 [1, 2)); engine 1, idle, prefills B, D at once
    ([1, 2), [2, 3)); each decodes when its own micro-batch returns: A, C at 2, 4; B, D at 3, 5."""
    reqs, comps, _ = _run([(0.0, 4, 2)] * 4, [_engines(50)], pp=2)
    assert [c[1] for c in comps] == [("A", "C"), ("B", "D"), ("A", "C"), ("B", "D")]
    assert [r.token_times for r in reqs] == [[2.0, 4.0], [3.0, 5.0], [2.0, 4.0], [3.0, 5.0]]


def test_vllm_pp_virtual_engine_at_most_one_micro_batch_in_flight():
    """A at 0 goes to engine 0 ([0, 2) over the two stages), B at 0.5 to engine 1 (counts (1, 0); [1, 2) and
    [2, 3)), C at 0.6 to engine 0 (counts (1, 1)): it waits for engine 0's micro-batch to return at 2, then
    prefills alone (vLLM v0 runs prefills first) [2, 4); B decodes [3, 5); A and C decode together [4, 6)."""
    reqs, comps, _ = _run([(0.0, 4, 2), (0.5, 4, 2), (0.6, 4, 2)], [_engines(50)], pp=2)
    assert comps == [(0.0, ("A",)), (0.5, ("B",)), (2.0, ("C",)), (3.0, ("B",)), (4.0, ("A", "C"))]
    assert [r.token_times for r in reqs] == [[2.0, 6.0], [3.0, 5.0], [4.0, 6.0]]


def test_vllm_pp_preempts_on_its_own_share_of_the_cache():
    """8 blocks of 16 shared, or 4 per virtual engine. A and C (16-token prompts, 40 outputs: 4 blocks each at
    the end) land on engine 0, B (one output) on engine 1: engine 0's 4 blocks cannot hold A and C, so it
    preempts; one scheduler over all 8 holds both once B has finished."""
    spec = [(0.0, 16, 40), (0.0, 16, 1), (0.0, 16, 40)]
    split, shared = _engines(4), _policy("vllm", 8)
    _run(spec, [split], pp=2)
    assert split.num_preemptions > 0 and [e.num_preemptions > 0 for e in split.engines] == [True, False]
    _run(spec, [shared], pp=2)
    assert shared.num_preemptions == 0


def test_vllm_pp_skips_requests_larger_than_one_virtual_engines_share():
    """kv_blocks 9 with 2 stages: 4 blocks per engine; a 70-token prompt (5 blocks) never fits one (vLLM v0
    ignores it), a 60-token one (4 blocks + its output) does."""
    trace = [TraceRequest("big", 0.0, 70, 2), TraceRequest("ok", 0.0, 60, 2)]
    res = simulate(trace, SimConfig(model="tiny", scheduler="vllm", pp=2, kv_blocks=9, watermark=0.0),
                   cost_model=ConstantCostModel(1.0, num_stages=2))
    assert res.summary["requests"]["completed"] == 1 and [s.request_id for s in res.skipped] == ["big"]


# ---- defaults ----------------------------------------------------------------------------------------

def test_each_policy_defaults_to_its_originals_max_num_seqs():
    """vLLM v0: 256 (EngineArgs); Sarathi-Serve, and Orca and FasterTransformer as its code runs them: 128."""
    assert {n: scheduler_class(n).default_max_num_seqs for n in ("vllm", "sarathi", "orca", "faster_transformer")} \
        == {"vllm": 256, "sarathi": 128, "orca": 128, "faster_transformer": 128}
    assert SimConfig(scheduler="vllm").effective_max_batch_size() == 256
    assert SimConfig(scheduler="orca", max_batch_size=16).effective_max_batch_size() == 16  # given: kept
    assert SimConfig(scheduler="orca").kv_reservation == "max-model-len"
    assert SimConfig(scheduler="orca").make_scheduler(1000).config.max_model_len == 4096  # llama-2-7b's context


def test_a_deployment_file_names_the_reservation(tmp_path):
    from sim.serving.deployment import DeploymentError, load_deployment

    path = tmp_path / "d.yaml"
    path.write_text("model: tiny\nscheduler: orca\nkv_reservation: oracle\n")
    assert load_deployment(path).kv_reservation == "oracle"
    path.write_text("model: tiny\nscheduler: orca\nkv_reservation: guess\n")
    with pytest.raises(DeploymentError, match="kv_reservation"):
        load_deployment(path)


def test_capacity_counts_the_requests_one_virtual_engine_can_hold():
    """The capacity search predicts which requests simulate() runs: with vLLM v0's virtual engines, against one
    engine's share (4 of 9 blocks: the 70-token prompt never fits)."""
    from sim.capacity.point import _simulated_indices

    trace = [TraceRequest("big", 0.0, 70, 2), TraceRequest("ok", 0.0, 60, 2)]
    cfg = SimConfig(model="tiny", scheduler="vllm", pp=2, kv_blocks=9, watermark=0.0)
    assert _simulated_indices(cfg, trace) == [1]
    assert _simulated_indices(SimConfig(model="tiny", scheduler="vllm", pp=2, kv_blocks=9, watermark=0.0,
                                        virtual_engines=False), trace) == [0, 1]
