"""The roofline's prices of a sparse (MoE) layer's ops: router, routed and shared experts, expert-parallel traffic.

A mixin of ``sim.cost.roofline.RooflineCostModel`` (whose GEMM, elementwise and link prices it uses); the routed
experts' load on the busiest GPU comes from ``sim.cost.moe_routing``.
"""

from __future__ import annotations

from typing import Any

from sim.cost.interface import ZERO_COST as _ZERO
from sim.cost.interface import OpCost as _OpCost
from sim.cost.moe_routing import busiest_gpu_load


class MoEPricing:
    """``_moe_op_costs`` and the collectives it needs, on the roofline's primitives."""

    model: Any
    _h: int
    dtype_bytes: int
    tp: int
    ep: int
    router_skew: float
    _tp_rate: float
    comm_latency: float
    _linear: Any
    _elementwise: Any
    _sum: Any

    def _mlp(self, rows: float, width: int, groups: float = 1.0) -> _OpCost:
        """A gated MLP of ``width`` (one GPU's share) over ``rows`` tokens, ``groups`` of them (experts) in one pass."""
        h, d = self._h, self.dtype_bytes
        act = self._elementwise(5.0 * groups * rows * width, 3.0 * groups * rows * width * d, "act")
        return self._sum((self._linear(rows, h, 2 * width, groups), act, self._linear(rows, width, h, groups)))

    def _moe_op_costs(self, T: int) -> dict[str, _OpCost]:
        """Per MoE layer: router, routed experts on the busiest GPU, shared experts, EP all-to-alls."""
        moe, h, d, tp, ep = self.model.moe, self._h, self.dtype_bytes, self.tp, self.ep
        assert moe is not None
        E, k = moe.num_experts, moe.top_k
        width = moe.expert_intermediate_size if ep > 1 else -(-moe.expert_intermediate_size // tp)
        tokens = T / ep  # with EP each GPU routes its share of the (TP-replicated) tokens
        load = busiest_gpu_load(T, E, k, ep, self.router_skew)
        experts = (self._mlp(load.pairs / load.experts, width, load.experts) if load.experts > 0 else _ZERO)
        combine_sum = self._elementwise(2.0 * load.pairs * h, 2.0 * load.pairs * h * d, "residual")
        router = self._linear(T, h, E, weight_bytes=d)  # routers stay in the activation dtype in fp8 checkpoints
        topk = self._elementwise(4.0 * T * E, 2.0 * T * E * 4, "act")  # float32 softmax and top-k over the logits
        shared = (self._mlp(T, -(-moe.shared_intermediate_size // tp)) if moe.shared_intermediate_size else _ZERO)
        a2a = self._all_to_all(tokens * k * h * d) if ep > 1 else 0.0
        # the combine returns each GPU its tokens' outputs; an all-gather then gives every TP rank all of them
        gather = self._all_gather(T * h * d) if ep > 1 else 0.0
        return {"moe_router": self._sum((router, topk)), "ep_dispatch": (a2a, 0.0, 0.0),
                "moe_experts": self._sum((experts, combine_sum)), "ep_combine": (a2a + gather, 0.0, 0.0),
                "moe_shared": shared}

    def _all_to_all(self, nbytes: float) -> float:
        """All-to-all across the EP group: each GPU sends ``nbytes`` of which (ep - 1)/ep leave it."""
        return (self.ep - 1) / self.ep * nbytes / self._tp_rate + self.comm_latency

    def _all_gather(self, nbytes: float) -> float:
        """Ring all-gather of ``nbytes`` (the whole result) across the TP group (zero when tp = 1)."""
        if self.tp == 1:
            return 0.0
        return (self.tp - 1) / self.tp * nbytes / self._tp_rate + self.comm_latency
