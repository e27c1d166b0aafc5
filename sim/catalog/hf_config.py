"""Hugging Face ``config.json`` -> ModelSpec, for dense Llama-style models, Mixtral, Qwen2/3-MoE and DeepSeek-V2/V3.

A key that changes cost or memory and that servesim does not model (sliding-window attention,
expert fields of an unknown ``model_type``, a layer pattern other than the supported ones,
integer quantisation) is refused with a message naming it: a model is never simulated as
something else.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from sim.catalog.spec import ModelConfigError, ModelSpec
from sim.catalog.variants import MLASpec, MoESpec
from sim.jsonfile import read_json_object

REQUIRED_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings")
DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "yi", "internlm2")
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
# quantisation methods whose weights servesim sizes and prices (bytes per parameter)
QUANT_DTYPES = {"fp8": "fp8"}


class _Config:
    """The JSON object with typed getters whose errors name the file and the key."""

    def __init__(self, path: Path, cfg: dict[str, Any]) -> None:
        self.path, self.cfg = path, cfg

    def error(self, key: str, why: str) -> ModelConfigError:
        return ModelConfigError(f"model config {self.path}: field '{key}': {why}")

    def int(self, key: str, default: int | None = None, *, zero_ok: bool = False) -> int:
        v = self.cfg.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v < 0 or (v == 0 and not zero_ok):
            raise self.error(key, f"must be a {'non-negative' if zero_ok else 'positive'} integer, got {v!r}")
        return v

    def float(self, key: str, default: float) -> float:
        v = self.cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise self.error(key, f"must be a positive number, got {v!r}")
        return float(v)

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None


def _refuse_unmodelled(c: _Config, model_type: str) -> None:
    """Raise for keys that change cost or memory in a way servesim does not model."""
    cfg = c.cfg
    window = c.int("sliding_window") if c.has("sliding_window") else None
    if window is not None and cfg.get("use_sliding_window", True) and window < c.int("max_position_embeddings"):
        raise c.error("sliding_window", f"sliding-window attention ({window} tokens, context "
                                        f"{cfg['max_position_embeddings']}) is not modelled: servesim would price full "
                                        "attention and a full KV cache; set it to null to accept that approximation")
    if model_type not in MOE_TYPES:
        expertish = [k for k in cfg if ("expert" in k or "moe" in k) and cfg[k] not in (None, 0, [], False)]
        if expertish:
            raise c.error(expertish[0], f"expert fields in a config of model_type {model_type or '(none)'!r}, "
                                        f"which servesim does not read as a mixture of experts (known: "
                                        f"{', '.join(MOE_TYPES)}); refusing rather than sizing it as a dense model")
        mla = [k for k in MLA_KEYS if c.has(k)]
        if mla:
            raise c.error(mla[0], f"latent-attention fields in a config of model_type {model_type or '(none)'!r} "
                                  "(servesim reads MLA for deepseek_v2/deepseek_v3)")
    q = cfg.get("quantization_config")
    if q is not None:
        method = q.get("quant_method") if isinstance(q, dict) else None
        if method not in QUANT_DTYPES:
            raise c.error("quantization_config.quant_method", f"{method!r} is not modelled (servesim sizes "
                                                              f"{', '.join(QUANT_DTYPES)} weights and bf16)")


def _moe(c: _Config, model_type: str) -> MoESpec | None:
    """The sparse MLP of a MoE config (None for a dense one)."""
    cfg = c.cfg
    if model_type not in MOE_TYPES:
        return None
    if cfg.get("mlp_only_layers"):
        raise c.error("mlp_only_layers", "dense layers at chosen positions are not modelled (only leading ones)")
    for key in ("decoder_sparse_step", "moe_layer_freq"):
        if cfg.get(key, 1) != 1:
            raise c.error(key, f"{cfg[key]!r}: only every layer (1) is modelled")
    if model_type == "mixtral":
        return MoESpec(c.int("num_local_experts"), c.int("num_experts_per_tok"), c.int("intermediate_size"))
    experts_key = "n_routed_experts" if model_type.startswith("deepseek") else "num_experts"
    width = c.int("moe_intermediate_size")
    if model_type.startswith("deepseek"):
        shared = c.int("n_shared_experts", 0, zero_ok=True) * width
    else:
        shared = c.int("shared_expert_intermediate_size", 0, zero_ok=True)
    return MoESpec(c.int(experts_key), c.int("num_experts_per_tok"), width, shared_intermediate_size=shared,
                   first_dense_layers=c.int("first_k_dense_replace", 0, zero_ok=True))


def _mla(c: _Config) -> MLASpec | None:
    """DeepSeek's latent attention when the config has its ranks."""
    if not c.has("kv_lora_rank"):
        return None
    return MLASpec(c.int("kv_lora_rank"), c.int("qk_rope_head_dim"), c.int("qk_nope_head_dim"), c.int("v_head_dim"),
                   q_lora_rank=c.int("q_lora_rank") if c.has("q_lora_rank") else None)


def load_hf_config(path: str | os.PathLike) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json or its directory; refuse what is not modelled."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    cfg = read_json_object(p, ModelConfigError, "a JSON object (a Hugging Face config.json)", "model config")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ModelConfigError(f"model config {p} is missing required key(s): {', '.join(missing)} "
                               f"(expected Llama/Mistral/Qwen-style keys: {', '.join(REQUIRED_KEYS)})")
    c = _Config(p, cfg)
    model_type = str(cfg.get("model_type") or "")
    _refuse_unmodelled(c, model_type)
    heads = c.int("num_attention_heads")
    hidden = c.int("hidden_size")
    head_dim = c.int("head_dim") if c.has("head_dim") else None
    q = cfg.get("quantization_config")
    name = cfg.get("_name_or_path") or (p.parent.name if p.parent.name else p.stem)
    act = str(cfg.get("hidden_act", "silu")).lower()
    try:
        return ModelSpec(
            name=str(name),
            num_layers=c.int("num_hidden_layers"),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=c.int("num_key_value_heads") if c.has("num_key_value_heads") else heads,
            intermediate_size=c.int("intermediate_size"),
            vocab_size=c.int("vocab_size"),
            max_context=c.int("max_position_embeddings"),
            rope_theta=c.float("rope_theta", 10000.0),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            gated_mlp=act in ("silu", "swiglu", "swish"),
            norm_eps=c.float("rms_norm_eps", 1e-5),
            source=str(p),
            head_dim_override=None if head_dim is None or head_dim * heads == hidden else head_dim,
            moe=_moe(c, model_type),
            mla=_mla(c),
            dtype=QUANT_DTYPES[q["quant_method"]] if q else "bf16",
        )
    except ModelConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ModelConfigError(f"model config {p}: {e}") from e
