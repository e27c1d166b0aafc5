"""Model and GPU catalogues: public shapes, parameter counts, sharding, HF config loading, lookup errors."""

from __future__ import annotations

import json

import pytest

from sim.catalog.hardware import GPUS, GPUSpec, UnknownGPUError, get_gpu
from sim.catalog.hf_config import load_hf_config
from sim.catalog.models import (
    MODELS,
    ModelConfigError,
    ModelSpec,
    UnknownModelError,
    get_model,
    layers_per_stage,
)


def test_llama2_7b_param_count() -> None:
    m = get_model("llama-2-7b")
    assert m.num_params == pytest.approx(6.74e9, rel=0.01)
    assert m.num_params == 6_738_415_616  # the HF checkpoint's count


def test_llama2_70b_param_count() -> None:
    m = get_model("llama-2-70b")
    assert m.num_kv_heads == 8
    assert m.num_params == pytest.approx(69e9, rel=0.01)


@pytest.mark.parametrize("name,approx", [("llama-2-13b", 13.0e9), ("llama-3-8b", 8.03e9), ("llama-3-70b", 70.6e9),
                                         ("mistral-7b", 7.24e9), ("yi-34b", 34.4e9), ("falcon-180b", 180e9),
                                         ("gpt-3-175b", 175e9)])
def test_other_param_counts(name: str, approx: float) -> None:
    assert get_model(name).num_params == pytest.approx(approx, rel=0.02)


def test_catalogue_entries_are_sane() -> None:
    for name, m in MODELS.items():
        assert m.name == name
        assert m.source
        assert m.hidden_size % m.num_heads == 0
        assert m.weight_bytes() > 0 and m.kv_bytes_per_token() > 0
    l3 = get_model("llama-3-70b")
    assert (l3.vocab_size, l3.rope_theta, l3.max_context) == (128256, 500000.0, 8192)
    assert not get_model("gpt-3-175b").gated_mlp and get_model("gpt-3-175b").intermediate_size == 4 * 12288
    tiny = get_model("tiny")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.num_kv_heads) == (2, 64, 4, 2)
    assert tiny.head_dim == 16


def test_layers_per_stage() -> None:
    assert layers_per_stage(32, 1) == [32]
    assert layers_per_stage(32, 2) == [16, 16]
    assert layers_per_stage(32, 3) == [11, 11, 10]
    assert layers_per_stage(80, 6) == [14, 14, 13, 13, 13, 13]
    with pytest.raises(ValueError):
        layers_per_stage(2, 3)
    with pytest.raises(ValueError):
        layers_per_stage(32, 0)


def test_weight_bytes_sharding() -> None:
    m = get_model("llama-2-7b")
    full = m.weight_bytes()
    assert full == 2 * m.num_params
    assert m.weight_bytes(dtype_bytes=1) == m.num_params
    # TP splits everything but the (tiny) norms
    assert m.weight_bytes(tp=2) == pytest.approx(full / 2, rel=1e-4)
    # PP=2: stage 0 holds 16 layers + embedding, stage 1 16 layers + final norm + lm head
    emb = m.vocab_size * m.hidden_size
    s0, s1 = m.stage_params(0, pp=2), m.stage_params(1, pp=2)
    assert s0 == 16 * m.layer_params() + emb
    assert s1 == 16 * m.layer_params() + emb + m.hidden_size
    assert s0 + s1 == m.num_params
    assert m.weight_bytes(pp=2) == 2 * max(s0, s1)
    # uneven split: the first stage carries the extra layer
    assert m.weight_bytes(pp=3) == 2 * m.stage_params(0, pp=3)


def test_tied_embeddings_counted_once_unless_split_by_pp() -> None:
    tied = ModelSpec("t", 4, 64, 4, 4, 128, 1000, 512, tie_embeddings=True)
    untied = ModelSpec("u", 4, 64, 4, 4, 128, 1000, 512)
    assert untied.num_params - tied.num_params == 1000 * 64
    assert tied.stage_params(0) == tied.num_params
    # with PP the last stage needs its own copy of the lm head
    assert tied.stage_params(0, pp=2) + tied.stage_params(1, pp=2) == untied.num_params


def test_kv_bytes_per_token_and_replicated_kv_heads() -> None:
    m7 = get_model("llama-2-7b")
    assert m7.kv_bytes_per_token() == 2 * 32 * 32 * 128 * 2  # 512 KiB
    assert m7.kv_bytes_per_token(tp=2) == m7.kv_bytes_per_token() // 2
    assert m7.kv_bytes_per_token(pp=2) == m7.kv_bytes_per_token() // 2
    m70 = get_model("llama-2-70b")
    assert m70.kv_bytes_per_token() == 2 * 80 * 8 * 128 * 2
    assert m70.kv_bytes_per_token(tp=8) == 2 * 80 * 1 * 128 * 2
    # 8 kv heads over 16 GPUs: each GPU still holds one (replicated) kv head
    assert m70.kv_heads_per_gpu(16) == 1
    assert m70.kv_bytes_per_token(tp=16) == m70.kv_bytes_per_token(tp=8)
    tiny = get_model("tiny")
    assert tiny.kv_heads_per_gpu(4) == 1
    with pytest.raises(ValueError, match="tp=3"):
        m7.check_tp(3)


