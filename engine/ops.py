"""The device side of ``sim.ops``: one function per op, called by the model's layers and timed by calibration.

The model looks every op up in ``OPS`` at call time, so what calibration times (these
very functions) is what the engine runs; patching ``OPS[name]`` changes the model.

Shapes: ``T`` tokens in the batch, hidden size ``E``, ``H`` query heads and ``Hkv``
kv heads of size ``D``, ``I`` intermediate size, ``V`` vocabulary; in a mixture-of-experts layer
``X`` routed experts of width ``Ie``, ``K`` of them per token, and shared experts of total width ``Is``.

The engine is one process on one device: it does no expert parallelism, so ``ep_dispatch`` and
``ep_combine`` are identities (every expert lives here), as ``tp_all_reduce`` is without TP.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from engine.attention import AttnMetadata, AttnPart
from engine.kv_cache import store_kv
from sim.ops import ALL_OPS, HOST_OPS


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return x32.to(x.dtype) * weight


def input_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``[T, E]`` before attention (computed in float32, as Llama does)."""
    return _rms_norm(x, weight, eps)


def post_attn_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of ``[T, E]`` before the MLP."""
    return _rms_norm(x, weight, eps)


def final_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of the rows that reach the lm head."""
    return _rms_norm(x, weight, eps)


def qkv_proj(x: torch.Tensor, weight: torch.Tensor, num_heads: int, num_kv_heads: int,
             head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fused q/k/v projection ``[T, E] -> ([T, H, D], [T, Hkv, D], [T, Hkv, D])``."""
    qkv = F.linear(x, weight)
    t = x.shape[0]
    q_end = num_heads * head_dim
    k_end = q_end + num_kv_heads * head_dim
    return (qkv[:, :q_end].view(t, num_heads, head_dim),
            qkv[:, q_end:k_end].view(t, num_kv_heads, head_dim),
            qkv[:, k_end:].view(t, num_kv_heads, head_dim))


def rotary(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding (half-split, HF Llama layout) at absolute ``positions`` using ``[P, D/2]`` tables."""
    c = cos[positions].unsqueeze(1)
    s = sin[positions].unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)

    return rot(q), rot(k)


def _attend(part: AttnPart | None, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
            k_cache: torch.Tensor, v_cache: torch.Tensor, attn: AttnMetadata,
            out: torch.Tensor) -> torch.Tensor:
    if part is None or part.num_tokens == 0:
        return out
    sl = slice(part.start, part.start + part.num_tokens)
    store_kv(k[sl], v[sl], k_cache, v_cache, part.slot_mapping)
    out[sl] = attn.backend.attend(q[sl], k_cache, v_cache, part, attn.scale)
    return out


def attn_prefill(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                 v_cache: torch.Tensor, attn: AttnMetadata, out: torch.Tensor) -> torch.Tensor:
    """Prefill chunks: write their K/V to the cache, attend over cached context, fill their rows of ``out``."""
    return _attend(attn.prefill, q, k, v, k_cache, v_cache, attn, out)


def attn_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, attn: AttnMetadata, out: torch.Tensor) -> torch.Tensor:
    """Decodes: write the new K/V to the cache, attend over the whole context, fill their rows of ``out``."""
    return _attend(attn.decode, q, k, v, k_cache, v_cache, attn, out)


