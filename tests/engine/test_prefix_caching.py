"""Automatic prefix caching on the real engine (CPU, tiny model, float32): key-derived token ids make a cache hit
exact, so caching changes the work done and never the ids generated; the engine's hit rate is the simulator's."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json

import pytest

torch = pytest.importorskip("torch")

from engine.replay import EngineConfig, replay  # noqa: E402
from engine.runner import ModelRunner, block_token_ids, prompt_token_ids, shared_blocks  # noqa: E402
from sim.batch import Batch, BatchItem  # noqa: E402
from sim.catalog.models import get_model  # noqa: E402
from sim.cost.constant import ConstantCostModel  # noqa: E402
from sim.kv.block_manager import BlockManager  # noqa: E402
from sim.kv.prefix_cache import CachingBlockManager  # noqa: E402
from sim.kv.prefix_keys import prefix_spec  # noqa: E402
from sim.request import Request, TraceRequest  # noqa: E402
from sim.workload.generator import generate_trace  # noqa: E402
from tests.helpers import sim_compositions  # noqa: E402

BS = 16
# 4 conversations of 3 turns, each turn resending the earlier ones (answers included) after a shared
# 64-token system prompt: 12 requests of 70-200 tokens
TRACE = generate_trace(12, qps=50, prompt_len="uniform:8:40", output_len="uniform:4:24", seed=3, turns=3,
                       system_prompt=(64, 1.0))
BASE = EngineConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", kv_blocks=128, warmup=0,
                    offline=True)
# admission spread over iterations (so that later requests find earlier ones' blocks), and a KV cache small
# enough to evict cached blocks and preempt running requests
CASES = {"vllm_v1-64": {"scheduler": "vllm_v1", "token_budget": 64},
         "vllm-preempt": {"scheduler": "vllm", "kv_blocks": 24}}


def _tiny():
    return get_model("tiny")


def _old_prompt_ids(request_id: str, num_tokens: int, vocab_size: int, seed: int = 0) -> list[int]:
    """engine.runner.prompt_token_ids before prefix caching (every id from the request's own generator)."""
    digest = hashlib.sha256(f"{seed}:{request_id}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.randint(0, vocab_size, (num_tokens,), generator=gen).tolist()


def _system(index: int, rid: str, prompt: int, output: int = 4, length: int = 64) -> Request:
    return Request(rid, 0.0, prompt, output, index=index,
                   prefix=prefix_spec({"prefix_group": ["system"], "prefix_len": [length]}))


@pytest.fixture(scope="module")
def runs():
    """Each case replayed with caching on and off, with the batch compositions of each."""
    out = {}
    for name, kw in CASES.items():
        for on in (True, False):
            comps: list[tuple] = []
            res = replay(TRACE, BASE, on_batch=lambda b, c=comps: c.append(b.composition()),
                         enable_prefix_caching=on, **kw)
            out[name, on] = (res, comps)
    return out


# ---- token ids ---------------------------------------------------------------------------------------

def test_requests_without_reuse_fields_keep_their_ids():
    vocab = _tiny().vocab_size
    for rid, n, seed in (("x", 37, 0), ("a", 16, 0), ("long", 300, 7)):
        assert prompt_token_ids(rid, n, vocab, seed) == _old_prompt_ids(rid, n, vocab, seed)
        assert prompt_token_ids(rid, n, vocab, seed, shared={}) == _old_prompt_ids(rid, n, vocab, seed)
    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=8, backend="sdpa", seed=5)
    r = Request("plain", 0.0, 45, 30, index=3)
    assert shared_blocks(r, BS) == {}
    assert runner.token_ids(r) == _old_prompt_ids("plain", 45, vocab, 5)
    assert runner.forced_token(r, 50) is None


def test_a_shared_system_prompt_gives_equal_ids_on_its_blocks_only():
    vocab = _tiny().vocab_size
    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=8, backend="sdpa")
    a, b = _system(0, "a", 100), _system(1, "b", 75)
    ta, tb = runner.token_ids(a), runner.token_ids(b)
    assert sorted(shared_blocks(a, BS)) == sorted(shared_blocks(b, BS)) == [0, 1, 2, 3]
    assert ta[:64] == tb[:64]
    key = shared_blocks(a, BS)[2]
    assert ta[32:48] == block_token_ids(key, BS, vocab)
    assert ta[64:75] != tb[64:75]
    assert ta[64:] == _old_prompt_ids("a", 100, vocab)[64:]  # the rest from the request's own generator
    assert tb[64:] == _old_prompt_ids("b", 75, vocab)[64:]
    # a system prompt ending mid-block shares only its full blocks
    c = _system(2, "c", 90, length=70)
    assert sorted(shared_blocks(c, BS)) == [0, 1, 2, 3] and runner.token_ids(c)[:64] == ta[:64]
    assert runner.token_ids(c)[64:70] != ta[64:70]
    # another seed, other shared ids
    assert prompt_token_ids("a", 100, vocab, 1, shared_blocks(a, BS), BS)[:64] != ta[:64]


