"""Issue 32: capacity never above the sustained rate, the binding bound and knob named, sizing for a target rate
(``plan --qps``, ``capacity --qps``), the winner's launch command and deployment file, labels with every GPU."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sim.capacity.launch import deployment_text, launch_command
from sim.capacity.rate_check import size_for_rate
from sim.capacity.search import CapacitySearch, Slo, Workload, find_capacity
from sim.cli.main import main
from sim.cost.constant import ConstantCostModel
from sim.serving.simulator import SimConfig

# One request at a time, a 1-token prompt and 10 outputs at 10 ms an iteration: 0.1 s a request, 10 req/s sustained.
ONE_AT_A_TIME = SimConfig(model="tiny", scheduler="vllm", max_batch_size=1, kv_blocks=1000)


def test_capacity_stays_at_the_sustained_rate_when_no_latency_bound_binds():
    """Bounds this loose pass any short overloaded run (a 10-s run never shows a 1000-s median delay): only the
    saturation verdict keeps capacity at the 10 req/s the deployment sustains, and it is named as binding."""
    wl = Workload(num_requests=100, duration=20, prompt_len="fixed:1", output_len="fixed:10", arrival="gamma",
                  cv=0.01)
    res = find_capacity(ONE_AT_A_TIME, wl, Slo.make(tbt_p99=10.0, scheduling_delay_p50=1000.0), seeds=(0,),
                        rel_tol=0.05, cost_model=ConstantCostModel(0.01), progress=False)
    assert res.error is None and res.bounded
    # the probe (every request queued at once) serves exactly 10 req/s; no rate above it passes
    assert res.saturated_rps == pytest.approx(10.0)
    assert 10.0 / 1.05 * 0.99 <= res.capacity <= res.saturated_rps
    assert res.binding == ["saturation"] and res.limit == "max_num_seqs"
    assert res.describe_binding().startswith("binding: saturation")
    assert res.headroom["tbt_p99"] == pytest.approx(0.001, rel=0.01)  # 10 ms gaps against a 10-s bound
    assert "limit: max_num_seqs (full in 100% of iterations" in res.describe_limit()


def test_the_binding_latency_bound_is_named():
    """A TBT bound of 15 ms with 10-ms iterations: the bound, not the queue, stops the rate."""
    cfg = SimConfig(model="tiny", scheduler="sarathi", token_budget=100_000, max_batch_size=100_000,
                    kv_blocks=200_000)
    wl = Workload(num_requests=200, duration=10, prompt_len="fixed:1", output_len="fixed:100", arrival="gamma",
                  cv=0.01)
    res = find_capacity(cfg, wl, Slo.make(tbt_p99=0.015, scheduling_delay_p50=None), seeds=(0,), rel_tol=0.05,
                        cost_model=ConstantCostModel(0.01, per_token=1e-4), progress=False)
    assert res.binding == ["tbt_p99"] and res.limit == "compute"


def test_a_capacity_label_counts_every_gpu_and_shows_expert_parallelism():
    search = CapacitySearch(SimConfig(model="mixtral-8x7b", gpu="h100-sxm", tp=8, ep=8), Workload(num_requests=10))
    assert search.label == "mixtral-8x7b 8x h100-sxm (1 replica x TP8 EP8 PP1) sarathi"


def _table(rows):
    cols = ["config", "mode", "status", "capacity_qps", "replicas", "gpus", "usd_per_hour"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


def test_sizing_scales_each_configuration_by_whole_replicas_and_takes_the_cheapest():
    """At 10 req/s: A (4 req/s on 1 GPU, $2/h) needs 3 replicas: $6/h, headroom 12/10 - 1; B (11 req/s on 2 GPUs,
    $7/h) needs 1: $7/h, headroom 10%; C (2 replicas of 3 req/s each on 2 GPUs, $4/h) needs 4 replicas: $8/h."""
    table = _table([("A", "aggregated", "ok", 4.0, 1, 1, 2.0), ("B", "aggregated", "ok", 11.0, 1, 2, 7.0),
                    ("C", "aggregated", "ok", 6.0, 2, 2, 4.0), ("D", "aggregated", "infeasible", None, 1, 8, 16.0)])
    sized = size_for_rate(table, 10.0)
    assert sized["config"].tolist() == ["A", "B", "C"]
    assert sized["replicas_needed"].tolist() == [3, 1, 4]
    assert sized["gpus_needed"].tolist() == [3, 2, 4]
    assert sized["usd_per_hour_at_rate"].tolist() == [6.0, 7.0, 8.0]
    assert sized["headroom"].tolist() == pytest.approx([0.2, 0.1, 0.2])


def test_the_launch_command_uses_vllms_flags_and_sarathi_serves_the_others():
    v1 = launch_command(SimConfig(model="mixtral-8x7b", gpu="h100-sxm", tp=8, ep=8, scheduler="vllm_v1",
                                  token_budget=2048))
    assert v1.startswith("vllm serve mixtral-8x7b --tensor-parallel-size 8 --enable-expert-parallel ")
    assert "--max-num-batched-tokens 2048" in v1 and "--enable-prefix-caching" in v1 and "VLLM_USE_V1" not in v1
    sarathi = launch_command(SimConfig(scheduler="sarathi", token_budget=512, max_batch_size=64, pp=2))
    assert sarathi.startswith("VLLM_USE_V1=0 vllm serve llama-2-7b --tensor-parallel-size 1 "
                              "--pipeline-parallel-size 2 ")
    assert "--enable-chunked-prefill" in sarathi and "--max-num-seqs 64" in sarathi
    assert "--max-num-batched-tokens 512" in sarathi
    orca = launch_command(SimConfig(scheduler="orca", tp=2))
    assert orca.startswith("python -m sarathi.entrypoints.openai.api_server --model_config_model llama-2-7b ")
    assert "--scheduler_config_type orca" in orca and "--parallel_config_tensor_parallel_size 2" in orca


def test_the_deployment_file_reads_back_as_the_same_deployment(tmp_path):
    from sim.serving.deployment import describe, load_deployment
    cfg = SimConfig(model="mixtral-8x7b", gpu="h100-sxm", tp=8, ep=8, scheduler="vllm_v1", replicas=2)
    path = tmp_path / "deployment.yaml"
    path.write_text(deployment_text(cfg))
    assert describe(load_deployment(path)) == describe(cfg)


def test_capacity_qps_checks_one_rate(capsys):
    argv = ["capacity", "--model", "tiny", "--seeds", "1", "-n", "40", "--duration", "0", "-j", "1", "-q",
            "--prompt-len", "fixed:32", "--output-len", "fixed:8"]
    assert main([*argv, "--qps", "5", "--json"]) == 0
    check = json.loads(capsys.readouterr().out)
    assert check["passes"] and check["seed_passes"] == [True] and check["qps"] == 5
    assert set(check["bound_use"]) == {"tbt_p99", "scheduling_delay_p50"}
    assert main([*argv, "--qps", "1e5"]) == 1  # far past what one GPU sustains
    out = capsys.readouterr().out
    assert "FAILS the SLO" in out and "saturation: 1 of 1 seeds saturated" in out


def test_plan_qps_names_the_cheapest_deployment_and_writes_its_launch_files(tmp_path, capsys):
    out = tmp_path / "plan"
    argv = ["plan", "--model", "tiny", "--out", str(out), "--max-gpus", "1", "--schedulers", "vllm_v1",
            "--seeds", "1", "-n", "40", "--duration", "0", "-j", "1", "-q", "--prompt-len", "fixed:32",
            "--output-len", "fixed:8", "--slo-ttft-p99", "5", "--qps", "20"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "TTFT99 s" in text.splitlines()[1]  # the user's own SLO column in the console table
    assert "cheapest at 20 req/s: " in text and "headroom" in text and "vllm serve tiny" in text
    launch = (out / "launch.sh").read_text()
    assert "vllm serve tiny --tensor-parallel-size 1" in launch
    assert main(["simulate", "--deployment", str(out / "deployment.yaml"), "-n", "5", "-q"]) == 0
    sized = pd.read_csv(out / "sizing.csv")
    assert sized["headroom"].iloc[0] >= 0 and sized["replicas_needed"].iloc[0] >= 1


def test_an_unknown_flag_is_refused_under_its_subcommands_usage(capsys):
    with pytest.raises(SystemExit):
        main(["capacity", "--bogus"])
    assert "(see servesim capacity --help)" in capsys.readouterr().err


def test_capacity_with_closed_loop_clients_caps_what_is_in_flight(capsys):
    argv = ["capacity", "--model", "tiny", "--seeds", "1", "-n", "40", "--duration", "0", "-j", "1", "-q",
            "--prompt-len", "fixed:32", "--output-len", "fixed:8", "--max-concurrency", "4", "--json"]
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["label"].endswith("(4 closed-loop clients)") and res["capacity"] > 0
    assert res["binding"] and res["limit"] is not None
