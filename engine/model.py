"""Llama-family decoder built from a ``ModelSpec``: seeded random weights, or a local HF safetensors checkpoint.

Each decoder layer is the sequence of ``engine.ops`` calls named in ``sim.ops.layer_ops(moe)``,
looked up in ``engine.ops.OPS`` at call time, so calibration times exactly this code. A layer
where ``spec.is_moe_layer(i)`` has a Mixtral-style sparse MLP (router, routed SwiGLU experts,
optional shared experts) in place of the dense one; the engine holds every expert itself (no
expert parallelism). Multi-head latent attention is not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.attention import AttnMetadata
from engine.kv_cache import PagedKVCache
from engine.ops import OPS
from sim.catalog.models import ModelSpec


def default_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


@dataclass
class MoEWeights:
    """One sparse MLP's tensors: the router, the routed experts stacked, the shared experts (None without)."""

    router: torch.Tensor  # [X, E]
    gate_up: torch.Tensor  # [X, 2Ie, E] (each expert's gate rows first)
    down: torch.Tensor  # [X, E, Ie]
    shared_gate_up: torch.Tensor | None = None  # [2Is, E]
    shared_down: torch.Tensor | None = None  # [E, Is]


@dataclass
class LayerWeights:
    """One decoder layer's tensors, fused the way the ops consume them."""

    input_norm: torch.Tensor  # [E]
    qkv: torch.Tensor  # [(H + 2 Hkv) D, E]
    o: torch.Tensor  # [E, H D]
    post_attn_norm: torch.Tensor  # [E]
    gate_up: torch.Tensor | None  # [2I, E] (gate rows first), or [I, E] for a plain MLP; None in a MoE layer
    down: torch.Tensor | None  # [E, I]; None in a MoE layer
    moe: MoEWeights | None = None  # the sparse MLP of a MoE layer

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor of the layer (sparse MLP included)."""
        parts = [*vars(self).values(), *(vars(self.moe).values() if self.moe is not None else ())]
        return [t for t in parts if isinstance(t, torch.Tensor)]


class LlamaModel:
    """Weights plus the forward pass over a flat batch of tokens with paged attention."""

    def __init__(self, spec: ModelSpec, *, device: torch.device | str = "cpu",
                 dtype: torch.dtype | None = None, seed: int = 0,
                 checkpoint: str | Path | None = None) -> None:
        if spec.hidden_size % spec.num_heads or spec.num_heads % spec.num_kv_heads:
            raise ValueError(f"{spec.name}: heads must divide hidden size and kv heads must divide heads")
        if spec.mla is not None:
            raise ValueError(f"{spec.name}: the engine does not implement multi-head latent attention (MLA)")
        self.spec = spec
        self.device = torch.device(device)
        self.dtype = dtype or default_dtype(self.device)
        self.scale = spec.head_dim ** -0.5
        if checkpoint is not None:
            self.load_state_dict(load_safetensors_dir(checkpoint))
        else:
            self._init_random(seed)
        self._rope_len = 0
        self.ensure_rope(spec.max_context)

    # ------------------------------------------------------------ weights

    def _init_random(self, seed: int) -> None:
        """Gaussian weights with 1/sqrt(fan_in) scale; residual branches shrunk by 1/sqrt(2L) to stay finite."""
        s, dev, dt = self.spec, self.device, self.dtype
        gen = torch.Generator(device=dev).manual_seed(seed) if dev.type != "meta" else None

        def randn(*shape: int, std: float) -> torch.Tensor:
            if gen is None:  # the meta device: shapes only (tests of 7B-sized code paths without the memory)
                return torch.empty(*shape, device=dev, dtype=dt)
            return torch.randn(*shape, generator=gen, device=dev, dtype=dt).mul_(std)

        e, d = s.hidden_size, s.head_dim
        branch = 1.0 / math.sqrt(2 * s.num_layers)
        ones = torch.ones(e, device=dev, dtype=dt)

        def mlp(width: int, gated: bool, *experts: int) -> tuple[torch.Tensor, torch.Tensor]:
            """(gate_up, down) of an MLP of ``width``, stacked over ``experts`` when given."""
            return (randn(*experts, (2 if gated else 1) * width, e, std=e ** -0.5),
                    randn(*experts, e, width, std=branch * width ** -0.5))

        def sparse() -> MoEWeights:
            moe = s.moe
            assert moe is not None
            router = randn(moe.num_experts, e, std=e ** -0.5)
            w = MoEWeights(router, *mlp(moe.expert_intermediate_size, True, moe.num_experts))
            if moe.shared_intermediate_size:
                w.shared_gate_up, w.shared_down = mlp(moe.shared_intermediate_size, True)
            return w

        def layer(i: int) -> LayerWeights:
            attn = {"input_norm": ones.clone(),
                    "qkv": randn((s.num_heads + 2 * s.num_kv_heads) * d, e, std=e ** -0.5),
                    "o": randn(e, s.num_heads * d, std=branch * (s.num_heads * d) ** -0.5),
                    "post_attn_norm": ones.clone()}
            if s.is_moe_layer(i):
                return LayerWeights(**attn, gate_up=None, down=None, moe=sparse())
            gate_up, down = mlp(s.intermediate_size, s.gated_mlp)
            return LayerWeights(**attn, gate_up=gate_up, down=down)

        self.embed = randn(s.vocab_size, e, std=1.0)
        self.layers = [layer(i) for i in range(s.num_layers)]
        self.norm = ones.clone()
        self.lm_head = self.embed if s.tie_embeddings else randn(s.vocab_size, e, std=e ** -0.5)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Take weights named as in HF Llama (``model.layers.{i}.self_attn.q_proj.weight`` ...); MoE layers as in
        HF Mixtral (``block_sparse_moe.gate`` / ``experts.{j}.w1, w3, w2``; shared experts, which Mixtral
        lacks, as DeepSeek's ``mlp.shared_experts.*``). The router is Mixtral's, so other MoE families'
        checkpoints load but do not route as their models do."""
        s = self.spec

        def get(name: str, shape: tuple[int, ...]) -> torch.Tensor:
            if name not in state:
                raise KeyError(f"checkpoint lacks {name}")
            t = state[name]
            if tuple(t.shape) != shape:
                raise ValueError(f"{name}: shape {tuple(t.shape)} does not match {s.name}'s {shape}")
            return t.to(device=self.device, dtype=self.dtype)

        e, d = s.hidden_size, s.head_dim

        def mlp(names: tuple[str, str, str], width: int, gated: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
            """(gate_up, down) from the (gate, up, down) weights ``names``."""
            up = get(names[1], (width, e))
            gate_up = torch.cat([get(names[0], (width, e)), up]) if gated else up
            return gate_up, get(names[2], (e, width))

        def sparse(p: str) -> MoEWeights:
            moe = s.moe
            assert moe is not None
            experts = [mlp(_expert_names(p, j), moe.expert_intermediate_size) for j in range(moe.num_experts)]
            w = MoEWeights(get(p + "block_sparse_moe.gate.weight", (moe.num_experts, e)),
                           torch.stack([g for g, _ in experts]), torch.stack([dn for _, dn in experts]))
            if moe.shared_intermediate_size:
                w.shared_gate_up, w.shared_down = mlp(_mlp_names(p + "mlp.shared_experts."),
                                                      moe.shared_intermediate_size)
            return w

        self.embed = get("model.embed_tokens.weight", (s.vocab_size, e))
        self.layers = []
        for i in range(s.num_layers):
            p = f"model.layers.{i}."
            qkv = torch.cat([get(p + "self_attn.q_proj.weight", (s.num_heads * d, e)),
                             get(p + "self_attn.k_proj.weight", (s.num_kv_heads * d, e)),
                             get(p + "self_attn.v_proj.weight", (s.num_kv_heads * d, e))])
            if s.is_moe_layer(i):
                gate_up, down, moe_w = None, None, sparse(p)
            else:
                (gate_up, down), moe_w = mlp(_mlp_names(p + "mlp."), s.intermediate_size, s.gated_mlp), None
            self.layers.append(LayerWeights(
                input_norm=get(p + "input_layernorm.weight", (e,)), qkv=qkv,
                o=get(p + "self_attn.o_proj.weight", (e, s.num_heads * d)),
                post_attn_norm=get(p + "post_attention_layernorm.weight", (e,)),
                gate_up=gate_up, down=down, moe=moe_w))
        self.norm = get("model.norm.weight", (e,))
        if s.tie_embeddings or "lm_head.weight" not in state:
            self.lm_head = self.embed
        else:
            self.lm_head = get("lm_head.weight", (s.vocab_size, e))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under HF Llama names, MoE layers under Mixtral's (the inverse of ``load_state_dict``);
        for writing checkpoints."""
        s = self.spec
        hd, kd = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
        out = {"model.embed_tokens.weight": self.embed, "model.norm.weight": self.norm}
        for i, w in enumerate(self.layers):
            p = f"model.layers.{i}."
            q, k, v = w.qkv.split([hd, kd, kd])
            out |= {p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k,
                    p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": w.o,
                    p + "input_layernorm.weight": w.input_norm,
                    p + "post_attention_layernorm.weight": w.post_attn_norm}
            if w.moe is None:
                assert w.gate_up is not None and w.down is not None
                out |= _mlp_tensors(_mlp_names(p + "mlp."), w.gate_up, w.down, s.gated_mlp)
                continue
            m = w.moe
            out[p + "block_sparse_moe.gate.weight"] = m.router
            for j in range(m.router.shape[0]):
                out |= _mlp_tensors(_expert_names(p, j), m.gate_up[j], m.down[j], True)
            if m.shared_gate_up is not None and m.shared_down is not None:
                out |= _mlp_tensors(_mlp_names(p + "mlp.shared_experts."), m.shared_gate_up, m.shared_down, True)
        if not s.tie_embeddings:
            out["lm_head.weight"] = self.lm_head
        return {k: t.contiguous() for k, t in out.items()}

    @property
    def num_bytes(self) -> int:
        """Device bytes of the weights (tied heads counted once)."""
        ts = [self.embed, self.norm] + [t for w in self.layers for t in w.tensors()]
        if self.lm_head is not self.embed:
            ts.append(self.lm_head)
        return sum(t.numel() * t.element_size() for t in ts)

    # ------------------------------------------------------------ forward

    def ensure_rope(self, length: int) -> None:
        """Make the rotary cos/sin tables cover positions [0, length)."""
        if length <= self._rope_len:
            return
        d = self.spec.head_dim
        inv_freq = 1.0 / (self.spec.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
        angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
        self.cos = angles.cos().to(device=self.device, dtype=self.dtype)
        self.sin = angles.sin().to(device=self.device, dtype=self.dtype)
        self._rope_len = length

    def layer_forward(self, i: int, h: torch.Tensor, positions: torch.Tensor, attn: AttnMetadata,
                      kv_cache: PagedKVCache) -> torch.Tensor:
        """Decoder layer ``i``: exactly the ops of ``sim.ops.layer_ops(spec.is_moe_layer(i))``, in order."""
        s, w, op = self.spec, self.layers[i], OPS
        k_cache, v_cache = kv_cache.layer(i)
        residual = h
        x = op["input_norm"](h, w.input_norm, s.norm_eps)
        q, k, v = op["qkv_proj"](x, w.qkv, s.num_heads, s.num_kv_heads, s.head_dim)
        q, k = op["rotary"](q, k, positions, self.cos, self.sin)
        out = torch.empty_like(q)
        out = op["attn_prefill"](q, k, v, k_cache, v_cache, attn, out)
        out = op["attn_decode"](q, k, v, k_cache, v_cache, attn, out)
        x = op["o_proj"](out, w.o)
        x = op["tp_all_reduce"](x)
        h = op["residual_add"](x, residual)
        residual = h
        x = op["post_attn_norm"](h, w.post_attn_norm, s.norm_eps)
        if w.moe is None:  # sim.ops.DENSE_MLP_OPS
            x = op["gate_up_proj"](x, w.gate_up)
            x = op["act"](x, s.gated_mlp)
            x = op["down_proj"](x, w.down)
        else:
            x = self.sparse_mlp(x, w.moe)
        x = op["tp_all_reduce_mlp"](x)
        return op["residual_add_mlp"](x, residual)

    def sparse_mlp(self, x: torch.Tensor, w: MoEWeights) -> torch.Tensor:
        """A MoE layer's MLP: exactly the ops of ``sim.ops.MOE_OPS``, in order (dispatch/combine are identities)."""
        op = OPS
        assert self.spec.moe is not None
        weights, experts = op["moe_router"](x, w.router, self.spec.moe.top_k)
        y = op["ep_dispatch"](x)
        y = op["moe_experts"](y, weights, experts, w.gate_up, w.down)
        y = op["ep_combine"](y)
        return op["moe_shared"](x, y, w.shared_gate_up, w.shared_down)

    def forward(self, token_ids: torch.Tensor, positions: torch.Tensor, attn: AttnMetadata,
                kv_cache: PagedKVCache, logits_rows: torch.Tensor) -> torch.Tensor:
        """Run all layers over the flat batch; float32 logits ``[len(logits_rows), V]`` for the chosen rows."""
        op = OPS
        h = op["embedding"](token_ids, self.embed)
        for i in range(self.spec.num_layers):
            h = self.layer_forward(i, h, positions, attn, kv_cache)
        h = op["pp_send_recv"](h)
        h = op["final_norm"](h[logits_rows], self.norm, self.spec.norm_eps)
        return op["lm_head"](h, self.lm_head)


def _mlp_names(prefix: str) -> tuple[str, str, str]:
    """HF Llama's (gate, up, down) weight names of the MLP under ``prefix``."""
    return prefix + "gate_proj.weight", prefix + "up_proj.weight", prefix + "down_proj.weight"


def _expert_names(layer_prefix: str, j: int) -> tuple[str, str, str]:
    """HF Mixtral's (gate, up, down) weight names of routed expert ``j``: w1, w3, w2."""
    p = f"{layer_prefix}block_sparse_moe.experts.{j}."
    return p + "w1.weight", p + "w3.weight", p + "w2.weight"


def _mlp_tensors(names: tuple[str, str, str], gate_up: torch.Tensor, down: torch.Tensor,
                 gated: bool) -> dict[str, torch.Tensor]:
    """An MLP's weights under ``names`` (gate, up, down); a plain MLP has only up and down."""
    if not gated:
        return {names[1]: gate_up, names[2]: down}
    gate, up = gate_up.chunk(2)
    return {names[0]: gate, names[1]: up, names[2]: down}


def load_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of the ``*.safetensors`` files in a checkpoint directory (on the CPU)."""
    try:
        from safetensors.torch import load_file
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ModuleNotFoundError("loading a checkpoint needs the safetensors package", name="safetensors") from exc
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state
