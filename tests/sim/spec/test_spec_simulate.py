"""Speculative decoding through simulate(): summary, tables, the drafter's memory, determinism, the CLI's refusals."""

from __future__ import annotations

import pytest

from sim.catalog.models import get_model
from sim.cli.main import main
from sim.cost.constant import ConstantCostModel
from sim.request import TraceRequest
from sim.serving.simulator import SimConfig, simulate
from sim.spec.config import parse_speculative_config
from sim.spec.run import blocks_with_drafter, drafter_memory

MTP = '{"method": "mtp", "num_speculative_tokens": 3}'


def _run(acceptance, trace=None, seed=0, spec=MTP):
    trace = trace or [TraceRequest("A", 0.0, 8, 10)]
    cfg = SimConfig(model="tiny", scheduler="vllm_v1", speculative_config=spec, spec_acceptance=acceptance,
                    seed=seed, frontend="none")
    return simulate(trace, cfg, cost_model=ConstantCostModel(1.0))


def test_summary_and_tables_count_drafts_and_acceptance():
    # one request, 10 outputs, acceptance 1: two verify steps of 3 drafts, all accepted (see test_spec_scheduling)
    res = _run("1.0")
    sp = res.summary["speculative"]
    assert (sp["verify_steps"], sp["proposed_tokens"], sp["accepted_tokens"]) == (2, 6, 6)
    assert sp["acceptance_rate"] == 1.0 and sp["mean_accepted_length"] == 4.0
    assert sp["method"] == "mtp" and sp["acceptance"]["expected_tokens_per_step"] == 4.0
    row = res.requests.iloc[0]
    assert (row.spec_steps, row.spec_proposed, row.spec_accepted, row.spec_mean_accepted_length) == (2, 6, 6, 4.0)
    first = res.batches[res.batches["stage"] == 0]
    assert first["spec_proposed"].sum() == 6 and first["spec_accepted"].sum() == 6
    assert sp["output_tokens_per_iteration"] == 10 / len(first)
    assert sp["itl_per_chunk_s"]["count"] == 3 and sp["itl_per_token_s"]["count"] == 9


def test_same_seed_same_bytes_other_seed_other_draws():
    trace = [TraceRequest(str(i), 0.3 * i, 20 + i, 30) for i in range(8)]
    a = _run("0.6", trace, seed=3).requests.to_csv()
    assert a == _run("0.6", trace, seed=3).requests.to_csv()
    assert a != _run("0.6", trace, seed=4).requests.to_csv()


def test_without_speculation_no_speculative_outputs():
    cfg = SimConfig(model="tiny", scheduler="vllm_v1", frontend="none")
    res = simulate([TraceRequest("A", 0.0, 8, 10)], cfg, cost_model=ConstantCostModel(1.0))
    assert "speculative" not in res.summary and "spec_steps" not in res.requests
    assert "speculative" not in res.summary["memory"]


def test_the_drafter_takes_its_weights_and_kv_share_from_the_cache():
    model = get_model("llama-3.1-8b")
    spec = parse_speculative_config('{"method": "eagle3", "num_speculative_tokens": 3}')
    weights, frac = drafter_memory(spec, model, tp=1, dtype_bytes=2)
    h = model.hidden_size
    assert weights == 2 * (model.layer_params(1, layer=31) + 3 * h * h + 32000 * h) and frac == 1 / 32
    # (blocks x bytes per block - the head's weights) over a block grown by the head's KV layer (1/32 more)
    small = {"bytes_per_block": 2 * 2**20, "num_blocks": 28_000}
    n = blocks_with_drafter(28_000, small, spec, model, 1, 2)
    assert n == int((28_000 * 2 * 2**20 - weights) // (2 * 2**20 * 33 / 32))
    assert n < 28_000 and small["num_blocks"] == n and small["speculative"]["num_blocks_without_drafter"] == 28_000
    draft = parse_speculative_config('{"method": "draft_model", "num_speculative_tokens": 3, "model": '
                                     '"llama-3.2-1b"}', "0.6")
    w, f = drafter_memory(draft, model, tp=1, dtype_bytes=2)
    # Llama-3.2-1B caches 16 layers x 8 KV heads x 64 dims per token, Llama-3.1-8B 32 x 8 x 128
    assert w == get_model("llama-3.2-1b").weight_bytes(2) and f == pytest.approx(16 * 8 * 64 / (32 * 8 * 128))
    assert blocks_with_drafter(7, {}, draft, model, 1, 2) == 7  # a fixed --kv-blocks stands


@pytest.mark.parametrize("extra, words", [
    (["--scheduler", "sarathi", "--speculative-config", MTP], ("vLLM V1 only",)),
    (["--scheduler", "vllm_v1", "--spec-acceptance", "0.5"], ("add --speculative-config",)),
    (["--scheduler", "vllm_v1", "--speculative-config", '{"method": "mtp"}'], ("num_speculative_tokens",)),
    (["--scheduler", "vllm_v1", "--pp", "2", "--speculative-config", MTP], ("--pp",)),
])
def test_the_cli_refuses_in_one_line(capsys, extra, words):
    rc = main(["simulate", "-n", "3", "--model", "tiny", "--qps", "50", "-q", *extra])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("note:")]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert all(w in lines[0] for w in words), lines[0]


def test_the_cli_runs_a_speculative_simulation(tmp_path, capsys):
    rc = main(["simulate", "-n", "5", "--model", "tiny", "--qps", "50", "-q", "--scheduler", "vllm_v1",
               "--speculative-config", MTP, "--spec-acceptance", "0.8,0.6,0.4", "--out", str(tmp_path / "run")])
    assert rc == 0
    import json
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["speculative"]["acceptance"]["rates"] == [0.8, 0.6, 0.4]
    assert summary["config"]["speculative_config"] == MTP


def test_measured_per_position_acceptance_reads_back_the_rates_used():
    # 40 requests x 60 outputs with vLLM-style rates 0.8, 0.5, 0.2: the seeded draws give them back within 0.05
    trace = [TraceRequest(str(i), 0.1 * i, 16, 60) for i in range(40)]
    sp = _run("0.8,0.5,0.2", trace).summary["speculative"]
    assert sp["per_position_acceptance"] == pytest.approx([0.8, 0.5, 0.2], abs=0.05)


def test_a_deployment_file_speculates_and_disaggregated_pools_refuse(tmp_path, capsys):
    agg = tmp_path / "a.yaml"
    agg.write_text(f"model: tiny\nscheduler: vllm_v1\nspeculative_config: '{MTP}'\nspec_acceptance: '0.5'\n")
    assert main(["simulate", "--deployment", str(agg), "-n", "3", "-q", "--json"]) == 0
    import json
    assert json.loads(capsys.readouterr().out)["speculative"]["acceptance"]["rates"] == [0.5]
    dis = tmp_path / "d.yaml"
    dis.write_text(f"model: tiny\nmode: disaggregated\nscheduler: vllm_v1\nspeculative_config: '{MTP}'\n"
                   "prefill:\n  replicas: 1\ndecode:\n  replicas: 1\n")
    assert main(["simulate", "--deployment", str(dis), "-n", "3", "-q"]) == 2
    assert "disaggregated pools is not modelled" in capsys.readouterr().err