def test_generated_positions_in_shared_blocks_are_teacher_forced(runs):
    """A turn's answer lies in its conversation's prefix group: the ids the engine reports there are the
    key-derived ones, which the next turn's prompt holds at the same positions."""
    res = runs["vllm_v1-64", False][0]
    vocab = _tiny().vocab_size
    reqs = [Request.from_trace(tr, i) for i, tr in enumerate(TRACE)]
    by_session: dict[int, list[Request]] = {}
    for tr, r in zip(TRACE, reqs):
        by_session.setdefault(tr.extra["session"], []).append(r)
    forced = 0
    for turns in by_session.values():
        for prev, nxt in itertools.pairwise(turns):
            seq = prompt_token_ids(prev.request_id, prev.prompt_tokens, vocab, 0, shared_blocks(prev, BS), BS)
            seq += res.token_ids[prev.request_id]
            nxt_prompt = prompt_token_ids(nxt.request_id, nxt.prompt_tokens, vocab, 0, shared_blocks(nxt, BS), BS)
            shared_end = (prev.max_tokens - 1) // BS * BS  # the blocks prev's answer fills and registers
            assert seq[:shared_end] == nxt_prompt[:shared_end]
            forced += max(0, shared_end - prev.prompt_tokens)
    assert forced > 50


# ---- a hit on the engine ---------------------------------------------------------------------------------

def _serve_alone(r: Request) -> tuple[list[int], torch.Tensor]:
    """``r`` on a fresh runner without a prefix cache: whole prompt, then a decode at a time; its ids, first logits."""
    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=32, backend="sdpa")
    bm = BlockManager(32, BS)
    first = None
    while not r.is_finished:
        n = r.num_pending
        bm.grow(r, r.num_computed + n)
        runner.execute(Batch([BatchItem(r, n, r.num_computed)]))
        first = runner.last_logits[0] if first is None else first
        r.num_computed += n
        r.num_generated += 1
    return runner.token_ids(r), first.clone()


def test_a_hit_attends_over_blocks_another_request_computed():
    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=32, backend="sdpa")
    bm = CachingBlockManager(32, BS)
    a, b = _system(0, "a", 70), _system(1, "b", 80, output=6)
    bm.admit(a, a.num_known)
    runner.execute(Batch([BatchItem(a, 70, 0)]))
    a.num_computed, a.num_generated = 70, 1
    bm.on_computed(a)
    a_blocks = list(a.block_table)
    runner.release(a)  # a finishes: its ids go, its computed blocks stay cached
    bm.free(a)
    assert bm.num_cached_free == 4
    bm.admit(b, b.num_known)
    assert b.num_computed == b.cached_tokens == 64 and list(b.block_table[:4]) == a_blocks[:4]
    first = None
    while not b.is_finished:  # the prefill computes only [64, 80); the decodes attend over a's blocks
        n = b.num_pending
        bm.grow(b, b.num_computed + n)
        runner.execute(Batch([BatchItem(b, n, b.num_computed)]))
        assert runner.last_timing["num_tokens"] == n
        first = runner.last_logits[0] if first is None else first
        b.num_computed += n
        b.num_generated += 1
    alone_ids, alone_first = _serve_alone(_system(1, "b", 80, output=6))
    assert runner.token_ids(b) == alone_ids
    torch.testing.assert_close(first, alone_first, rtol=1e-4, atol=1e-4)


