"""Roofline prices at the shapes a profile's rows time, and the roofline of the device a profile measured.

The profiled cost model needs, for every measured row, what the roofline says of the same
shape (to scale beyond a table's edge, to shape 2-D blends, to transfer to another GPU);
calibration's report and grid estimate use the same prices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sim.catalog.hardware import GPUSpec, get_gpu
from sim.catalog.models import ModelSpec
from sim.cost.interface import op_layers
from sim.cost.profile_format import SEQ_AXIS_OPS, Profile, ProfileError
from sim.cost.roofline import RooflineCostModel
from sim.cost.unit_rows import unit_batch
from sim.ops import COMMUNICATION_OPS, FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, MOE_OPS, UNIT_TIMINGS

_OpCost = tuple[float, float, float]


def prefill_pairs(chunk: int, cached: int) -> int:
    """Causal query-key pairs of a chunk over its cached context (query j sees cached + j + 1 keys)."""
    return chunk * cached + chunk * (chunk + 1) // 2


def mean_layer_time(model: ModelSpec, prices: Mapping[str, tuple[float, ...]]) -> float:
    """Seconds of one decoder layer averaged over the model's layers, from per-call ``prices`` (``[0]``: seconds) of
    its layer ops: the dense MLP's counted on its dense layers, the MoE ops on its MoE layers (as ``layer_forward``
    rows average the engine's layers); ops absent from ``prices`` count nothing."""
    n, moe = model.num_layers, sum(model.is_moe_layer(i) for i in range(model.num_layers))
    # each op weighted by its share of the layers: exactly 1.0 for every op of a dense model
    return sum(op_layers(op, n, moe) / n * prices[op][0] for op in LAYER_OPS + MOE_OPS if op in prices)


