"""Upper bounds on a model's sizes, so that a hostile config is refused before it hangs or exhausts memory.

Each bound sits several times above the largest public model's (late 2025: about 130 decoder layers,
hidden sizes near 20,000 and MLP widths near 75,000, 128 attention heads of width up to 256,
vocabularies near 260,000, contexts of up to 10M tokens, a few hundred routed experts), so no real
model is refused, while a config with 1e12 layers (a loop over layers that never ends) or 1e9 experts
(an array per expert of 7 GiB) is refused by name before anything is sized or priced. The bounds of a
deployment (``sim.serving.deployment``) and of a profile (``sim.cost.profile_format``) are here too.
"""

from __future__ import annotations

from typing import Any

from sim.inputs import brief

MAX_LAYERS = 1024             # decoder layers (Llama-3.1-405B has 126)
MAX_HIDDEN = 1 << 17          # 131,072: hidden size, MLA's latent ranks
MAX_HEADS = 4096              # attention heads and kv heads (the largest have 128)
MAX_HEAD_DIM = 4096           # one head's width (256 at most in public models)
MAX_INTERMEDIATE = 1 << 20    # 1,048,576: a dense MLP's, an expert's or the shared experts' width
MAX_VOCAB = 1 << 22           # 4,194,304 vocabulary rows
MAX_CONTEXT = 1 << 26         # 67,108,864 tokens of context (vLLM's --max-model-len included)
MAX_EXPERTS = 4096            # routed (or shared) experts, and experts per token (DeepSeek-V3 has 256)

# deployments: a replica is a simulated engine (tens of KB of state for a small model), so replicas and GPUs
# are bounded to keep memory in the hundreds of MB; token counts share the context bound
MAX_REPLICAS = 10_000         # replicas of one pool
MAX_PARALLEL = 1024           # tensor-, pipeline- or expert-parallel degree (a stage holds at least one layer)
MAX_POOL_GPUS = 100_000       # replicas x tp x pp in one pool (about the largest GPU clusters built)
MAX_BATCH_SIZE = 1 << 20      # requests running at once on one replica
MAX_BLOCK_SIZE = 1 << 16      # tokens per KV block (vLLM uses 16)
MAX_KV_BLOCKS = 1 << 40       # KV blocks per replica: allocated as used; a small model on a large GPU has ~1e8

#: ModelSpec field -> its bound
MODEL_LIMITS: dict[str, int] = {
    "num_layers": MAX_LAYERS, "hidden_size": MAX_HIDDEN, "num_heads": MAX_HEADS, "num_kv_heads": MAX_HEADS,
    "intermediate_size": MAX_INTERMEDIATE, "vocab_size": MAX_VOCAB, "max_context": MAX_CONTEXT,
    "head_dim_override": MAX_HEAD_DIM,
}
#: MoESpec and MLASpec field -> its bound
VARIANT_LIMITS: dict[str, int] = {
    "num_experts": MAX_EXPERTS, "top_k": MAX_EXPERTS, "expert_intermediate_size": MAX_INTERMEDIATE,
    "shared_intermediate_size": MAX_INTERMEDIATE, "first_dense_layers": MAX_LAYERS,
    "kv_lora_rank": MAX_HIDDEN, "q_lora_rank": MAX_HIDDEN, "qk_rope_head_dim": MAX_HEAD_DIM,
    "qk_nope_head_dim": MAX_HEAD_DIM, "v_head_dim": MAX_HEAD_DIM,
}


def size_problem(value: Any, limit: int, least: int = 1,
                 bound: str = "servesim's bound, several times the largest real model's") -> str | None:
    """Why ``value`` is not an integer from ``least`` to ``limit`` (None when it is); never echoes a huge value.
    ``bound`` says, in the message, what the limit is."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        return f"must be {'a positive' if least == 1 else 'a non-negative' if least == 0 else 'an'} integer" \
               f"{'' if least in (0, 1) else f' >= {least}'}, got {brief(value)}"
    if value > limit:
        return f"must be at most {limit:,} ({bound}), got {brief(value)}"
    return None