def o_proj(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Attention output projection ``[T, H, D] -> [T, E]``."""
    return F.linear(x.reshape(x.shape[0], -1), weight)


def tp_all_reduce(x: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Tensor-parallel all-reduce after o_proj; a no-op on the single-device engine (TP=1)."""
    if group is not None:
        torch.distributed.all_reduce(x, group=group)
    return x


def residual_add(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Residual connection after attention."""
    return x + residual


def gate_up_proj(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Fused gate and up projection ``[T, E] -> [T, 2I]`` (``[T, I]`` for a non-gated MLP)."""
    return F.linear(x, weight)


def act(x: torch.Tensor, gated: bool = True) -> torch.Tensor:
    """SiLU(gate) * up for SwiGLU ``[T, 2I] -> [T, I]``; tanh-GELU for a plain MLP."""
    if gated:
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
    return F.gelu(x, approximate="tanh")


def down_proj(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MLP down projection ``[T, I] -> [T, E]``."""
    return F.linear(x, weight)


def _gated_mlp(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """One SwiGLU MLP ``[T, E] -> [T, E]`` through the dense MLP's own op functions (an expert is one)."""
    return down_proj(act(gate_up_proj(x, gate_up), True), down)


def moe_router(x: torch.Tensor, weight: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router ``[T, E] -> ([T, K] weights, [T, K] expert ids)``: the top-k logits, softmax over those k (Mixtral)."""
    logits = F.linear(x, weight)
    top, experts = torch.topk(logits, top_k, dim=-1)
    # softmax in float32 as Mixtral computes it; equal to softmax over all experts renormalised over the k
    return torch.softmax(top.float(), dim=-1).to(x.dtype), experts


def ep_dispatch(x: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Expert-parallel all-to-all of tokens to their experts' devices; identity here (every expert is local)."""
    return x


def moe_experts(x: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor) -> torch.Tensor:
    """Routed experts ``[T, E] -> [T, E]``: each expert's SwiGLU MLP on the tokens routed to it, weighted and summed.

    ``gate_up`` is ``[X, 2Ie, E]`` and ``down`` ``[X, E, Ie]``. The (token, slot) pairs are sorted by
    expert so each expert reads one contiguous slice of a single gather, and one scatter-add sums
    the weighted outputs per token; experts that got no token are skipped.
    """
    k = experts.shape[1]
    order = torch.argsort(experts.reshape(-1), stable=True)
    # the group sizes decide the loop: one host read (why MoE layers are not captured in CUDA graphs)
    counts = torch.bincount(experts.reshape(-1), minlength=gate_up.shape[0]).tolist()
    tokens = order // k  # the token of each sorted pair
    xs = x[tokens]
    ys = torch.empty_like(xs)
    start = 0
    for e, n in enumerate(counts):
        if n:
            ys[start:start + n] = _gated_mlp(xs[start:start + n], gate_up[e], down[e])
        start += n
    ys.mul_(weights.reshape(-1, 1)[order])
    return torch.zeros_like(x).index_add_(0, tokens, ys)


def ep_combine(x: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Expert-parallel all-to-all of expert outputs back to their tokens' devices; identity here."""
    return x


def moe_shared(x: torch.Tensor, routed: torch.Tensor, gate_up: torch.Tensor | None,
               down: torch.Tensor | None) -> torch.Tensor:
    """``routed`` plus the shared experts' SwiGLU MLP of width ``Is`` on every token; ``routed`` when there are none."""
    if gate_up is None or down is None:
        return routed
    return routed + _gated_mlp(x, gate_up, down)


# The MLP's all-reduce and residual are the attention block's functions under their own op names
# (timed and priced as separate ops of the vocabulary, one implementation).
tp_all_reduce_mlp = tp_all_reduce
residual_add_mlp = residual_add


def embedding(token_ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Token ids ``[T]`` -> hidden states ``[T, E]``."""
    return F.embedding(token_ids, weight)


def lm_head(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Hidden ``[N, E]`` -> float32 logits ``[N, V]`` (only for the rows that sample)."""
    return F.linear(x, weight).float()


def sampling(logits: torch.Tensor) -> torch.Tensor:
    """Greedy sampling: the argmax token id of each row."""
    return torch.argmax(logits, dim=-1)


def pp_send_recv(x: torch.Tensor, group: object | None = None) -> torch.Tensor:
    """Activations to the next pipeline stage; a no-op on the single-device engine (PP=1)."""
    return x


OPS: dict[str, Callable[..., object]] = {
    name: globals()[name] for name in ALL_OPS if name not in HOST_OPS
}