class OpRoofline:
    """Roofline time of every op at a measurement's shape, local work only (the shape a profile row times)."""

    def __init__(self, roofline: RooflineCostModel) -> None:
        self.rl = roofline

    def token_ops(self, num_tokens: int, num_seqs: int) -> dict[str, _OpCost]:
        """(seconds, flops, bytes) per op for ``num_tokens`` tokens of which ``num_seqs`` rows sample.

        Differs from ``RooflineCostModel.token_op_costs`` only where the engine's op does less
        than the roofline prices: ``final_norm`` runs on the sampled rows only, and ``embedding``
        and ``lm_head`` exclude their tensor-parallel communication (see ``comm_extra``).
        """
        rl = self.rl
        a = rl.token_op_costs(num_tokens, num_seqs)
        b = a if num_seqs == num_tokens else rl.token_op_costs(num_seqs, num_seqs)
        out = dict(a)
        out["final_norm"] = b["final_norm"]
        emb, lm = self.comm_extra(num_tokens, num_seqs)
        out["embedding"] = (a["embedding"][0] - emb, a["embedding"][1], a["embedding"][2])
        out["lm_head"] = (a["lm_head"][0] - lm, a["lm_head"][1], a["lm_head"][2])
        out["host_overhead"] = (rl.host_overhead_base + rl.host_overhead_per_item * num_seqs, 0.0, 0.0)
        return out

    def comm_extra(self, num_tokens: int, num_seqs: int) -> tuple[float, float]:
        """TP communication the roofline folds into embedding (all-reduce) and lm head (logit gather)."""
        rl = self.rl
        if rl.tp == 1:
            return 0.0, 0.0
        # the roofline's own formulas (sim.cost.roofline.token_op_costs), read back to split them out
        emb = rl._all_reduce(num_tokens * rl._h * rl.dtype_bytes)
        lm = ((rl.tp - 1) / rl.tp * num_seqs * rl.model.vocab_size * rl.dtype_bytes / rl._tp_rate + rl.comm_latency
              if num_seqs > 0 else 0.0)
        return emb, lm

    def pp_send_recv(self, num_tokens: int) -> float:
        """Hidden states and residual to the next stage over the stage link (as when pp > 1)."""
        rl = self.rl
        return 2.0 * num_tokens * rl._h * rl.dtype_bytes / rl._pp_rate + rl.comm_latency

    def prefill_shape(self, chunk: float, cached: float) -> float:
        """Roofline seconds of one chunk over ``cached`` context (the 2-D prefill table's shape)."""
        return self.rl.attn_prefill_cost(chunk, cached, chunk * cached + chunk * (chunk + 1) / 2)[0]

    def decode_shape(self, batch: float, context: float) -> float:
        """Roofline seconds of ``batch`` decodes with ``context`` keys each (the 2-D decode table's shape)."""
        return self.rl.attn_decode_cost(batch, batch * context)[0]

    def unit_time(self, op: str, tokens: int, seqs: int, context: int, variant: str) -> float:
        """Roofline seconds of a whole-unit row (one layer, or a forward pass with sampling): its ops' sum."""
        b = unit_batch(tokens, seqs, context, variant)
        sampled = len(b.items)  # every unit item completes its known tokens
        ops = self.token_ops(tokens, sampled)
        layer = mean_layer_time(self.rl.model, {o: v for o, v in ops.items() if o not in COMMUNICATION_OPS})
        for it in b.prefill_items:
            layer += self.rl.attn_prefill_cost(it.num_new_tokens, it.num_cached_tokens,
                                               prefill_pairs(it.num_new_tokens, it.num_cached_tokens))[0]
        if b.num_decode_tokens:
            layer += self.rl.attn_decode_cost(b.num_decode_tokens, b.decode_context)[0]
        if op == "layer_forward":
            return layer
        return self.rl.model.num_layers * layer + sum(ops[o][0] for o in FIRST_STAGE_OPS + LAST_STAGE_OPS)

    def time(self, op: str, tokens: int, seqs: int, context: int, variant: str = "") -> float:
        """Seconds of one call of ``op`` at a profile row's shape (per layer for layer ops)."""
        if op == "attn_prefill":
            return self.rl.attn_prefill_cost(tokens, context, prefill_pairs(tokens, context))[0]
        if op == "attn_decode":
            return self.rl.attn_decode_cost(seqs, seqs * context)[0]
        if op == "pp_send_recv":
            return self.pp_send_recv(tokens)
        if op in UNIT_TIMINGS:
            return self.unit_time(op, tokens, seqs, context, variant)
        n = seqs if op in SEQ_AXIS_OPS else 1
        return self.token_ops(tokens if op not in SEQ_AXIS_OPS else seqs, max(n, 1))[op][0]


def profile_device_spec(profile: Profile) -> tuple[GPUSpec, dict[str, Any]]:
    """The profile's device as a GPUSpec plus roofline keyword arguments.

    A catalogue GPU is used as is; any other device (a CPU, an unlisted GPU) becomes a spec
    with the rates calibration fitted to its own measurements (``device_rates``), at
    efficiency 1 and with its measured per-call overhead.
    """
    dev = profile.meta["device"]
    if dev.get("gpu"):
        try:
            return get_gpu(dev["gpu"]), {}
        except ValueError as e:
            raise ProfileError(f"{profile.path}/profile.json: device.gpu: {e}") from e
    rates = profile.meta.get("device_rates") or {}
    need = ("flops", "mem_bandwidth", "launch_s")
    if not all(isinstance(rates.get(k), (int, float)) and rates[k] > 0 for k in need):
        raise ProfileError(f"{profile.path}/profile.json: device {dev.get('name')!r} is not in the GPU catalogue and "
                           f"device_rates lacks positive {', '.join(need)}")
    spec = GPUSpec(name=f"measured:{dev.get('name', '?')}", bf16_flops=float(rates["flops"]),
                   mem_bandwidth=float(rates["mem_bandwidth"]), mem_bytes=float(dev.get("memory_bytes") or 1),
                   interconnect_bw=32e9, interconnect="pcie",
                   source="rates fitted to the profile's own measurements")
    return spec, {"compute_efficiency": 1.0, "memory_efficiency": 1.0,
                  "kernel_launch_overhead": float(rates["launch_s"])}
