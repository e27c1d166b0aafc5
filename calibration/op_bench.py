"""Inputs for one calibration point, and the call that times ``engine.ops.OPS[op]`` on them.

Each op runs on inputs of one TP shard's shapes (heads, intermediate size and vocabulary
divided by TP; each expert's width too, as without expert parallelism), rotated over enough copies
to leave the caches; attention runs through the engine's metadata builder and backend on a paged
cache. The routed experts are timed on a uniform routing drawn afresh for every copy (each token
picks ``top_k`` distinct experts at random), the routing the roofline assumes
(``sim.cost.moe_routing``) and what seeded random weights give.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from calibration.device_info import ram_bytes
from calibration.grid import Point
from calibration.timing import rotation_copies
from engine.attention import build_metadata
from engine.backends import select_backend
from engine.ops import OPS
from sim.catalog.models import ModelSpec
from sim.cost.profile_format import MIXED


def _nbytes(*xs: Any) -> int:
    return sum(x.numel() * x.element_size() for x in xs if isinstance(x, torch.Tensor))


class OpBench:
    """Builds rotated input sets of one point's shapes and returns ``call(i)`` running ``OPS[op]`` on set ``i % n``."""

    def __init__(self, model: ModelSpec, device: torch.device, dtype: torch.dtype, backend: str, block_size: int,
                 memory_fraction: float, seed: int = 0) -> None:
        self.m, self.dev, self.dtype, self.bs = model, device, dtype, block_size
        self.backend = select_backend(device, backend, dtype)
        self.scale = model.head_dim ** -0.5
        self.memory_fraction = memory_fraction
        self.seed = seed
        half = model.head_dim // 2
        inv = 1.0 / (model.rope_theta ** (torch.arange(0, model.head_dim, 2, dtype=torch.float64) / model.head_dim))
        ang = torch.outer(torch.arange(model.max_context, dtype=torch.float64), inv)
        self.cos = ang.cos().to(device=device, dtype=dtype)[:, :half]
        self.sin = ang.sin().to(device=device, dtype=dtype)[:, :half]

    def _budget_bytes(self) -> int:
        if self.dev.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.dev)
            return int(free * self.memory_fraction)
        return int(ram_bytes() * self.memory_fraction)

    def _randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=self.dev, dtype=self.dtype)

    def _routing(self, tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights, expert ids) ``[T, K]`` of a uniform random top-k routing, equal weights."""
        moe = self.m.moe
        assert moe is not None
        if self.dev.type == "meta":
            ids = torch.empty(tokens, moe.top_k, device=self.dev, dtype=torch.int64)
        else:
            ids = torch.rand(tokens, moe.num_experts, device=self.dev).topk(moe.top_k, dim=-1).indices
        return torch.full((tokens, moe.top_k), 1.0 / moe.top_k, device=self.dev, dtype=self.dtype), ids

    def _moe_set(self, p: Point) -> tuple:
        """Positional arguments of a MoE op (``moe_router``, ``moe_experts``, ``moe_shared``) for one input copy."""
        moe, E, T = self.m.moe, self.m.hidden_size, p.tokens
        if moe is None:
            raise ValueError(f"op {p.op!r}: {self.m.name} has no experts")
        if p.op == "moe_router":
            return (self._randn(T, E), self._randn(moe.num_experts, E) * E ** -0.5, moe.top_k)
        if p.op == "moe_experts":
            width = -(-moe.expert_intermediate_size // max(p.tp, 1))  # each expert split by TP (no EP)
            return (self._randn(T, E), *self._routing(T), self._randn(moe.num_experts, 2 * width, E) * E ** -0.5,
                    self._randn(moe.num_experts, E, width) * width ** -0.5)
        width = -(-moe.shared_intermediate_size // max(p.tp, 1))
        return (self._randn(T, E), self._randn(T, E), self._randn(2 * width, E), self._randn(E, width))

    def _one_set(self, p: Point) -> tuple:
        """Positional arguments of ``OPS[p.op]`` for one input copy."""
        m, tp, T = self.m, max(p.tp, 1), p.tokens
        E, D = m.hidden_size, m.head_dim
        qh, kvh = m.q_heads_per_gpu(tp), m.kv_heads_per_gpu(tp)
        inter = m.intermediate_per_gpu(tp)
        op = p.op
        if op in ("input_norm", "post_attn_norm"):
            return (self._randn(T, E), self._randn(E), m.norm_eps)
        if op == "final_norm":
            return (self._randn(p.seqs, E), self._randn(E), m.norm_eps)
        if op == "qkv_proj":
            return (self._randn(T, E), self._randn((qh + 2 * kvh) * D, E) * E ** -0.5, qh, kvh, D)
        if op == "rotary":
            pos = torch.randint(0, m.max_context, (T,), device=self.dev)
            return (self._randn(T, qh, D), self._randn(T, kvh, D), pos, self.cos, self.sin)
        if op == "o_proj":
            return (self._randn(T, qh, D), self._randn(E, qh * D))
        if op in ("residual_add", "residual_add_mlp"):
            return (self._randn(T, E), self._randn(T, E))
        if op == "gate_up_proj":
            return (self._randn(T, E), self._randn((2 if m.gated_mlp else 1) * inter, E))
        if op == "act":
            return (self._randn(T, (2 if m.gated_mlp else 1) * inter), m.gated_mlp)
        if op == "down_proj":
            return (self._randn(T, inter), self._randn(E, inter))
        if op in ("moe_router", "moe_experts", "moe_shared"):
            return self._moe_set(p)
        if op == "embedding":
            vshard = m.vocab_per_gpu(tp)
            return (torch.randint(0, vshard, (T,), device=self.dev), self._randn(vshard, E))
        if op == "lm_head":
            return (self._randn(p.seqs, E), self._randn(m.vocab_per_gpu(tp), E))
        if op == "sampling":
            return (torch.randn(p.seqs, m.vocab_size, device=self.dev, dtype=torch.float32),)
        raise ValueError(f"op {op!r} has no bench")

    def _set_bytes(self, p: Point) -> int:
        """Bytes of one input set, from a meta-device dry build (no allocation)."""
        if p.op in ("attn_prefill", "attn_decode"):
            return self._attn_bytes(p, self._attn_contexts(p))
        saved = self.dev
        try:
            self.dev = torch.device("meta")
            return _nbytes(*self._one_set(p))
        finally:
            self.dev = saved

    def _attn_contexts(self, p: Point) -> list[int]:
        if p.op == "attn_prefill":
            return [p.context + p.tokens]
        if p.variant == MIXED:
            return self._mixed[p.seqs]
        return [p.context] * p.seqs

    def _attn_bytes(self, p: Point, ctx: list[int]) -> int:
        m, tp = self.m, max(p.tp, 1)
        kvh, qh, D = m.kv_heads_per_gpu(tp), m.q_heads_per_gpu(tp), m.head_dim
        blocks = sum(-(-c // self.bs) for c in ctx)
        elt = torch.empty((), dtype=self.dtype).element_size()
        new = p.tokens if p.op == "attn_prefill" else p.seqs
        return elt * (2 * blocks * self.bs * kvh * D + new * (2 * qh + 2 * kvh) * D)

    def prepare(self, p: Point) -> tuple[Callable[[int], Any], int]:
        """``(call, copies)`` for point ``p``; raises MemoryError when one input set does not fit."""
        set_bytes = self._set_bytes(p)
        budget = self._budget_bytes()
        if set_bytes > budget:
            raise MemoryError(f"needs {set_bytes / 2**30:.2f} GiB, over the {budget / 2**30:.2f} GiB allowed")
        copies = max(1, min(rotation_copies(set_bytes, self.dev), budget // max(set_bytes, 1)))
        torch.manual_seed(self.seed)
        if p.op in ("attn_prefill", "attn_decode"):
            return self._attention(p, copies), copies
        sets = [self._one_set(p) for _ in range(copies)]
        op = p.op

        def call(i: int) -> Any:
            return OPS[op](*sets[i % copies])  # looked up per call: what the engine runs now

        return call, copies

    def set_mixed(self, mixed: dict[int, list[int]]) -> None:
        self._mixed = mixed

    def _attention(self, p: Point, copies: int) -> Callable[[int], Any]:
        m, tp, bs = self.m, max(p.tp, 1), self.bs
        kvh, qh, D = m.kv_heads_per_gpu(tp), m.q_heads_per_gpu(tp), m.head_dim
        ctx = self._attn_contexts(p)
        per_copy = sum(-(-c // bs) for c in ctx)
        k_cache = self._randn(copies * per_copy, bs, kvh, D)
        v_cache = self._randn(copies * per_copy, bs, kvh, D)
        sets = []
        nxt = 0
        for _ in range(copies):
            seqs = []
            for c in ctx:
                nb = -(-c // bs)
                table = list(range(nxt, nxt + nb))
                nxt += nb
                seqs.append((table, p.context, p.tokens) if p.op == "attn_prefill" else (table, c - 1, 1))
            pre, dec = (seqs, []) if p.op == "attn_prefill" else ([], seqs)
            attn = build_metadata(pre, dec, bs, self.dev, self.backend, self.scale)
            n = attn.num_tokens
            q = self._randn(n, qh, D)
            sets.append((q, self._randn(n, kvh, D), self._randn(n, kvh, D), k_cache, v_cache, attn,
                         torch.empty_like(q)))
        op = p.op

        def call(i: int) -> Any:
            return OPS[op](*sets[i % copies])

        return call
