"""Hugging Face ``config.json`` -> ModelSpec, for dense Llama-style models, Mixtral, Qwen2/3-MoE and DeepSeek-V2/V3.

A key that changes cost or memory and that servesim does not model (sliding-window attention,
expert fields of an unknown ``model_type``, a layer pattern other than the supported ones,
integer quantisation) is refused with a message naming it: a model is never simulated as
something else. Every size is bounded (``sim.catalog.limits``) and every other key read has its
JSON type checked (``KEY_TYPES``), so a hostile config is one line ``FILE:LINE: field 'KEY': why``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from sim.catalog.limits import (
    MAX_CONTEXT,
    MAX_EXPERTS,
    MAX_HEAD_DIM,
    MAX_HEADS,
    MAX_HIDDEN,
    MAX_INTERMEDIATE,
    MAX_LAYERS,
    MAX_VOCAB,
    size_problem,
)
from sim.catalog.spec import ModelConfigError, ModelSpec
from sim.catalog.variants import MLASpec, MoESpec
from sim.inputs import JSONObject, brief, brief_name, brief_text, read_json_object

REQUIRED_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings")
DENSE_TYPES = ("llama", "mistral", "qwen2", "qwen3", "yi", "internlm2")
MOE_TYPES = ("mixtral", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")
MLA_KEYS = ("kv_lora_rank", "q_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim")
# quantisation methods whose weights servesim sizes and prices (bytes per parameter)
QUANT_DTYPES = {"fp8": "fp8"}


#: bound of each integer key (``sim.catalog.limits``: several times the largest real model's)
KEY_LIMITS: dict[str, int] = {
    "num_hidden_layers": MAX_LAYERS, "hidden_size": MAX_HIDDEN, "num_attention_heads": MAX_HEADS,
    "num_key_value_heads": MAX_HEADS, "head_dim": MAX_HEAD_DIM, "intermediate_size": MAX_INTERMEDIATE,
    "vocab_size": MAX_VOCAB, "max_position_embeddings": MAX_CONTEXT, "sliding_window": MAX_CONTEXT,
    "num_local_experts": MAX_EXPERTS, "num_experts": MAX_EXPERTS, "n_routed_experts": MAX_EXPERTS,
    "num_experts_per_tok": MAX_EXPERTS, "n_shared_experts": MAX_EXPERTS, "moe_intermediate_size": MAX_INTERMEDIATE,
    "shared_expert_intermediate_size": MAX_INTERMEDIATE, "first_k_dense_replace": MAX_LAYERS,
    "kv_lora_rank": MAX_HIDDEN, "q_lora_rank": MAX_HIDDEN, "qk_rope_head_dim": MAX_HEAD_DIM,
    "qk_nope_head_dim": MAX_HEAD_DIM, "v_head_dim": MAX_HEAD_DIM,
}
#: the JSON type of each other key read or checked (null is accepted: the default); a wrong type is refused
#: rather than read as something else (``tie_word_embeddings: "no"`` is not true)
KEY_TYPES: dict[str, tuple[type, str]] = {
    "model_type": (str, "a string"), "_name_or_path": (str, "a string"), "hidden_act": (str, "a string"),
    "torch_dtype": (str, "a string"), "tie_word_embeddings": (bool, "true or false"),
    "use_sliding_window": (bool, "true or false"), "quantization_config": (dict, "an object"),
    "rope_scaling": (dict, "an object"), "mlp_only_layers": (list, "a list"), "architectures": (list, "a list"),
}
#: the longest model name taken from ``_name_or_path`` (it names the model in every output)
MAX_NAME_CHARS = 1024


class _Config:
    """The JSON object with typed getters whose errors name the file, the key's line and the key."""

    def __init__(self, path: Path, cfg: dict[str, Any]) -> None:
        self.path, self.cfg = path, cfg

    def error(self, key: str, why: str) -> ModelConfigError:
        line = self.cfg.line_of(key) if isinstance(self.cfg, JSONObject) else None
        return ModelConfigError(f"{brief_name(self.path)}{f':{line}' if line else ''}: field '{key}': {why}")

    def int(self, key: str, default: int | None = None, *, zero_ok: bool = False) -> int:
        v = self.cfg.get(key, default)
        why = size_problem(v, KEY_LIMITS.get(key, MAX_HIDDEN), least=0 if zero_ok else 1)
        if why:
            raise self.error(key, why)
        return v

    def float(self, key: str, default: float) -> float:
        v = self.cfg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise self.error(key, f"must be a positive number, got {brief(v)}")
        return float(v)

    def has(self, key: str) -> bool:
        return self.cfg.get(key) is not None

    def check_types(self) -> None:
        """Refuse a key of KEY_TYPES holding another JSON type (null stands for the default)."""
        for key, (kind, what) in KEY_TYPES.items():
            v = self.cfg.get(key)
            if v is not None and (not isinstance(v, kind) or (kind is not bool and isinstance(v, bool))):
                raise self.error(key, f"must be {what}, got {brief(v)}")
        name = self.cfg.get("_name_or_path")
        if isinstance(name, str) and len(name) > MAX_NAME_CHARS:
            raise self.error("_name_or_path", f"longer than {MAX_NAME_CHARS:,} characters, got {brief(name)}")
        q = self.cfg.get("quantization_config")
        if q is not None and not isinstance(q.get("quant_method"), str):
            raise self.error("quantization_config.quant_method",
                             f"must be a string, got {brief(q.get('quant_method'))}")


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
            raise c.error(expertish[0], f"expert fields in a config of model_type {brief(model_type or '(none)')}, "
                                        f"which servesim does not read as a mixture of experts (known: "
                                        f"{', '.join(MOE_TYPES)}); refusing rather than sizing it as a dense model")
        mla = [k for k in MLA_KEYS if c.has(k)]
        if mla:
            raise c.error(mla[0], f"latent-attention fields in a config of model_type {brief(model_type or '(none)')} "
                                  "(servesim reads MLA for deepseek_v2/deepseek_v3)")
    q = cfg.get("quantization_config")
    if q is not None and q["quant_method"] not in QUANT_DTYPES:  # check_types: a dict whose method is a string
        raise c.error("quantization_config.quant_method", f"{brief(q['quant_method'])} is not modelled (servesim "
                                                          f"sizes {', '.join(QUANT_DTYPES)} weights and bf16)")


