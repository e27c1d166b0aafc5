"""The shape of a decoder-only transformer (``ModelSpec``): parameter counts, shards, KV bytes; weight dtypes.

Sizes follow the layer structure the engine and the cost model share: per layer a
fused qkv projection (or MLA's latent projections), an output projection, an MLP (gated
SwiGLU: gate, up, down; or plain: up, down; or a sparse MoE MLP with a router and optional
shared experts) and two norms; then a final norm and the lm head. Biases, learned position
embeddings (GPT-3), Qwen3's per-head q/k norms and other small extras are ignored: they are
well under 1% of the weights and of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.catalog.limits import MODEL_LIMITS, size_problem
from sim.catalog.variants import MLASpec, MoESpec
from sim.inputs import brief

#: weight dtypes and their bytes per parameter (vLLM's --dtype / --quantization fp8)
DTYPE_BYTES: dict[str, int] = {"bf16": 2, "fp16": 2, "fp8": 1}


def check_weight_dtype(dtype: str) -> int:
    """Bytes per weight of ``dtype`` (bf16, fp16, fp8)."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"--dtype {brief(dtype)}: expected one of {', '.join(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]


def kv_dtype_bytes(kv_cache_dtype: str, activation_bytes: int = 2) -> int:
    """Bytes per cached value: vLLM's --kv-cache-dtype auto (the activation dtype) or fp8."""
    if kv_cache_dtype == "auto":
        return activation_bytes
    if kv_cache_dtype in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        return 1
    raise ValueError(f"--kv-cache-dtype {brief(kv_cache_dtype)}: expected auto or fp8")


class UnknownModelError(ValueError):
    """A model name that is neither in the catalogue nor a path to a config.json."""


class ModelConfigError(ValueError):
    """A config.json that cannot be turned into a ModelSpec (missing key, bad value)."""


def layers_per_stage(num_layers: int, pp: int) -> list[int]:
    """Decoder layers held by each pipeline stage; earlier stages take the remainder (as vLLM does)."""
    if pp < 1:
        raise ValueError(f"pipeline parallel size must be >= 1, got {brief(pp)}")
    if pp > num_layers:
        raise ValueError(f"pipeline parallel size {brief(pp)} exceeds the number of layers {num_layers}")
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
    moe: MoESpec | None = None            # sparse MLP (None: every layer dense)
    mla: MLASpec | None = None            # multi-head latent attention (None: grouped-query attention)
    dtype: str = "bf16"                   # the checkpoint's weight dtype (DeepSeek-V3 ships fp8)

    def __post_init__(self) -> None:
        for f, limit in MODEL_LIMITS.items():  # bounded: a loop over layers or heads must end
            v = getattr(self, f)
            why = None if v is None and f == "head_dim_override" else size_problem(v, limit)
            if why:
                raise ValueError(f"model {brief(self.name)}: {f} {why}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"model {brief(self.name)}: num_heads {self.num_heads} is not a multiple of "
                             f"num_kv_heads {self.num_kv_heads}")
        if self.head_dim_override is None and self.hidden_size % self.num_heads and self.mla is None:
            raise ValueError(f"model {brief(self.name)}: hidden_size {self.hidden_size} does not split into "
                             f"{self.num_heads} heads (give head_dim if the model's heads are narrower)")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"model {brief(self.name)}: dtype {brief(self.dtype)} is not one of "
                             f"{', '.join(DTYPE_BYTES)}")
        if self.moe is not None and self.moe.first_dense_layers > self.num_layers:
            raise ValueError(f"model {brief(self.name)}: first_dense_layers exceeds num_layers {self.num_layers}")

    @property
    def is_moe(self) -> bool:
        """Whether any layer has a sparse MLP."""
        return self.moe is not None

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` (0-based) has the sparse MLP."""
        return self.moe is not None and self.moe.is_moe_layer(layer)

    def stage_layer_kinds(self, stage: int, pp: int = 1) -> tuple[int, int]:
        """(dense layers, MoE layers) held by pipeline ``stage``."""
        counts = layers_per_stage(self.num_layers, pp)
        start = sum(counts[:stage])
        moe = sum(self.is_moe_layer(i) for i in range(start, start + counts[stage]))
        return counts[stage] - moe, moe

    @property
    def head_dim(self) -> int:
        """Per-head width of q, k and v."""
        return self.head_dim_override or self.hidden_size // self.num_heads

    # ---- tensor-parallel shard shapes -------------------------------------------------------

    def check_ep(self, tp: int, ep: int) -> int:
        """``ep`` if valid: 1, or the TP degree for a model with experts (the EP group is the TP group)."""
        if ep == 1:
            return ep
        if self.moe is None:
            raise ValueError(f"--ep {brief(ep)}: {brief(self.name)} has no experts to spread (expert parallelism "
                             "needs a MoE model)")
        if ep != tp:
            raise ValueError(f"--ep {brief(ep)}: the expert-parallel group is the tensor-parallel group (vLLM's "
                             f"--enable-expert-parallel), so --ep must equal --tp ({brief(tp)})")
        return ep

    def check_tp(self, tp: int) -> None:
        """Raise ValueError unless the attention heads split evenly over ``tp`` GPUs."""
        if tp < 1:
            raise ValueError(f"tensor parallel size must be >= 1, got {brief(tp)}")
        if self.num_heads % tp:
            raise ValueError(f"model {brief(self.name)}: {self.num_heads} attention heads do not split over "
                             f"tp={brief(tp)}")
        if self.num_kv_heads % tp and tp % self.num_kv_heads:
            raise ValueError(f"model {brief(self.name)}: {self.num_kv_heads} kv heads neither split over nor "
                             f"replicate evenly across tp={brief(tp)}")

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

    def attention_params(self, tp: int = 1) -> int:
        """Attention parameters of one layer on one GPU of a TP group (MLA's down projections replicated)."""
        qh = self.q_heads_per_gpu(tp)
        if self.mla is not None:
            return self.mla.attention_params(self.hidden_size, self.num_heads, qh)
        h, hd, kvh = self.hidden_size, self.head_dim, self.kv_heads_per_gpu(tp)
        return h * (qh + 2 * kvh) * hd + qh * hd * h

    def dense_mlp_params(self, tp: int = 1) -> int:
        """Parameters of one dense MLP on one GPU of a TP group."""
        return (3 if self.gated_mlp else 2) * self.hidden_size * self.intermediate_per_gpu(tp)

    def moe_mlp_params(self, tp: int = 1, ep: int = 1, *, active: bool = False) -> int:
        """Parameters of one sparse MLP on one GPU: router, its share of the routed experts, shared experts.

        With ``ep`` > 1 whole experts are spread over the expert-parallel group (the TP group); with
        ``ep`` = 1 every expert's width is split by TP. ``active``: only the ``top_k`` experts one token
        uses (and ``tp``/``ep`` must be 1).
        """
        moe, h = self.moe, self.hidden_size
        assert moe is not None
        shared = 3 * h * -(-moe.shared_intermediate_size // tp)
        router = h * moe.num_experts
        if active:
            return router + shared + moe.top_k * moe.expert_params(h)
        if ep > 1:
            routed = moe.experts_per_gpu(ep) * moe.expert_params(h)
        else:
            routed = moe.num_experts * 3 * h * -(-moe.expert_intermediate_size // tp)
        return router + routed + shared

    def layer_params(self, tp: int = 1, layer: int = 0, ep: int = 1) -> int:
        """Parameters of decoder layer ``layer`` held by one GPU of a TP group (norms replicated)."""
        return self._layers_params(range(layer, layer + 1), tp, ep)

    def _layers_params(self, layers: range, tp: int, ep: int, active: bool = False) -> int:
        """Parameters of decoder ``layers`` on one GPU, each by its kind (dense or MoE)."""
        n_moe = sum(self.is_moe_layer(i) for i in layers)
        base = self.attention_params(tp) + 2 * self.hidden_size
        total = (len(layers) - n_moe) * (base + self.dense_mlp_params(tp))
        if n_moe:
            total += n_moe * (base + self.moe_mlp_params(tp, ep, active=active))
        return total

    @property
    def num_params(self) -> int:
        """Total parameters: embedding, layers, final norm and lm head (counted once when tied)."""
        return self._total_params(active=False)

    @property
    def active_params(self) -> int:
        """Parameters one token uses: as ``num_params`` but only ``top_k`` routed experts per MoE layer."""
        return self._total_params(active=True)

    def _total_params(self, active: bool) -> int:
        emb = self.vocab_size * self.hidden_size
        lm_head = 0 if self.tie_embeddings else emb
        return emb + self._layers_params(range(self.num_layers), 1, 1, active) + self.hidden_size + lm_head

    def stage_params(self, stage: int, tp: int = 1, pp: int = 1, ep: int = 1) -> int:
        """Parameters held by one GPU of pipeline ``stage``: its layers, plus embedding (first) and lm head (last)."""
        layers = layers_per_stage(self.num_layers, pp)
        if not 0 <= stage < pp:
            raise ValueError(f"stage {brief(stage)} out of range for pp={brief(pp)}")
        start = sum(layers[:stage])
        n = self._layers_params(range(start, start + layers[stage]), tp, ep)
        emb = self.vocab_per_gpu(tp) * self.hidden_size
        if stage == 0:
            n += emb
        if stage == pp - 1:
            n += self.hidden_size  # final norm
            # tied embeddings share storage only when embedding and lm head live on the same stage
            if not (self.tie_embeddings and pp == 1):
                n += emb
        return n

    def weight_bytes(self, dtype_bytes: int = 2, tp: int = 1, pp: int = 1, ep: int = 1) -> int:
        """Weight bytes on the most loaded GPU of a (tp, pp) replica; what must fit before any KV cache."""
        return dtype_bytes * max(self.stage_params(s, tp, pp, ep) for s in range(pp))

    def kv_values_per_token_layer(self, tp: int = 1) -> int:
        """Values one token caches per layer on one GPU: k and v of its kv heads, or MLA's whole latent."""
        if self.mla is not None:
            return self.mla.latent_dim
        return 2 * self.kv_heads_per_gpu(tp) * self.head_dim

    def stage_kv_bytes_per_token(self, stage: int, dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes one token takes on one GPU of pipeline ``stage`` (k and v, all its layers)."""
        layers = layers_per_stage(self.num_layers, pp)[stage]
        return layers * self.kv_values_per_token_layer(tp) * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2, tp: int = 1, pp: int = 1) -> int:
        """KV-cache bytes per token on the most loaded GPU (the stage with the most layers)."""
        return self.stage_kv_bytes_per_token(0, dtype_bytes, tp, pp)  # stage 0 has the most layers