# ---- whole runs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_caching_changes_the_work_not_the_ids(runs, name):
    on, off = runs[name, True][0], runs[name, False][0]
    assert sorted(on.token_ids) == sorted(tr.request_id for tr in TRACE)
    assert on.token_ids == off.token_ids
    pc = on.summary["prefix_cache"]
    assert pc["hit_tokens"] > 0 and pc["hit_rate_tokens"] > 0.3 and "prefix_cache" not in off.summary
    assert on.batches["num_prefill_tokens"].sum() < 0.7 * off.batches["num_prefill_tokens"].sum()
    first = on.requests["cached_tokens"].sum()  # first admissions' hits; re-admissions after preemption hit too
    assert first == pc["hit_tokens"]  # the hit rate counts first admissions; re-admissions apart
    assert (pc["recompute_hit_tokens"] > 0) == (on.summary["kv_cache"]["preemptions"] > 0)
    assert "kv_cached_free_blocks" in on.batches
    if name == "vllm-preempt":  # shared blocks survived eviction and preemption
        assert pc["evictions"] > 0 and on.summary["kv_cache"]["preemptions"] > 0


@pytest.mark.parametrize("name", list(CASES))
def test_offline_hit_rate_and_batches_equal_the_simulators(runs, monkeypatch, name):
    res, comps = runs[name, True]
    cfg = dataclasses.replace(BASE, enable_prefix_caching=True, **CASES[name])
    sim_cfg = cfg.sim_config(gpu="a100-80gb", kv_blocks=res.summary["kv_cache"]["blocks_per_replica"])
    offline = [dataclasses.replace(tr, arrival_time=0.0) for tr in TRACE]
    sim_comps, sim = sim_compositions(monkeypatch, offline, sim_cfg, ConstantCostModel(1.0, per_token=0.01))
    assert comps == sim_comps
    eng_pc, sim_pc = res.summary["prefix_cache"], sim.summary["prefix_cache"]
    for k in ("queried_tokens", "hit_tokens", "hit_blocks", "evictions", "hit_rate_tokens", "hit_rate_blocks"):
        assert eng_pc[k] == sim_pc[k], k
    assert res.requests["cached_tokens"].tolist() == sim.requests["cached_tokens"].tolist()


def test_hash_ids_traces_share_their_blocks():
    """Mooncake-style hash_ids (512-token trace blocks, ours 16): equal ids, equal tokens, cache hits."""
    trace = [TraceRequest("m0", 0.0, 600, 4, {"hash_ids": [11, 12]}),
             TraceRequest("m1", 0.0, 700, 4, {"hash_ids": [11, 13]}),
             TraceRequest("m2", 0.0, 530, 4, {"hash_ids": [11, 12]})]
    kw = {"scheduler": "vllm_v1", "token_budget": 256, "kv_blocks": 160}
    on = replay(trace, BASE, enable_prefix_caching=True, **kw)
    off = replay(trace, BASE, enable_prefix_caching=False, **kw)
    assert on.token_ids == off.token_ids
    assert on.requests.set_index("request_id")["cached_tokens"].to_dict() == {"m0": 0, "m1": 512, "m2": 528}


def test_cli_engine_passes_prefix_caching(tmp_path, capsys):
    from sim.cli.main import main
    args = ["engine", "--model", "tiny", "--device", "cpu", "--kv-blocks", "64", "--offline", "--warmup", "0",
            "-n", "6", "--prompt-len", "uniform:8:24", "--output-len", "fixed:4", "--system-prompt", "32",
            "--scheduler", "vllm", "--max-batch", "2", "--json", "-q"]
    assert main(args + ["--enable-prefix-caching"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["config"]["enable_prefix_caching"] is True and summary["prefix_cache"]["hit_tokens"] > 0
    assert main(args + ["--no-enable-prefix-caching"]) == 0
    assert "prefix_cache" not in json.loads(capsys.readouterr().out)


def test_the_static_decode_path_feeds_the_forced_ids(runs):
    """CUDA graphs' padded decode path (eager on the CPU) reads the same stored ids, forced ones included."""
    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=128, backend="sdpa", cuda_graphs=True)
    seen = []
    res = replay(TRACE, BASE, runner=runner, enable_prefix_caching=True, **CASES["vllm_v1-64"],
                 on_batch=lambda b: seen.append(runner.last_timing["cuda_graph"]))
    assert any(seen) and res.token_ids == runs["vllm_v1-64", False][0].token_ids
