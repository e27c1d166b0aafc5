"""Model catalogue: public shapes of Llama-family (and similar) decoders, plus Hugging Face config.json loading.

Sizes follow the layer structure the engine and the cost model share: per layer a
fused qkv projection, an output projection, an MLP (gated SwiGLU: gate, up, down;
or plain: up, down) and two norms; then a final norm and the lm head. Biases,
learned position embeddings (GPT-3) and other small extras are ignored: they are
well under 1% of the weights and of the time.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from sim.jsonfile import read_json_object


class UnknownModelError(ValueError):
    """A model name that is neither in the catalogue nor a path to a config.json."""


class ModelConfigError(ValueError):
    """A config.json that cannot be turned into a ModelSpec (missing key, bad value)."""


def layers_per_stage(num_layers: int, pp: int) -> list[int]:
    """Decoder layers held by each pipeline stage; earlier stages take the remainder (as vLLM does)."""
    if pp < 1:
        raise ValueError(f"pipeline parallel size must be >= 1, got {pp}")
    if pp > num_layers:
        raise ValueError(f"pipeline parallel size {pp} exceeds the number of layers {num_layers}")
    base, rem = divmod(num_layers, pp)
    return [base + (1 if s < rem else 0) for s in range(pp)]


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer; everything the cost model and the engine need."""

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    max_context: int
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    gated_mlp: bool = True  # SwiGLU (gate, up, down); False: plain up/down MLP (GPT-3, Falcon)
    norm_eps: float = 1e-5
    source: str = ""
    head_dim_override: int | None = None  # when config.json gives head_dim != hidden / heads

    def __post_init__(self) -> None:
        for f in ("num_layers", "hidden_size", "num_heads", "num_kv_heads", "intermediate_size",
                  "vocab_size", "max_context"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"model {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim_override is None and self.hidden_size % self.num_heads:
            raise ValueError(f"model {self.name!r}: hidden_size {self.hidden_size} does not split into "
                             f"{self.num_heads} heads (give head_dim if the model's heads are narrower)")

    @property
    def head_dim(self) -> int:
        """Per-head width of q, k and v."""
        return self.head_dim_override or self.hidden_size // self.num_heads

    # ---- tensor-parallel shard shapes -------------------------------------------------------

    def check_tp(self, tp: int) -> None:
        """Raise ValueError unless the attention heads split evenly over ``tp`` GPUs."""
        if tp < 1:
            raise ValueError(f"tensor parallel size must be >= 1, got {tp}")
        if self.num_heads % tp:
            raise ValueError(f"model {self.name}: {self.num_heads} attention heads do not split over tp={tp}")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise ValueError(f"model {self.name}: {self.num_kv_heads} kv heads neither split over nor "
                             f"replicate evenly across tp={tp}")

    def q_heads_per_gpu(self, tp: int = 1) -> int:
        """Query heads on one GPU of a TP group."""
        self.check_tp(tp)
        return self.num_heads // tp

    def kv_heads_per_gpu(self, tp: int = 1) -> int:
        """KV heads on one GPU of a TP group; when kv heads < tp each GPU holds a replica of one."""
        self.check_tp(tp)
        return max(1, self.num_kv_heads // tp)

    def intermediate_per_gpu(self, tp: int = 1) -> int:
        """MLP intermediate width on one GPU (rounded up when it does not divide)."""
        return -(-self.intermediate_size // tp)

    def vocab_per_gpu(self, tp: int = 1) -> int:
        """Vocabulary rows of the (vocab-parallel) embedding and lm head on one GPU."""
        return -(-self.vocab_size // tp)

    # ---- parameter counts -------------------------------------------------------------------

    def layer_params(self, tp: int = 1) -> int:
        """Parameters of one decoder layer held by one GPU of a TP group (norms replicated)."""
        h, hd = self.hidden_size, self.head_dim
        qh, kvh = self.q_heads_per_gpu(tp), self.kv_heads_per_gpu(tp)
        inter = self.intermediate_per_gpu(tp)
        attn = h * (qh + 2 * kvh) * hd + qh * hd * h
        mlp = (3 if self.gated_mlp else 2) * h * inter
        return attn + mlp + 2 * h

    @property
    def num_params(self) -> int:
        """Total parameters: embedding, layers, final norm and lm head (counted once when tied)."""
        emb = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_embeddings else emb
        return emb + self.num_layers * self.layer_params(1) + self.hidden_size + lm_head

    def stage_params(self, stage: int, tp: int = 1, pp: int = 1) -> int:
        """Parameters held by one GPU of pipeline ``stage``: its layers, plus embedding (first) and lm head (last)."""
        layers = layers_per_stage(self.num_layers, pp)
        if not 0 <= stage < pp:
            raise ValueError(f"stage {stage} out of range for pp={pp}")
        n = layers[stage] * self.layer_params(tp)
        emb = self.vocab_per_gpu(tp) * self.hidden_size
        if stage == 0:
            n += emb
        if stage == pp - 1:
            n += self.hidden_size  # final norm
            # tied embeddings share storage only when embedding and lm head live on the same stage
            if not (self.tie_embeddings and pp == 1):
                n += emb
        return n

    def weight_bytes(self, dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
        """Weight bytes on the most loaded GPU of a (tp, pp) replica; what must fit before any KV cache."""
        return dtype_bytes * max(self.stage_params(s, tp, pp) for s in range(pp))

    def stage_kv_bytes_per_token(self, stage: int, dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes one token takes on one GPU of pipeline ``stage`` (k and v, all its layers)."""
        layers = layers_per_stage(self.num_layers, pp)[stage]
        return 2 * layers * self.kv_heads_per_gpu(tp) * self.head_dim * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes per token on the most loaded GPU (the stage with the most layers)."""
        return self.stage_kv_bytes_per_token(0, dtype_bytes, tp, pp)  # stage 0 has the most layers


_LLAMA2 = "Touvron et al. 2023, 'Llama 2' + meta-llama/{} config.json"
_LLAMA3 = "meta-llama/{} config.json (Llama 3 model card)"

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
    ModelSpec("tiny", 2, 64, 4, 2, 128, 256, 1024,
              source="servesim test model"),
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
    "01-ai/Yi-34B": "yi-34b",
    "01-ai/Yi-34B-200K": "yi-34b-200k",
    "tiiuae/falcon-180B": "falcon-180b",
    "gpt-3": "gpt-3-175b", "gpt3-175b": "gpt-3-175b", "gpt-3-davinci": "gpt-3-175b",
}
_LOOKUP: dict[str, str] = {_norm(k): k for k in MODELS}
_LOOKUP.update({_norm(a): n for a, n in _ALIASES.items()})


_REQUIRED_HF_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
                     "vocab_size", "max_position_embeddings")


def with_max_model_len(model: ModelSpec | str, max_model_len: int | None) -> ModelSpec:
    """``model`` with its context length set to ``max_model_len`` (vLLM's --max-model-len; None: unchanged)."""
    spec = get_model(model)
    if max_model_len is None or max_model_len == spec.max_context:
        return spec
    if max_model_len < 1:
        raise ValueError(f"max_model_len must be >= 1, got {max_model_len}")
    return dataclasses.replace(spec, max_context=max_model_len)


def load_hf_config(path: str | os.PathLike) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face config.json (Llama/Mistral/Qwen2-style keys) or its directory."""
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    cfg = read_json_object(p, ModelConfigError, "a JSON object (a Hugging Face config.json)", "model config")
    missing = [k for k in _REQUIRED_HF_KEYS if k not in cfg]
    if missing:
        raise ModelConfigError(f"model config {p} is missing required key(s): {', '.join(missing)} "
                               f"(expected Llama/Mistral/Qwen2-style keys: {', '.join(_REQUIRED_HF_KEYS)})")

    def _int(key: str, default: int | None = None) -> int:
        v = cfg.get(key, default)
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ModelConfigError(f"model config {p}: {key} must be a positive integer, got {v!r}")
        return v

    heads = _int("num_attention_heads")
    kv = cfg.get("num_key_value_heads")
    head_dim = cfg.get("head_dim")
    hidden = _int("hidden_size")
    name = cfg.get("_name_or_path") or (p.parent.name if p.parent.name else p.stem)
    act = str(cfg.get("hidden_act", "silu")).lower()
    try:
        return ModelSpec(
            name=str(name),
            num_layers=_int("num_hidden_layers"),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=heads if kv is None else _int("num_key_value_heads"),
            intermediate_size=_int("intermediate_size"),
            vocab_size=_int("vocab_size"),
            max_context=_int("max_position_embeddings"),
            rope_theta=float(cfg.get("rope_theta", 10000.0)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            gated_mlp=act in ("silu", "swiglu", "swish"),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            source=str(p),
            head_dim_override=(None if head_dim is None or _int("head_dim") * heads == hidden
                               else _int("head_dim")),
        )
    except ModelConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ModelConfigError(f"model config {p}: {e}") from e


def get_model(name_or_path: str | ModelSpec) -> ModelSpec:
    """Resolve a catalogue name (case-insensitive, HF ids accepted) or a path to a config.json / its directory."""
    if isinstance(name_or_path, ModelSpec):
        return name_or_path
    key = _LOOKUP.get(_norm(str(name_or_path)))
    if key is not None:
        return MODELS[key]
    p = Path(name_or_path)
    if p.is_file() or (p.is_dir() and (p / "config.json").is_file()):
        return load_hf_config(p)
    raise UnknownModelError(f"unknown model {name_or_path!r}: not a catalogue name and not a path to a "
                            f"config.json; known models: {', '.join(sorted(MODELS))}")
