"""Model catalogue: public shapes of Llama-family decoders, mixtures of experts and MLA models, and lookup.

Names are matched case-insensitively (Hugging Face ids accepted); a path to a config.json is read by
``sim.catalog.hf_config``. The shapes themselves are ``sim.catalog.spec.ModelSpec``.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from sim.catalog.limits import MAX_CONTEXT, size_problem
from sim.catalog.spec import (  # noqa: F401 (re-exported: the catalogue's vocabulary)
    DTYPE_BYTES,
    ModelConfigError,
    ModelSpec,
    UnknownModelError,
    check_weight_dtype,
    kv_dtype_bytes,
    layers_per_stage,
)
from sim.catalog.variants import MLASpec, MoESpec
from sim.inputs import brief

_LLAMA2 = "Touvron et al. 2023, 'Llama 2' + meta-llama/{} config.json"
_LLAMA3 = "meta-llama/{} config.json (Llama 3 model card)"
_QWEN3 = "Qwen/{} config.json (Qwen3 technical report, 2025)"

MODELS: dict[str, ModelSpec] = {m.name: m for m in (
    ModelSpec("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096,
              source=_LLAMA2.format("Llama-2-7b-hf")),
    ModelSpec("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096,
              source=_LLAMA2.format("Llama-2-13b-hf")),
    ModelSpec("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096,
              source=_LLAMA2.format("Llama-2-70b-hf") + " (GQA, 8 kv heads)"),
    ModelSpec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192, rope_theta=500000.0,
              source=_LLAMA3.format("Meta-Llama-3-8B")),
    ModelSpec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192, rope_theta=500000.0,
              source=_LLAMA3.format("Meta-Llama-3-70B")),
    ModelSpec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768,
              source="mistralai/Mistral-7B-v0.1 config.json (max_position_embeddings 32768); "
                     "its 4096-token sliding-window attention is ignored (full attention is priced)"),
    ModelSpec("yi-34b", 60, 7168, 56, 8, 20480, 64000, 4096, rope_theta=5000000.0,
              source="01-ai/Yi-34B config.json"),
    ModelSpec("yi-34b-200k", 60, 7168, 56, 8, 20480, 64000, 200000, rope_theta=5000000.0,
              source="01-ai/Yi-34B-200K config.json (max_position_embeddings 200000; Sarathi-Serve's long-context "
                     "model)"),
    ModelSpec("falcon-180b", 80, 14848, 232, 8, 4 * 14848, 65024, 2048, tie_embeddings=True,
              gated_mlp=False,
              source="tiiuae/falcon-180B config.json (GELU MLP 4*hidden, tied embeddings); parallel "
                     "attention/MLP and LayerNorm are priced as the sequential Llama layer"),
    ModelSpec("gpt-3-175b", 96, 12288, 96, 96, 4 * 12288, 50257, 2048, tie_embeddings=True,
              gated_mlp=False,
              source="Brown et al. 2020, 'Language Models are Few-Shot Learners', Table 2.1; "
                     "biases and learned position embeddings ignored"),
    ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256, 131072, rope_theta=500000.0,
              source=_LLAMA3.format("Llama-3.1-8B") + " (Llama 3.1: 128k context)"),
    ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256, 131072, rope_theta=500000.0,
              source=_LLAMA3.format("Llama-3.1-70B") + " (Llama 3.1: 128k context)"),
    ModelSpec("llama-3.2-1b", 16, 2048, 32, 8, 8192, 128256, 131072, rope_theta=500000.0, tie_embeddings=True,
              head_dim_override=64, source=_LLAMA3.format("Llama-3.2-1B") + " (tied embeddings; a draft for Llama 3.1)"),
    ModelSpec("llama-3.1-405b", 126, 16384, 128, 8, 53248, 128256, 131072, rope_theta=500000.0,
              source=_LLAMA3.format("Llama-3.1-405B") + " (Llama 3.1: 128k context)"),
    ModelSpec("qwen3-32b", 64, 5120, 64, 8, 25600, 151936, 40960, rope_theta=1000000.0, head_dim_override=128,
              norm_eps=1e-6, source=_QWEN3.format("Qwen3-32B")),
    ModelSpec("mixtral-8x7b", 32, 4096, 32, 8, 14336, 32000, 32768, rope_theta=1000000.0,
              moe=MoESpec(num_experts=8, top_k=2, expert_intermediate_size=14336),
              source="mistralai/Mixtral-8x7B-v0.1 config.json (8 experts, top-2; Jiang et al. 2024, 'Mixtral of "
                     "Experts': 46.7B parameters, 12.9B active)"),
    ModelSpec("mixtral-8x22b", 56, 6144, 48, 8, 16384, 32768, 65536, rope_theta=1000000.0,
              moe=MoESpec(num_experts=8, top_k=2, expert_intermediate_size=16384),
              source="mistralai/Mixtral-8x22B-v0.1 config.json (8 experts, top-2; 141B parameters, 39B active)"),
    ModelSpec("qwen3-30b-a3b", 48, 2048, 32, 4, 6144, 151936, 40960, rope_theta=1000000.0, head_dim_override=128,
              norm_eps=1e-6, moe=MoESpec(num_experts=128, top_k=8, expert_intermediate_size=768),
              source=_QWEN3.format("Qwen3-30B-A3B") + " (128 experts, top-8; 30.5B parameters, 3.3B active)"),
    ModelSpec("qwen3-235b-a22b", 94, 4096, 64, 4, 12288, 151936, 40960, rope_theta=1000000.0,
              head_dim_override=128, norm_eps=1e-6,
              moe=MoESpec(num_experts=128, top_k=8, expert_intermediate_size=1536),
              source=_QWEN3.format("Qwen3-235B-A22B") + " (128 experts, top-8; 235B parameters, 22B active)"),
    ModelSpec("deepseek-v3", 61, 7168, 128, 128, 18432, 129280, 163840, norm_eps=1e-6, dtype="fp8",
              moe=MoESpec(num_experts=256, top_k=8, expert_intermediate_size=2048, shared_intermediate_size=2048,
                          first_dense_layers=3),
              mla=MLASpec(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128,
                          q_lora_rank=1536),
              source="deepseek-ai/DeepSeek-V3 config.json (MLA, 256 routed experts top-8 + 1 shared, first 3 layers "
                     "dense, fp8 weights; DeepSeek-AI 2024, 'DeepSeek-V3 Technical Report': 671B parameters, 37B "
                     "active; its multi-token-prediction module is not counted)"),
    ModelSpec("tiny", 2, 64, 4, 2, 128, 256, 1024,
              source="servesim test model"),
    ModelSpec("tiny-moe", 2, 64, 4, 2, 128, 256, 1024,
              moe=MoESpec(num_experts=4, top_k=2, expert_intermediate_size=64),
              source="servesim test model: tiny with a 4-expert top-2 sparse MLP in every layer"),
    ModelSpec("small", 4, 512, 8, 4, 1408, 16384, 2048,
              source="servesim CPU validation model (about 30M parameters): big enough that compute, not Python, "
                     "dominates an iteration on a CPU"),
)}


def _norm(name: str) -> str:
    """Catalogue key normalisation: case, '-', '_', '.', ' ' do not matter."""
    return re.sub(r"[-_. ]", "", name.strip().lower())


_ALIASES: dict[str, str] = {
    "meta-llama/Llama-2-7b-hf": "llama-2-7b", "meta-llama/Llama-2-7b-chat-hf": "llama-2-7b",
    "meta-llama/Llama-2-13b-hf": "llama-2-13b", "meta-llama/Llama-2-13b-chat-hf": "llama-2-13b",
    "meta-llama/Llama-2-70b-hf": "llama-2-70b", "meta-llama/Llama-2-70b-chat-hf": "llama-2-70b",
    "meta-llama/Meta-Llama-3-8B": "llama-3-8b", "meta-llama/Meta-Llama-3-8B-Instruct": "llama-3-8b",
    "meta-llama/Meta-Llama-3-70B": "llama-3-70b", "meta-llama/Meta-Llama-3-70B-Instruct": "llama-3-70b",
    "mistralai/Mistral-7B-v0.1": "mistral-7b", "mistral-7b-v0.1": "mistral-7b",
    "mistralai/Mistral-7B-Instruct-v0.2": "mistral-7b",  # same shape (v0.2: rope_theta 1e6, no sliding window)
    "01-ai/Yi-34B": "yi-34b",
    "01-ai/Yi-34B-200K": "yi-34b-200k",
    "tiiuae/falcon-180B": "falcon-180b",
    "meta-llama/Llama-3.1-8B": "llama-3.1-8b", "meta-llama/Llama-3.1-8B-Instruct": "llama-3.1-8b",
    "meta-llama/Llama-3.1-70B": "llama-3.1-70b", "meta-llama/Llama-3.1-70B-Instruct": "llama-3.1-70b",
    "meta-llama/Llama-3.1-405B": "llama-3.1-405b", "meta-llama/Llama-3.1-405B-Instruct": "llama-3.1-405b",
    "Qwen/Qwen3-32B": "qwen3-32b", "Qwen/Qwen3-30B-A3B": "qwen3-30b-a3b", "Qwen/Qwen3-235B-A22B": "qwen3-235b-a22b",
    "mistralai/Mixtral-8x7B-v0.1": "mixtral-8x7b", "mistralai/Mixtral-8x7B-Instruct-v0.1": "mixtral-8x7b",
    "mistralai/Mixtral-8x22B-v0.1": "mixtral-8x22b", "mistralai/Mixtral-8x22B-Instruct-v0.1": "mixtral-8x22b",
    "deepseek-ai/DeepSeek-V3": "deepseek-v3", "deepseek-ai/DeepSeek-V3-0324": "deepseek-v3",
    "gpt-3": "gpt-3-175b", "gpt3-175b": "gpt-3-175b", "gpt-3-davinci": "gpt-3-175b",
}
_LOOKUP: dict[str, str] = {_norm(k): k for k in MODELS}
_LOOKUP.update({_norm(a): n for a, n in _ALIASES.items()})


def with_max_model_len(model: ModelSpec | str, max_model_len: int | None) -> ModelSpec:
    """``model`` with its context length set to ``max_model_len`` (vLLM's --max-model-len; None: unchanged)."""
    spec = get_model(model)
    if max_model_len is None or max_model_len == spec.max_context:
        return spec
    why = size_problem(max_model_len, MAX_CONTEXT)
    if why:
        raise ValueError(f"max_model_len {why}")
    return dataclasses.replace(spec, max_context=max_model_len)


def _is_config(p: Path) -> bool:
    """Whether ``p`` names a config file (a FIFO or a device too: its reader bounds them) or a folder holding one;
    False for a name the system cannot look up (too long, a NUL byte)."""
    try:
        return (p.exists() and not p.is_dir()) or (p / "config.json").exists()
    except (OSError, ValueError):
        return False


def get_model(name_or_path: str | ModelSpec) -> ModelSpec:
    """Resolve a catalogue name (case-insensitive, HF ids accepted) or a path to a config.json / its directory."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    key = _LOOKUP.get(_norm(str(name_or_path)))
    if key is not None:
        return MODELS[key]
    p = Path(name_or_path)
    if _is_config(p):
        from sim.catalog.hf_config import load_hf_config
        return load_hf_config(p)
    raise UnknownModelError(f"unknown model {brief(str(name_or_path))}: not a catalogue name and not a path to a "
                            f"config.json; known models: {', '.join(sorted(MODELS))}")
