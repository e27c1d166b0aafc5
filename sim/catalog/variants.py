"""Layer variants beyond the dense Llama layer: mixture-of-experts MLPs and multi-head latent attention (MLA).

A ``ModelSpec`` holds at most one of each; everything that sizes or prices them reads these
shapes, so a field the simulator does not model is refused where a config is read
(``sim.catalog.hf_config``), never dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.catalog.limits import VARIANT_LIMITS, size_problem


def _positive(owner: str, **fields: int) -> None:
    """Raise ValueError unless every field is a positive integer within its bound (``sim.catalog.limits``)."""
    for name, v in fields.items():
        why = size_problem(v, VARIANT_LIMITS[name])
        if why:
            raise ValueError(f"{owner}: {name} {why}")


@dataclass(frozen=True)
class MoESpec:
    """A sparse MLP: ``num_experts`` gated experts of width ``expert_intermediate_size``, ``top_k`` per token.

    ``shared_intermediate_size`` is the total width of the always-active shared experts (DeepSeek,
    Qwen2-MoE; 0 for none); the first ``first_dense_layers`` layers keep a dense MLP of the model's
    ``intermediate_size`` (DeepSeek-V3's ``first_k_dense_replace``). The router is a linear layer
    hidden -> experts with top-k selection.
    """

    num_experts: int
    top_k: int
    expert_intermediate_size: int
    shared_intermediate_size: int = 0
    first_dense_layers: int = 0

    def __post_init__(self) -> None:
        _positive("MoE", num_experts=self.num_experts, top_k=self.top_k,
                  expert_intermediate_size=self.expert_intermediate_size)
        if self.top_k > self.num_experts:
            raise ValueError(f"MoE: top_k {self.top_k} exceeds num_experts {self.num_experts}")
        for name in ("shared_intermediate_size", "first_dense_layers"):
            why = size_problem(getattr(self, name), VARIANT_LIMITS[name], least=0)
            if why:
                raise ValueError(f"MoE: {name} {why}")

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` (0-based) has the sparse MLP."""
        return layer >= self.first_dense_layers

    def expert_params(self, hidden: int) -> int:
        """Parameters of one routed expert (gate, up, down)."""
        return 3 * hidden * self.expert_intermediate_size

    def experts_per_gpu(self, ep: int) -> int:
        """Routed experts held by one GPU of an expert-parallel group of ``ep`` (rounded up)."""
        return -(-self.num_experts // ep)


@dataclass(frozen=True)
class MLASpec:
    """DeepSeek's multi-head latent attention: keys and values cached as one compressed latent per token.

    Per layer the cache holds ``kv_lora_rank + qk_rope_head_dim`` values per token (the latent plus
    the decoupled rotary key), shared by all heads and not split by tensor parallelism (every rank
    holds the whole latent, as in vLLM's MLA backends).
    """

    kv_lora_rank: int
    qk_rope_head_dim: int
    qk_nope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None  # None: q projected directly from the hidden state

    def __post_init__(self) -> None:
        _positive("MLA", kv_lora_rank=self.kv_lora_rank, qk_rope_head_dim=self.qk_rope_head_dim,
                  qk_nope_head_dim=self.qk_nope_head_dim, v_head_dim=self.v_head_dim)
        if self.q_lora_rank is not None:
            _positive("MLA", q_lora_rank=self.q_lora_rank)

    @property
    def latent_dim(self) -> int:
        """Values cached per token per layer (k and v together)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def qk_head_dim(self) -> int:
        """Width of one head's query and key (no-rope part plus rope part)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def projections(self, hidden: int, heads: int) -> dict[str, tuple[int, int]]:
        """(in, out) features of each attention projection on ``heads`` query heads (one GPU's shard)."""
        q = ({"q_a": (hidden, self.q_lora_rank), "q_b": (self.q_lora_rank, heads * self.qk_head_dim)}
             if self.q_lora_rank else {"q": (hidden, heads * self.qk_head_dim)})
        return {**q, "kv_a": (hidden, self.latent_dim),
                "kv_b": (self.kv_lora_rank, heads * (self.qk_nope_head_dim + self.v_head_dim)),
                "o": (heads * self.v_head_dim, hidden)}

    def attention_params(self, hidden: int, heads: int, heads_per_gpu: int) -> int:
        """Attention parameters on one GPU: the down projections (and their norms) whole, the rest split by heads."""
        full = self.projections(hidden, heads)
        shard = self.projections(hidden, heads_per_gpu)
        down = sum(i * o for k, (i, o) in full.items() if k in ("q_a", "kv_a"))
        norms = self.kv_lora_rank + (self.q_lora_rank or 0)
        return down + norms + sum(i * o for k, (i, o) in shard.items() if k not in ("q_a", "kv_a"))
