"""Deployment files (sim.serving.deployment) and the disaggregated flags of ``servesim simulate`` (issue 20)."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import yaml

from sim.cli.main import build_parser, main
from sim.cli.simulate import add_simulate_parser, config_from_args
from sim.outputs.run_folder import read_run
from sim.serving.deployment import POOL_KEYS, DeploymentError, describe, load_deployment
from sim.serving.disagg import DECODE_ROUTERS, LINK_KINDS, DisaggConfig
from sim.serving.simulator import SimConfig

WORKLOAD = ("-n", "50", "--qps", "20", "--prompt-len", "uniform:32:400", "--output-len", "uniform:2:100", "-q")

DISAGG_YAML = """\
model: llama-2-7b
mode: disaggregated
scheduler: vllm
max_num_seqs: 64          # vLLM's name, for both pools
prefill:
  gpu: h100-sxm
  tp: 2
  max_num_batched_tokens: 8192
decode:
  replicas: 2
  scheduler: sarathi
  token_budget: 256
link: {kind: nvlink, bandwidth_GBps: 450, latency_us: 5, overlap: true}
routers: {prefill: least_outstanding, decode: least_running}
"""

DISAGG_TOML = """\
model = "llama-2-7b"
mode = "disaggregated"
scheduler = "vllm"
max_num_seqs = 64

[prefill]
gpu = "h100-sxm"
tp = 2
max_num_batched_tokens = 8192

[decode]
replicas = 2
scheduler = "sarathi"
token_budget = 256

[link]
kind = "nvlink"
bandwidth_GBps = 450
latency_us = 5
overlap = true

