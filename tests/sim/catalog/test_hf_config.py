"""config.json parsing of MoE and MLA models, and refusal of fields that change cost or memory we do not model."""

from __future__ import annotations

import json

import pytest

from sim.catalog.hf_config import load_hf_config
from sim.catalog.models import ModelConfigError, get_model
from sim.cli.main import main

MIXTRAL = {"model_type": "mixtral", "num_hidden_layers": 32, "hidden_size": 4096, "num_attention_heads": 32,
           "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
           "max_position_embeddings": 32768, "rope_theta": 1e6, "num_local_experts": 8, "num_experts_per_tok": 2,
           "sliding_window": None, "hidden_act": "silu"}
DEEPSEEK_V3 = {"model_type": "deepseek_v3", "num_hidden_layers": 61, "hidden_size": 7168, "num_attention_heads": 128,
               "num_key_value_heads": 128, "intermediate_size": 18432, "moe_intermediate_size": 2048,
               "vocab_size": 129280, "max_position_embeddings": 163840, "n_routed_experts": 256,
               "n_shared_experts": 1, "num_experts_per_tok": 8, "first_k_dense_replace": 3, "moe_layer_freq": 1,
               "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_rope_head_dim": 64, "qk_nope_head_dim": 128,
               "v_head_dim": 128, "num_nextn_predict_layers": 1,
               "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
QWEN3_MOE = {"model_type": "qwen3_moe", "num_hidden_layers": 48, "hidden_size": 2048, "num_attention_heads": 32,
             "num_key_value_heads": 4, "head_dim": 128, "intermediate_size": 6144, "moe_intermediate_size": 768,
             "vocab_size": 151936, "max_position_embeddings": 40960, "num_experts": 128, "num_experts_per_tok": 8,
             "decoder_sparse_step": 1, "mlp_only_layers": [], "use_sliding_window": False, "sliding_window": None}


def _write(tmp_path, cfg, name="config.json"):
    p = tmp_path / name
    p.write_text(json.dumps(cfg))
    return p


@pytest.mark.parametrize("cfg,catalogue", [(MIXTRAL, "mixtral-8x7b"), (DEEPSEEK_V3, "deepseek-v3"),
                                           (QWEN3_MOE, "qwen3-30b-a3b")])
def test_configs_read_as_their_catalogue_entries(tmp_path, cfg, catalogue):
    m = load_hf_config(_write(tmp_path, cfg))
    ref = get_model(catalogue)
    assert (m.moe, m.mla, m.dtype) == (ref.moe, ref.mla, ref.dtype)
    assert m.num_params == ref.num_params and m.active_params == ref.active_params


@pytest.mark.parametrize("patch,field", [
    ({"model_type": "my_moe", "num_experts": 8}, "num_experts"),              # expert fields, unknown type
    ({"model_type": "llama", "num_local_experts": 8}, "num_local_experts"),
    ({"model_type": "llama", "kv_lora_rank": 512}, "kv_lora_rank"),           # MLA on a type we read densely
    ({"sliding_window": 4096}, "sliding_window"),                              # Mistral-style windowed attention
    ({"quantization_config": {"quant_method": "awq"}}, "quantization_config.quant_method"),
    ({"model_type": "qwen3_moe", "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 64,
      "decoder_sparse_step": 2}, "decoder_sparse_step"),
])
def test_unmodelled_fields_are_refused_naming_the_field(tmp_path, patch, field):
    p = _write(tmp_path, {**{k: v for k, v in MIXTRAL.items() if k not in ("num_local_experts",
                                                                           "num_experts_per_tok")},
                          "model_type": "mistral", **patch})
    with pytest.raises(ModelConfigError, match=f"field '{field}'"):
        load_hf_config(p)


def test_the_issues_mixtral_config_is_no_longer_simulated_as_a_dense_7b(tmp_path, capsys):
    """simulate refuses one A100 for it with a one-line reason; on 2 H100s it runs with all 46.7B parameters."""
    p = _write(tmp_path, MIXTRAL)
    assert main(["simulate", "--model-config", str(p), "--gpu", "a100-80gb", "-n", "5", "-q"]) == 2
    err = capsys.readouterr().err
    assert "weights need 87.0 GiB" in err and len(err.strip().splitlines()) == 1
    assert main(["simulate", "--model-config", str(p), "--gpu", "h100-sxm", "--tp", "2", "-n", "5", "-q",
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["memory"]["weight_bytes"] == pytest.approx(93.4e9 / 2, rel=0.01)


def test_plan_searches_expert_parallelism_for_moe_models_only():
    from sim.capacity.planner import enumerate_candidates
    moe = enumerate_candidates("mixtral-8x7b", ["h100-sxm"], max_gpus=4, schedulers=["sarathi"], budgets=[512])
    assert {(c.tp, c.ep) for c in moe} == {(1, 1), (2, 1), (2, 2), (4, 1), (4, 4)}
    assert all(c.infeasible for c in moe if c.tp == 1)  # 93 GB of weights on one 80 GB GPU
    assert "EP2" in next(c.label for c in moe if c.ep == 2)
    dense = enumerate_candidates("llama-2-7b", ["h100-sxm"], max_gpus=4, schedulers=["sarathi"], budgets=[512])
    assert {c.ep for c in dense} == {1}


def test_mistyped_fields_are_one_line_errors(tmp_path):
    for patch, field in (({"sliding_window": "1024"}, "sliding_window"), ({"rms_norm_eps": None}, "rms_norm_eps")):
        with pytest.raises(ModelConfigError, match=f"field '{field}'"):
            load_hf_config(_write(tmp_path, {**MIXTRAL, **patch}))
