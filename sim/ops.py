"""The operator list, written once: engine layers run these, calibration times them, cost models price them.

Per-layer ops run once per decoder layer on every pipeline stage; ``first_stage``
ops run on stage 0 only, ``last_stage`` ops on the last stage only, and
``per_iteration`` costs are paid once per scheduled micro-batch on the host.
"""

from __future__ import annotations

# ops executed once per decoder layer, in execution order
LAYER_OPS: tuple[str, ...] = (
    "input_norm",        # RMSNorm before attention
    "qkv_proj",          # fused q, k, v projection
    "rotary",            # rotary position embedding on q and k
    "attn_prefill",      # attention of prefill chunks over cached context (+ KV cache write)
    "attn_decode",       # attention of decode tokens over their context (+ KV cache write)
    "o_proj",            # attention output projection
    "tp_all_reduce",     # tensor-parallel all-reduce after o_proj (communication)
    "residual_add",      # residual connection after attention
    "post_attn_norm",    # RMSNorm before the MLP
    "gate_up_proj",      # fused gate and up projection
    "act",               # SiLU(gate) * up
    "down_proj",         # MLP down projection
    "tp_all_reduce_mlp", # tensor-parallel all-reduce after down_proj (communication)
    "residual_add_mlp",  # residual connection after the MLP
)

# the dense MLP's ops: in a mixture-of-experts layer MOE_OPS run in their place (before tp_all_reduce_mlp)
DENSE_MLP_OPS: tuple[str, ...] = ("gate_up_proj", "act", "down_proj")
MOE_OPS: tuple[str, ...] = (
    "moe_router",        # router GEMM (hidden -> experts) and top-k selection with its softmax weights
    "ep_dispatch",       # expert parallelism: all-to-all of each token's hidden state to its experts' GPUs
    "moe_experts",       # the routed experts: per expert a gated MLP over the tokens routed to it, weighted sum
    "ep_combine",        # expert parallelism: all-to-all of the expert outputs back to the tokens' GPUs
    "moe_shared",        # the shared experts (DeepSeek, Qwen2-MoE): a dense gated MLP every token passes through
)
MOE_LAYER_OPS: tuple[str, ...] = (LAYER_OPS[:LAYER_OPS.index("gate_up_proj")] + MOE_OPS
                                  + LAYER_OPS[LAYER_OPS.index("down_proj") + 1:])


def layer_ops(moe: bool) -> tuple[str, ...]:
    """The ops of one decoder layer in execution order: dense, or with the sparse MLP."""
    return MOE_LAYER_OPS if moe else LAYER_OPS


FIRST_STAGE_OPS: tuple[str, ...] = ("embedding",)
LAST_STAGE_OPS: tuple[str, ...] = ("final_norm", "lm_head", "sampling")
STAGE_OPS: tuple[str, ...] = ("pp_send_recv",)  # activations to the next pipeline stage
HOST_OPS: tuple[str, ...] = ("host_overhead",)  # scheduling and input preparation on the CPU

ALL_OPS: tuple[str, ...] = LAYER_OPS + MOE_OPS + FIRST_STAGE_OPS + LAST_STAGE_OPS + STAGE_OPS + HOST_OPS

# ops whose cost depends on per-item context (2-D tables in a profile); all others depend on token count
ATTENTION_OPS: tuple[str, ...] = ("attn_prefill", "attn_decode")
COMMUNICATION_OPS: tuple[str, ...] = ("tp_all_reduce", "tp_all_reduce_mlp", "pp_send_recv", "ep_dispatch",
                                      "ep_combine")

# Framework overhead: what the engine's real forward pass costs beyond the sum of its ops timed one by one
# (on a CPU: Python glue, per-forward attention masks, caches; on a GPU without CUDA graphs: launch gaps).
# Priced by the profiled cost model from whole-unit timings; not engine ops and not in ALL_OPS.
OVERHEAD_OPS: tuple[str, ...] = (
    "layer_overhead",    # per decoder layer: measured layer forward minus the sum of its ops
    "forward_overhead",  # per forward pass: measured forward + sampling minus layers and first/last-stage ops
)
# whole units the calibration times on the real engine (profile rows from which OVERHEAD_OPS are fitted)
UNIT_TIMINGS: tuple[str, ...] = (
    "layer_forward",     # one decoder layer inside ModelRunner.execute (mean over the model's layers)
    "forward",           # ModelRunner.execute's forward pass and sampling (its forward_s)
)
# decode-only forward passes as the engine runs them on a GPU: replayed from CUDA graphs (padded shapes), per
# (sequences, context); the profiled cost model prices a decode-only TP1 iteration from these when present
GRAPH_TIMINGS: tuple[str, ...] = ("forward_graph",)