[routers]
prefill = "least_outstanding"
decode = "least_running"
"""


def _write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def _flags_config(*argv: str):
    """The deployment ``servesim simulate ARGV`` would run."""
    return config_from_args(build_parser().parse_args(["simulate", *argv]))


def test_yaml_and_toml_give_the_same_deployment(tmp_path):
    a = load_deployment(_write(tmp_path, "d.yaml", DISAGG_YAML))
    b = load_deployment(_write(tmp_path, "d.toml", DISAGG_TOML))
    assert a == b and isinstance(a, DisaggConfig)
    assert (a.prefill.gpu, a.prefill.tp, a.prefill.token_budget, a.prefill.max_batch_size) == ("h100-sxm", 2, 8192, 64)
    assert (a.decode.gpu, a.decode.replicas, a.decode.scheduler, a.decode.token_budget) == ("a100-80gb", 2, "sarathi", 256)
    assert a.prefill.router == "least_outstanding" and a.decode_router == "least_running"
    assert (a.link.kind, a.link.bandwidth, a.link.latency_s, a.link.overlap) == ("nvlink", 450e9, 5e-6, True)


def test_an_aggregated_file_equals_the_same_flags(tmp_path):
    keys = ("gpu: h100-sxm\ntp: 2\nreplicas: 3\nscheduler: vllm\nmax_num_seqs: 64\nmax_num_batched_tokens: 1024\n"
            "enable_prefix_caching: true\nrouter: cache_aware\nkv_blocks: 900\ngpu_memory_utilization: 0.8\n")
    flags = _flags_config("--model", "llama-2-7b", "--max-model-len", "2048", "--gpu", "h100-sxm", "--tp", "2",
                          "--replicas", "3", "--scheduler", "vllm", "--max-num-seqs", "64", "--token-budget", "1024",
                          "--enable-prefix-caching", "--router", "cache_aware", "--kv-blocks", "900",
                          "--gpu-mem-util", "0.8")
    top = load_deployment(_write(tmp_path, "a.yaml", "model: llama-2-7b\nmax_model_len: 2048\n" + keys))
    pool = "".join(f"  {line}\n" for line in keys.splitlines())
    under = load_deployment(_write(tmp_path, "p.yaml", "model: llama-2-7b\nmax_model_len: 2048\npool:\n" + pool))
    assert top == flags == under and isinstance(top, SimConfig)


def test_disaggregated_flags_equal_the_same_file(tmp_path, capsys):
    path = _write(tmp_path, "d.yaml", "model: tiny\nmode: disaggregated\nprefill: {replicas: 1}\ndecode: {replicas: 2}\n")
    flags = ["--model", "tiny", "--disaggregated", "--prefill-replicas", "1", "--decode-replicas", "2"]
    assert _flags_config(*flags) == load_deployment(path)
    assert main(["simulate", *flags, *WORKLOAD, "--out", str(tmp_path / "flags")]) == 0
    assert main(["simulate", "--deployment", str(path), *WORKLOAD, "--out", str(tmp_path / "file")]) == 0
    for name in ("summary.json", "requests.csv", "batches.csv"):
        assert (tmp_path / "flags" / name).read_text() == (tmp_path / "file" / name).read_text(), name


def test_pool_flags_default_to_the_deployment_flags():
    c = _flags_config("--disaggregated", "--gpu", "h100-sxm", "--tp", "2", "--scheduler", "vllm", "--decode-tp", "1",
                      "--decode-scheduler", "sarathi", "--kv-link", "nvlink", "--kv-link-bandwidth", "450",
                      "--kv-link-latency-us", "5", "--kv-transfer-overlap", "--decode-router", "least_running")
    assert (c.prefill.gpu, c.prefill.tp, c.prefill.scheduler) == ("h100-sxm", 2, "vllm")
    assert (c.decode.gpu, c.decode.tp, c.decode.scheduler) == ("h100-sxm", 1, "sarathi")
    assert (c.link.kind, c.link.bandwidth, c.link.latency_s, c.link.overlap) == ("nvlink", 450e9, 5e-6, True)
    assert c.decode_router == "least_running"


def test_simulate_writes_a_disaggregated_run_folder(tmp_path, capsys):
    path = _write(tmp_path, "d.yaml", "model: llama-2-7b\nmode: disaggregated\nscheduler: vllm\n"
                                      "prefill: {replicas: 1}\ndecode: {replicas: 2, kv_blocks: 400}\n")
    out = tmp_path / "run"
    assert main(["simulate", "--deployment", str(path), *WORKLOAD, "--out", str(out), "--plots", "--timeline"]) == 0
    console = capsys.readouterr().out
    summary, requests, batches = read_run(out)
    assert summary["config"]["mode"] == "disaggregated" and summary["deployment"]["mode"] == "disaggregated"
    assert summary["deployment"]["decode"]["kv_blocks"] == 400 and summary["deployment"]["prefill"]["replicas"] == 1
    assert summary["deployment"]["link"] == {"kind": "network", "bandwidth_GBps": 25.0, "latency_us": 10.0,
                                             "overlap": False}
    assert summary["disaggregation"]["transfers"] == (requests["output_tokens"] > 1).sum()
    assert {"prefill_replica", "decode_replica", "transfer_start", "transfer_end"} <= set(requests.columns)
    assert set(batches["pool"]) == {"prefill", "decode"}
    assert (out / "timeline.json").exists() and (out / "ttft_cdf.png").exists()
    assert console.splitlines()[0] == (
        "servesim: llama-2-7b, disaggregated: prefill 1x a100-80gb (1 replica x TP1 PP1, vllm) -> decode 2x "
        "a100-80gb (2 replicas x TP1 PP1, vllm), KV over network 25 GB/s per GPU, cost model roofline")
    assert "KV transfer: P50 " in console and "link utilisation max " in console


def test_describe_reads_back_to_the_same_deployment(tmp_path):
    for text in (DISAGG_YAML, "model: tiny\nscheduler: orca\n"):
        first = describe(load_deployment(_write(tmp_path, "d.yaml", text)))
        again = describe(load_deployment(_write(tmp_path, "e.yaml", yaml.safe_dump(first))))
        assert again == first
    assert first["pool"]["token_budget"] is None and first["pool"]["dtype"] == "bf16"  # orca: no budget


@pytest.mark.parametrize(("text", "message"), [
    ("model: tiny\nmode: disaggregated\nprefill: {tp: two}\ndecode: {}\n",
     "key 'prefill.tp': expected an integer >= 1, got 'two'"),
    ("model: tiny\nmode: disaggregated\nprefill: {}\n", "mode disaggregated needs a 'decode' section"),
    ("model: tiny\ntpp: 2\n", "key 'tpp': unknown key; known keys: model, max_model_len, mode, pool, gpu, tp,"),
    ("model: tiny\nprefill: {}\n", "key 'prefill': unknown key (a pool section of mode: disaggregated)"),
    ("model: tiny\nmode: disaggregated\nrouter: cache_aware\nprefill: {}\ndecode: {}\n",
     "key 'router': unknown key (disaggregated routers are set under 'routers'"),
    ("model: tiny\nmode: disaggregated\nprefill: {}\ndecode: {}\nlink: {bandwidth_GBps: 0}\n",
     "key 'link.bandwidth_GBps': expected a number > 0, got 0"),
    ("model: tiny\nmode: disaggregated\nprefill: {}\ndecode: {}\nrouters: {decode: round_robin}\n",
     "key 'routers.decode': expected one of least_kv, least_running, got 'round_robin'"),
    ("model: tiny\ngpu: a100\ngpu_memory_utilization: 1.5\n", "key 'gpu_memory_utilization': expected a number in (0, 1]"),
    ("model: tiny\ngpu: nosuch\n", "key 'gpu': unknown GPU 'nosuch'"),
    ("model: nosuch\n", "key 'model': unknown model 'nosuch'"),
    ("tp: 1\n", "key 'model': required"),
    ("model: tiny\nmode: split\n", "key 'mode': expected one of aggregated, disaggregated, got 'split'"),
    ("model: tiny\nenable_prefix_caching: 1\n", "key 'enable_prefix_caching': expected true or false, got 1"),
    ("model: tiny\nmax_num_seqs: 4\nmax_batch_size: 8\n", "'max_num_seqs' and 'max_batch_size' set the same thing"),
    ("model: tiny\ntp: 1\ntp: 2\n", "d.yaml:3: key 'tp' given twice"),
    ("model: tiny\ntp: [1\n", "d.yaml:3: "),
    ("- model: tiny\n", "expected a mapping of keys, got [{'model': 'tiny'}]"),
])
def test_each_bad_input_is_one_line_naming_the_file_and_key(tmp_path, capsys, text, message):
    path = _write(tmp_path, "d.yaml", text)
    with pytest.raises(DeploymentError) as e:
        load_deployment(path)
    assert message in str(e.value) and str(e.value).startswith(str(path))
    assert main(["simulate", "--deployment", str(path), "-n", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_toml_syntax_errors_name_the_line_and_other_files_are_refused(tmp_path):
    with pytest.raises(DeploymentError, match=r"d\.toml:2: Invalid value"):
        load_deployment(_write(tmp_path, "d.toml", 'model = "tiny"\ntp = \n'))
    with pytest.raises(DeploymentError, match="YAML .* or TOML"):
        load_deployment(_write(tmp_path, "d.json", "{}"))
    with pytest.raises(FileNotFoundError, match="no such deployment file"):
        load_deployment(tmp_path / "none.yaml")


def test_a_model_path_is_taken_from_the_files_folder(tmp_path, monkeypatch):
    llama = {"model_type": "llama", "num_hidden_layers": 4, "hidden_size": 256, "num_attention_heads": 4,
             "num_key_value_heads": 4, "intermediate_size": 512, "vocab_size": 1000, "max_position_embeddings": 2048}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(llama))
    path = _write(tmp_path, "d.yaml", "model: m/config.json\n")
    monkeypatch.chdir(tmp_path.parent)  # not the file's folder
    c = load_deployment(path)
    assert c.model == str(tmp_path / "m" / "config.json") and c.model_spec().num_layers == 4


def test_deployment_flags_beside_a_file_are_refused_by_name(tmp_path, capsys):
    path = _write(tmp_path, "d.yaml", "model: tiny\n")
    assert main(["simulate", "--deployment", str(path), "--tp", "1", "--max-num-seqs", "8", "--decode-tp", "2",
                 "-n", "3", "-q"]) == 2
    err = capsys.readouterr().err
    assert "drop --tp, --max-num-seqs, --decode-tp" in err and err.count("\n") == 1
    assert main(["simulate", "--model", "tiny", "--prefill-tp", "2", "--kv-link", "nvlink", "-n", "3", "-q"]) == 2
    assert "--prefill-tp, --kv-link describe a disaggregated deployment: add --disaggregated" in capsys.readouterr().err


def test_the_file_schema_and_the_flags_cover_the_simulator():
    run_settings = {"model", "max_model_len", "seed", "strict"}
    assert set(POOL_KEYS) == {f.name for f in dataclasses.fields(SimConfig)} - run_settings
    usage = argparse.ArgumentParser().add_subparsers()
    usage = add_simulate_parser(usage).format_usage()
    assert f"--kv-link {{{','.join(LINK_KINDS)}}}" in usage and f"{{{','.join(DECODE_ROUTERS)}}}" in usage


def test_summary_json_of_an_aggregated_run_echoes_the_resolved_deployment(tmp_path, capsys):
    assert main(["simulate", "--model", "tiny", "--scheduler", "vllm_v1", *WORKLOAD, "--out", str(tmp_path)]) == 0
    dep = json.loads((tmp_path / "summary.json").read_text())["deployment"]
    assert dep["mode"] == "aggregated" and dep["pool"]["token_budget"] == 2048
    assert dep["pool"]["enable_prefix_caching"] is True  # vllm_v1's default, resolved