def _moe(c: _Config, model_type: str) -> MoESpec | None:
    """The sparse MLP of a MoE config (None for a dense one)."""
    cfg = c.cfg
    if model_type not in MOE_TYPES:
        return None
    if cfg.get("mlp_only_layers"):
        raise c.error("mlp_only_layers", "dense layers at chosen positions are not modelled (only leading ones)")
    for key in ("decoder_sparse_step", "moe_layer_freq"):
        if cfg.get(key, 1) != 1:
            raise c.error(key, f"{brief(cfg[key])}: only every layer (1) is modelled")
    experts_key = ("num_local_experts" if model_type == "mixtral" else
                   "n_routed_experts" if model_type.startswith("deepseek") else "num_experts")
    if c.int("num_experts_per_tok") > c.int(experts_key):
        raise c.error("num_experts_per_tok", f"{cfg['num_experts_per_tok']} experts per token exceed the "
                                             f"{cfg[experts_key]} experts of '{experts_key}'")
    if c.int("first_k_dense_replace", 0, zero_ok=True) > c.int("num_hidden_layers"):
        raise c.error("first_k_dense_replace", f"{cfg['first_k_dense_replace']} dense layers exceed the "
                                               f"{cfg['num_hidden_layers']} layers of 'num_hidden_layers'")
    if model_type == "mixtral":
        return MoESpec(c.int("num_local_experts"), c.int("num_experts_per_tok"), c.int("intermediate_size"))
    width = c.int("moe_intermediate_size")
    if model_type.startswith("deepseek"):
        shared = c.int("n_shared_experts", 0, zero_ok=True) * width
        if shared > MAX_INTERMEDIATE:
            raise c.error("n_shared_experts", f"{cfg['n_shared_experts']} shared experts of width {width} exceed the "
                                              f"bound of {MAX_INTERMEDIATE:,} on their total width")
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
    try:
        if p.is_dir():
            p = p / "config.json"
    except (OSError, ValueError):  # a name the system cannot look up: the reader says why
        pass
    cfg = read_json_object(p, ModelConfigError, "a JSON object (a Hugging Face config.json)", "model config")
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ModelConfigError(f"{brief_name(p)}: missing required key(s) {', '.join(missing)} "
                               f"(expected Llama/Mistral/Qwen-style keys: {', '.join(REQUIRED_KEYS)})")
    c = _Config(p, cfg)
    c.check_types()
    model_type = cfg.get("model_type") or ""
    _refuse_unmodelled(c, model_type)
    heads = c.int("num_attention_heads")
    hidden = c.int("hidden_size")
    head_dim = c.int("head_dim") if c.has("head_dim") else None
    kv_heads = c.int("num_key_value_heads") if c.has("num_key_value_heads") else heads
    if heads % kv_heads:
        raise c.error("num_key_value_heads", f"{kv_heads} kv heads do not divide the {heads} attention heads")
    q = cfg.get("quantization_config")
    name = cfg.get("_name_or_path") or (p.parent.name if p.parent.name else p.stem)
    act = str(cfg.get("hidden_act", "silu")).lower()
    try:
        return ModelSpec(
            name=str(name),
            num_layers=c.int("num_hidden_layers"),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=kv_heads,
            intermediate_size=c.int("intermediate_size"),
            vocab_size=c.int("vocab_size"),
            max_context=c.int("max_position_embeddings"),
            rope_theta=c.float("rope_theta", 10000.0),
            tie_embeddings=cfg.get("tie_word_embeddings") is True,
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
        raise ModelConfigError(f"{brief_name(p)}: {brief_text(e, 200)}") from e