def test_get_model_names_and_aliases() -> None:
    m = get_model("llama-2-7b")
    assert get_model("LLaMA-2-7B") is m
    assert get_model("meta-llama/Llama-2-7b-hf") is m
    assert get_model("llama2_7b") is m
    assert get_model("meta-llama/Meta-Llama-3-8B-Instruct") is get_model("llama-3-8b")
    assert get_model(m) is m


@pytest.mark.parametrize("lookup, error, name, catalogue", [(get_model, UnknownModelError, "llama-9-1t", MODELS),
                                                          (get_gpu, UnknownGPUError, "tpu-v5", GPUS)])
def test_unknown_name_lists_the_catalogue(lookup, error, name, catalogue) -> None:
    with pytest.raises(error) as e:
        lookup(name)
    msg = str(e.value)
    assert name in msg
    for known in catalogue:
        assert known in msg
    assert isinstance(e.value, ValueError)


def _write_config(path, **overrides) -> dict:
    cfg = {"_name_or_path": "my-org/my-llama", "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4,
           "hidden_size": 256, "num_attention_heads": 8, "num_key_value_heads": 2, "intermediate_size": 688,
           "vocab_size": 1000, "max_position_embeddings": 2048, "rope_theta": 1e6, "tie_word_embeddings": True,
           "rms_norm_eps": 1e-6, "hidden_act": "silu"}
    cfg.update(overrides)
    cfg = {k: v for k, v in cfg.items() if v is not None}
    path.write_text(json.dumps(cfg))
    return cfg


def test_load_hf_config(tmp_path) -> None:
    f = tmp_path / "config.json"
    _write_config(f)
    m = load_hf_config(f)
    assert (m.num_layers, m.hidden_size, m.num_heads, m.num_kv_heads) == (4, 256, 8, 2)
    assert (m.intermediate_size, m.vocab_size, m.max_context) == (688, 1000, 2048)
    assert m.rope_theta == 1e6 and m.tie_embeddings and m.norm_eps == 1e-6 and m.gated_mlp
    assert m.name == "my-org/my-llama" and m.head_dim == 32
    # a directory holding config.json, through get_model too
    assert load_hf_config(tmp_path) == m
    assert get_model(str(tmp_path)) == m
    assert get_model(str(f)) == m


def test_load_hf_config_defaults(tmp_path) -> None:
    f = tmp_path / "config.json"
    _write_config(f, num_key_value_heads=None, rope_theta=None, tie_word_embeddings=None, rms_norm_eps=None)
    m = load_hf_config(f)
    assert m.num_kv_heads == m.num_heads == 8
    assert m.rope_theta == 10000.0 and not m.tie_embeddings


def test_load_hf_config_explicit_head_dim(tmp_path) -> None:
    f = tmp_path / "config.json"
    _write_config(f, head_dim=64)
    m = load_hf_config(f)
    assert m.head_dim == 64
    assert m.layer_params() == 256 * (8 + 4) * 64 + 8 * 64 * 256 + 3 * 256 * 688 + 2 * 256


def test_load_hf_config_missing_key(tmp_path) -> None:
    f = tmp_path / "config.json"
    _write_config(f, intermediate_size=None)
    with pytest.raises(ModelConfigError) as e:
        load_hf_config(f)
    assert "intermediate_size" in str(e.value)
    assert str(f) in str(e.value)
    assert isinstance(e.value, ValueError)


def test_load_hf_config_bad_value_and_missing_file(tmp_path) -> None:
    f = tmp_path / "config.json"
    _write_config(f, hidden_size="big")
    with pytest.raises(ModelConfigError, match="hidden_size"):
        load_hf_config(f)
    with pytest.raises(ModelConfigError, match="nope"):
        load_hf_config(tmp_path / "nope.json")


def test_gpu_catalogue() -> None:
    expected = {"a100-40gb", "a100-80gb", "a6000", "a40", "l40s", "h100-sxm", "h100-pcie", "h200"}
    assert expected <= set(GPUS)
    for name, g in GPUS.items():
        assert g.name == name and g.source
        assert g.bf16_flops > 1e14 and g.mem_bandwidth > 5e11 and g.mem_bytes > 20e9  # the RTX 4090 has 24 GiB
        assert g.interconnect in ("nvlink", "pcie") and g.interconnect_bw > 0
        assert g.hourly_price_usd > 0
    for pcie in ("a6000", "a40", "l40s"):
        assert GPUS[pcie].interconnect == "pcie" and GPUS[pcie].interconnect_bw < 100e9
    assert GPUS["h100-sxm"].bf16_flops == pytest.approx(989e12, rel=0.01)  # dense, not the sparse 1979
    assert GPUS["h200"].mem_bandwidth == pytest.approx(4.8e12)


def test_get_gpu() -> None:
    g = get_gpu("A100-80GB")
    assert g is GPUS["a100-80gb"] and get_gpu(g) is g
    assert get_gpu("H100") is GPUS["h100-sxm"]
    assert isinstance(g, GPUSpec)
