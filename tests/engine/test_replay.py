"""Trace replay on the real engine (CPU, tiny model, float32): one policy code, same ids, simulator's files."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engine.cuda_graphs import padded_batch_size, padded_width  # noqa: E402
from engine.device import EngineOutOfMemoryError  # noqa: E402
from engine.replay import BATCH_FIELDS, EngineConfig, replay  # noqa: E402
from engine.runner import ModelRunner  # noqa: E402
from sim.catalog.hardware import gpu_for_device_name as gpu_from_device_name  # noqa: E402
from sim.cost.constant import ConstantCostModel  # noqa: E402
from sim.outputs.run_folder import read_run, write_run  # noqa: E402
from sim.request import TraceRequest  # noqa: E402
from sim.serving.recorder import STAGE_FIELDS  # noqa: E402
from sim.serving.simulator import simulate  # noqa: E402
from sim.workload.trace import read_trace, write_trace  # noqa: E402
from tests.helpers import sim_compositions  # noqa: E402

# (id, prompt, output): prompts shorter than, equal to and longer than a 16-token block
SPEC = [("a", 37, 9), ("b", 5, 12), ("c", 20, 7), ("d", 64, 5), ("e", 16, 10), ("f", 50, 8)]
TRACE = [TraceRequest(rid, 0.0, p, o) for rid, p, o in SPEC]
BASE = EngineConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", kv_blocks=64, warmup=0,
                    offline=True)

# every policy, budgets below a block (8) and not a multiple of it (13, 24), and tiny KV capacity
# (5 blocks for requests needing 18 at once) so that decodes preempt by recompute
CASES = {
    # Orca and FasterTransformer reserve max_model_len: 128 tokens are 8 blocks, so 64 blocks hold 8 requests
    "faster_transformer": dict(scheduler="faster_transformer", max_model_len=128),
    "orca": dict(scheduler="orca", max_model_len=128),
    "orca-batch2": dict(scheduler="orca", max_batch_size=2, max_model_len=128),
    "vllm": dict(scheduler="vllm"),
    "vllm-budget80": dict(scheduler="vllm", token_budget=80),
    "sarathi-512": dict(scheduler="sarathi"),
    "sarathi-8": dict(scheduler="sarathi", token_budget=8),
    "sarathi-24": dict(scheduler="sarathi", token_budget=24),
    "vllm_v1": dict(scheduler="vllm_v1"),
    "vllm_v1-13": dict(scheduler="vllm_v1", token_budget=13),
    "vllm-preempt": dict(scheduler="vllm", kv_blocks=5),
    "sarathi-24-preempt": dict(scheduler="sarathi", token_budget=24, kv_blocks=5),
    "vllm_v1-20-preempt": dict(scheduler="vllm_v1", token_budget=20, kv_blocks=5),
}
PREEMPTING = {"vllm-preempt", "sarathi-24-preempt", "vllm_v1-20-preempt"}


@pytest.fixture(scope="module")
def runs():
    """Each case replayed once, with the batch compositions it produced."""
    out = {}
    for name, kw in CASES.items():
        comps: list[tuple] = []
        res = replay(TRACE, BASE, on_batch=lambda b, c=comps: c.append(b.composition()), **kw)
        out[name] = (res, comps)
    return out


def test_generated_ids_identical_under_every_policy_budget_and_preemption(runs):
    ref = runs["vllm"][0].token_ids
    assert sorted(ref) == sorted(rid for rid, _, _ in SPEC)
    assert all(len(ref[rid]) == o for rid, _, o in SPEC)
    assert len({tuple(v) for v in ref.values()}) == len(SPEC)  # requests really differ
    for name, (res, _) in runs.items():
        assert res.token_ids == ref, name
        assert res.summary["requests"]["completed"] == len(SPEC), name
        preempted = res.summary["kv_cache"]["preemptions"]
        assert (preempted > 0) == (name in PREEMPTING), (name, preempted)
    # the budgets really chunked: sarathi-8 never runs more than 8 tokens, and splits prompts
    b8 = runs["sarathi-8"][0].batches
    assert (b8["num_prefill_tokens"] + b8["num_decode_tokens"]).max() <= 8
    assert (runs["sarathi-24"][0].batches["num_prefill_tokens"] % 16 != 0).any()


def test_first_ids_match_a_lone_greedy_run():
    """Independent of any scheduler: request d alone, whole prompt then one decode at a time."""
    from sim.batch import Batch, BatchItem
    from sim.kv.block_manager import BlockManager
    from sim.request import Request

    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=64, backend="sdpa")
    bm = BlockManager(64, 16)
    r = Request("d", 0.0, 64, 5)
    while not r.is_finished:
        n = r.num_pending
        bm.grow(r, r.num_computed + n)
        runner.execute(Batch([BatchItem(r, n, r.num_computed)]))
        r.num_computed += n
        r.num_generated += 1
    ids = runner.token_ids(r)[64:]
    res = replay([TRACE[3]], BASE, scheduler="sarathi", token_budget=24)
    assert res.token_ids["d"] == ids


def _tiny():
    from sim.catalog.models import get_model
    return get_model("tiny")


@pytest.mark.parametrize("name", ["faster_transformer", "orca-batch2", "vllm", "sarathi-8", "sarathi-24",
                                  "vllm_v1-13", "vllm-preempt", "sarathi-24-preempt", "vllm_v1-20-preempt"])
def test_offline_batch_compositions_identical_to_the_simulator(runs, monkeypatch, name):
    res, comps = runs[name]
    cfg = dataclasses.replace(BASE, **CASES[name])
    sim_cfg = cfg.sim_config(gpu="a100-80gb", kv_blocks=res.summary["kv_cache"]["blocks_per_replica"])
    for cost in (ConstantCostModel(1.0, per_token=0.01, host=0.5), None):  # None: the roofline
        sim_comps, sim = sim_compositions(monkeypatch, TRACE, sim_cfg, cost)
        assert comps == sim_comps, name
        cols = ["batch_id", "num_prefill_tokens", "num_decode_tokens", "batch_size", "num_prefill_items",
                "kv_blocks_used"]
        assert res.batches[cols].equals(sim.batches[cols].reset_index(drop=True)), name
        assert res.summary["kv_cache"]["preemptions"] == sim.summary["kv_cache"]["preemptions"]
        assert (res.requests["num_preemptions"].tolist() == sim.requests["num_preemptions"].tolist())


def test_output_files_load_with_the_simulators_reader(runs, tmp_path):
    res = runs["sarathi-24"][0]
    write_run(tmp_path, res.summary, res.requests, res.batches)
    summary, reqs, batches = read_run(tmp_path)
    sim = simulate(TRACE, dataclasses.replace(BASE, scheduler="sarathi", token_budget=24)
                   .sim_config(gpu="a100-80gb", kv_blocks=64))
    assert set(summary) == set(sim.summary)
    assert set(sim.summary["config"]) <= set(summary["config"])
    assert list(reqs.columns) == list(sim.requests.columns)
    assert tuple(batches.columns) == BATCH_FIELDS == STAGE_FIELDS + ("host_s", "device_s", "cuda_graph", "graph_captured")
    assert summary["cost_model"]["name"] == "measured"
    mem = summary["memory"]  # tiny: 2 layers x (k, v) x 2 kv heads x 16 dims x 4 bytes per token
    assert mem["kv_bytes_per_token"] == 2 * 2 * 2 * 16 * 4 and mem["num_blocks"] == 64
    assert mem["kv_cache_bytes"] == 64 * 16 * 512 and mem["weight_bytes"] > 0
    assert summary["config"]["scheduler"] == "sarathi" and summary["config"]["token_budget"] == 24
    assert summary["batches"]["iterations"] == len(batches)
    assert summary["utilization"]["mfu"] is None  # no GPU: no roofline work, no peak
    assert (batches["flops"] == 0).all()
    assert (reqs["generated_tokens"] == reqs["output_tokens"]).all()
    assert reqs["request_id"].tolist() == [rid for rid, _, _ in SPEC]
    # measured time: iterations in order, host + device inside the wall time, tokens after scheduling
    assert (batches["device_s"] > 0).all() and (batches["host_s"] > 0).all()
    assert (batches["end"] >= batches["start"]).all()
    assert (np.diff(batches["batch_id"]) == 1).all() and (batches["start"].iloc[1:].values
                                                           >= batches["end"].iloc[:-1].values).all()
    assert (reqs["first_token_time"] > reqs["first_scheduled_time"]).all()
    assert (reqs["first_scheduled_time"] >= reqs["arrival_time"]).all()
    tpot = (reqs["e2e"] - reqs["ttft"]) / (reqs["generated_tokens"] - 1)
    assert np.allclose(tpot, reqs["tpot"])


def test_warmup_is_excluded_and_reported():
    res = replay(TRACE, BASE, scheduler="sarathi", token_budget=24, warmup=4)
    w = res.summary["cost_model"]["warmup"]
    assert w["iterations"] == 4 and w["wall_s"] > 0
    cold = replay(TRACE, BASE, scheduler="sarathi", token_budget=24, warmup=0)
    assert res.summary["cost_model"]["warmup"]["iterations"] == 4
    # the measured run starts from a fresh scheduler: same batches as without warm-up
    cols = ["batch_id", "num_prefill_tokens", "num_decode_tokens", "batch_size", "kv_blocks_used"]
    assert res.batches[cols].equals(cold.batches[cols]) and res.batches["batch_id"].iloc[0] == 0
    assert res.token_ids == cold.token_ids


def test_real_time_arrivals_wait_for_the_clock():
    trace = [TraceRequest(rid, 0.05 * i, p, 3) for i, (rid, p, _) in enumerate(SPEC[:3])]
    res = replay(trace, BASE, offline=False, scheduler="vllm")
    req = res.requests
    assert req["arrival_time"].tolist() == [0.0, 0.05, 0.1]
    assert (req["first_scheduled_time"] >= req["arrival_time"]).all()
    assert res.summary["throughput"]["makespan_s"] > 0.1
    assert res.summary["config"]["offline"] is False


def test_bad_requests_are_skipped_and_reported(tmp_path):
    path = tmp_path / "t.jsonl"
    write_trace(path, [TRACE[0], TraceRequest("too-long", 0.0, 2000, 4), TRACE[1],
                       TraceRequest("kv", 0.0, 200, 60), TraceRequest("sum", 0.0, 1000, 100)])
    tr = read_trace(path).requests
    res = replay(tr, BASE, source=str(path), scheduler="sarathi", kv_blocks=12)
    req = res.summary["requests"]
    assert req["completed"] == 2 and req["skipped"] == 3
    assert req["skipped_by_reason"] == {"prompt_exceeds_context": 1, "kv_capacity": 1, "total_exceeds_context": 1}
    assert req["skipped_examples"][0].startswith(f"{path}:2: request 'too-long': field 'prompt_tokens'")
    assert f"{path}:4: request 'kv'" in req["skipped_examples"][1]
    assert sorted(res.token_ids) == ["a", "b"]
    with pytest.raises(ValueError, match="t.jsonl:2"):
        replay(tr, BASE, source=str(path), scheduler="sarathi", kv_blocks=12, strict=True)


def test_out_of_memory_names_the_setting_to_change(monkeypatch):
    with pytest.raises(EngineOutOfMemoryError, match="--kv-blocks"):
        replay(TRACE, BASE, kv_blocks=10**13)

    def oom(self, batch, **kw):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(ModelRunner, "execute", oom)
    with pytest.raises(EngineOutOfMemoryError, match="--max-batch or --token-budget"):
        replay(TRACE, BASE)


def test_static_padded_decode_path_gives_the_same_ids():
    """The CUDA-graph path (static buffers padded to captured shapes) run eagerly on the CPU."""
    assert [padded_batch_size(n, 256) for n in (1, 3, 5, 8, 9, 128, 257)] == [1, 4, 8, 8, 16, 128, None]
    assert [padded_width(n) for n in (1, 2, 3, 9, 16, 17, 65)] == [1, 2, 4, 16, 16, 32, 80]
    runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=64, backend="sdpa",
                         cuda_graphs=True)
    assert runner.kv_cache.num_blocks == 65  # the scratch block for padding rows
    seen = []
    res = replay(TRACE, BASE, runner=runner, scheduler="vllm",
                 on_batch=lambda b: seen.append(runner.last_timing["cuda_graph"]))
    eager = replay(TRACE, BASE, scheduler="vllm")
    assert res.token_ids == eager.token_ids
    assert any(seen) and not all(seen)  # decode-only batches took the static path, prefills did not
    assert res.summary["cost_model"]["cuda_graphs"] is True

    # logits of one padded decode batch (3 rows -> 4, contexts of 1, 2 and 5 blocks) match the eager path
    from sim.batch import Batch, BatchItem
    from sim.kv.block_manager import BlockManager
    from sim.request import Request

    eager_runner = ModelRunner(_tiny(), device="cpu", dtype=torch.float32, kv_blocks=64, backend="sdpa")
    logits = []
    for rn in (eager_runner, runner):
        bm = BlockManager(64, 16)
        reqs = [Request(f"r{p}", 0.0, p, 4) for p in (9, 17, 70)]
        for r in reqs:  # prefill eagerly, then one decode batch
            bm.grow(r, r.prompt_tokens + 1)
            rn.execute(Batch([BatchItem(r, r.prompt_tokens, 0)]))
            r.num_computed, r.num_generated = r.prompt_tokens, 1
        rn.execute(Batch([BatchItem(r, 1, r.prompt_tokens) for r in reqs]))
        logits.append(torch.cat(rn.last_logits))
    assert runner.last_timing["cuda_graph"] and not eager_runner.last_timing["cuda_graph"]
    assert torch.allclose(logits[0], logits[1], rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_cuda_graphs_match_eager_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cfg = dataclasses.replace(BASE, device="cuda", scheduler="sarathi", token_budget=24)
    graphs = replay(TRACE, cfg, cuda_graphs=True)
    eager = replay(TRACE, cfg, cuda_graphs=False)
    assert graphs.summary["cost_model"]["cuda_graph_captures"] > 0
    assert graphs.token_ids == eager.token_ids


def test_gpu_names_map_to_the_catalogue():
    assert gpu_from_device_name("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert gpu_from_device_name("NVIDIA H100 PCIe") == "h100-pcie"
    assert gpu_from_device_name("NVIDIA H200") == "h200"
    assert gpu_from_device_name("NVIDIA A100-SXM4-40GB") == "a100-40gb"
    assert gpu_from_device_name("NVIDIA A100-SXM4-80GB") == "a100-80gb"
    assert gpu_from_device_name("NVIDIA L40S") == "l40s"
    assert gpu_from_device_name("NVIDIA A40") == "a40"
    assert gpu_from_device_name("Tesla T4") is None


def test_cli_engine_writes_a_run(tmp_path, capsys):
    from sim.cli.main import main

    path = tmp_path / "t.jsonl"
    write_trace(path, TRACE)
    out = tmp_path / "run"
    rc = main(["engine", "--trace", str(path), "--model", "tiny", "--scheduler", "sarathi", "--token-budget", "24",
               "--device", "cpu", "--kv-blocks", "64", "--offline", "--warmup", "1", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "cost model measured" in text and "warm-up 1 iterations" in text
    summary, reqs, batches = read_run(out)
    assert summary["config"]["device"] == "cpu" and summary["config"]["dtype"] == "float32"
    assert len(reqs) == len(SPEC) and len(batches) == summary["batches"]["iterations"]
    rc = main(["engine", "--trace", str(path), "--device", "cpu", "--kv-blocks", "64", "--offline",
               "--warmup", "0", "--json", "-q"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["cost_model"]["name"] == "measured"


def test_cli_engine_without_torch_says_how_to_install(monkeypatch, capsys):
    from sim.cli.main import main

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert main(["engine", "--trace", "x.jsonl"]) == 2
    assert "pip install torch==2.13.0" in capsys.readouterr().err


def test_roofline_work_columns_join_the_simulators():
    """With a catalogue GPU named, each measured batch carries the roofline FLOPs the simulator prices it at."""
    res = replay(TRACE, BASE, scheduler="sarathi", token_budget=24, gpu="a100-80gb")
    sim = simulate(TRACE, dataclasses.replace(BASE, scheduler="sarathi", token_budget=24)
                   .sim_config(gpu="a100-80gb", kv_blocks=64))
    joined = res.batches.merge(sim.batches, on="batch_id", suffixes=("_engine", "_sim"))
    assert len(joined) == len(res.batches) == len(sim.batches)
    assert np.allclose(joined["flops_engine"], joined["flops_sim"]) and (joined["flops_engine"] > 0).all()
    assert res.summary["utilization"]["mfu"] > 0 and res.summary["cost_model"]["roofline_gpu"] == "a100-80gb"


def test_cuda_caps_the_prefill_tokens_of_unbudgeted_policies():
    """On CUDA, Orca, vLLM v0 and FasterTransformer get the tokens the activation reserve was sized for
    (8192, or the model's context if longer) instead of an unlimited first batch; budgeted policies, an
    explicit budget and the CPU are left alone. The simulator's configuration follows, so validation compares
    the same batches."""
    from engine.replay import cap_prefill_tokens
    from sim.kv.memory import DEFAULT_MAX_BATCHED_TOKENS

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for sched in ("orca", "faster_transformer"):
        cfg = cap_prefill_tokens(EngineConfig(model="llama-2-7b", scheduler=sched), cuda)
        assert cfg.token_budget == DEFAULT_MAX_BATCHED_TOKENS == 8192
        assert cfg.sim_config(gpu="h200", kv_blocks=100).token_budget == 8192
    long = cap_prefill_tokens(EngineConfig(model="llama-2-7b", scheduler="orca", max_model_len=16384), cuda)
    assert long.token_budget == 16384  # every prompt the model takes still fits in one iteration
    vllm = cap_prefill_tokens(EngineConfig(model="llama-2-7b", scheduler="vllm"), cuda)
    assert vllm.token_budget is None and vllm.effective_token_budget() == 4096  # vLLM v0's own default
    assert cap_prefill_tokens(EngineConfig(scheduler="sarathi"), cuda).token_budget is None  # its own 512
    assert cap_prefill_tokens(EngineConfig(scheduler="orca", token_budget=1000), cuda).token_budget == 1000
    assert cap_prefill_tokens(EngineConfig(scheduler="orca"), cpu).token_budget is None
