"""Roofline cost model: every op priced as max(compute time, memory time) plus a launch overhead.

For each op of ``sim.ops`` on one GPU's tensor-parallel shard:

    time = max(FLOPs / (peak x compute_efficiency), bytes / (bandwidth x memory_efficiency)) + launch

Matmul token counts are rounded up to the ``tile`` multiple in the compute term (a GEMM
processes whole tiles, so 257 tokens cost like 320 when compute-bound). Where the GPU catalogue
holds parameters fitted to published measurements (``RooflineFit``: GEMM efficiency rising with
the rows, weight-read efficiency, per-kernel floors, the GPU's tile; per elementwise kind a
bandwidth fraction and floor), they replace the uniform defaults for GEMMs and elementwise ops;
``fitted=False`` prices with the defaults alone. Attention is priced from the exact causal query-key pair counts
(prefill, where fitted, at an efficiency rising with the keys per query: ``sim.cost.attention_fit``). Communication (TP all-reduce, PP send/recv) is priced from
the interconnect. Needs only the model shape and the GPU datasheet numbers, so it works for any
entry of the catalogues.

Mixtures of experts: per MoE layer the router GEMM, the routed experts as one grouped GEMM over
the experts the batch touches (``sim.cost.moe_routing``: each touched expert's weights read once,
its tokens' FLOPs), and the shared experts as a dense MLP. With expert parallelism (``ep`` =
``tp``: vLLM's ``--enable-expert-parallel`` uses the TP group) attention stays TP-sharded on the
same GPUs; each GPU holds E/ep whole experts, takes 1/ep of the batch's tokens and sends each
token's hidden state to its k experts' GPUs and back (dispatch and combine all-to-alls, the
DeepEP pattern), and the MLP's all-reduce becomes an all-gather of the combined outputs; the
busiest GPU (the popular experts under ``router_skew``) sets the time. FP8 weights (``weight_dtype
"fp8"``) read one byte per parameter and run GEMMs at the GPU's FP8 peak (on a GPU without FP8
tensor cores, Ampere, weight-only at the bf16 peak, as vLLM's Marlin kernels do: FP8 compute is
never priced there); an FP8 KV cache reads one byte per cached value. MLA attention caches one latent per token (``kv_lora_rank +
qk_rope_head_dim`` values) and is priced with its query/key and value head widths. The reported FLOPs are the useful (unpadded) ones and the bytes are
device-memory traffic (communication excluded), for MFU and bandwidth utilisation.
"""

from __future__ import annotations

from sim.batch import Batch
from sim.catalog.hardware import GPUSpec, get_gpu
from sim.catalog.models import ModelSpec, check_weight_dtype, get_model, kv_dtype_bytes, layers_per_stage
from sim.cost.attention_fit import attention_fit
from sim.cost.interface import ZERO_COST as _ZERO
from sim.cost.interface import CostModel, StageCost, deployment_fields, op_layers
from sim.cost.interface import OpCost as _OpCost
from sim.cost.moe_pricing import MoEPricing
from sim.cost.run_pricing import RunPricing
from sim.ops import FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, MOE_OPS, STAGE_OPS

# ---- defaults (all rough, all overridable) ------------------------------------------------------
# Large bf16 GEMMs reach ~70-80% of the dense peak with cuBLAS (about 230 of 312 TFLOP/s on A100);
# FlashAttention-2's forward pass reaches 60-73%. One number for both.
DEFAULT_COMPUTE_EFFICIENCY = 0.70
# Streaming kernels (GEMV over weights, KV reads, elementwise) reach 85-92% of datasheet bandwidth
# (about 1.8 of 2.04 TB/s on A100-80GB).
DEFAULT_MEMORY_EFFICIENCY = 0.88
# Fixed cost per kernel: CUDA-graph replay gap between dependent kernels plus the ramp-up and tail
# of a small kernel, ~1-2 us on A100/H100.
DEFAULT_KERNEL_LAUNCH_OVERHEAD_S = 1.5e-6
# Per-iteration host (CPU) time of a vLLM-like Python scheduler and input preparation: a few
# hundred us fixed plus a few us per scheduled sequence (block tables, positions, sampling metadata).
DEFAULT_HOST_OVERHEAD_BASE_S = 400e-6
DEFAULT_HOST_OVERHEAD_PER_ITEM_S = 5e-6
# Latency of one small collective / point-to-point transfer: ~10 us for custom or NCCL all-reduce
# over NVLink, ~25 us over PCIe.
NVLINK_COMM_LATENCY_S = 10e-6
PCIE_COMM_LATENCY_S = 25e-6
# NCCL reaches ~75% of the link rate as bus bandwidth on large messages (about 230 of 300 GB/s on A100).
DEFAULT_COMM_EFFICIENCY = 0.75
DEFAULT_TILE = 64
# Sampling reads the float32 logits a few times (temperature/softmax, top-p/top-k, draw) in a few kernels.
SAMPLING_PASSES = 4
SAMPLING_FLOPS_PER_LOGIT = 10
SAMPLING_KERNELS = 6

#: elementwise op kinds with their own fitted bandwidth fraction and floor
ELEMENTWISE_KINDS: tuple[str, ...] = ("norm", "rotary", "act", "residual", "embedding")

_CACHE_LIMIT = 500_000


class RooflineCostModel(RunPricing, MoEPricing, CostModel):
    """Analytical per-op roofline for one replica (tp x pp GPUs); the embedded default cost model."""

    name = "roofline"

    def __init__(self, model: ModelSpec | str, gpu: GPUSpec | str, *, tp: int = 1, pp: int = 1,
                 dtype_bytes: int = 2, ep: int = 1, weight_dtype: str | None = None,
                 kv_cache_dtype: str = "auto", router_skew: float = 0.0,
                 compute_efficiency: float = DEFAULT_COMPUTE_EFFICIENCY,
                 memory_efficiency: float = DEFAULT_MEMORY_EFFICIENCY, tile: int | None = None,
                 kernel_launch_overhead: float = DEFAULT_KERNEL_LAUNCH_OVERHEAD_S,
                 host_overhead_base: float = DEFAULT_HOST_OVERHEAD_BASE_S,
                 host_overhead_per_item: float = DEFAULT_HOST_OVERHEAD_PER_ITEM_S,
                 comm_latency: float | None = None,
                 pp_link_bandwidth: float | None = None, tp_link_bandwidth: float | None = None,
                 comm_efficiency: float = DEFAULT_COMM_EFFICIENCY, fitted: bool = True) -> None:
        """Precompute the shard shapes and rates; ``comm_latency``/``pp_link_bandwidth``/``tp_link_bandwidth`` (a TP
        group that spans slower links than the GPU's, e.g. pairwise NVLink bridges) default from the GPU's link;
        ``tile`` defaults to the GPU's fitted tile, else 64; ``fitted`` uses the GPU's fitted parameters if any."""
        self.model = m = get_model(model)
        self.gpu = g = get_gpu(gpu)
        m.check_tp(tp)
        for label, v in (("compute_efficiency", compute_efficiency), ("memory_efficiency", memory_efficiency),
                         ("comm_efficiency", comm_efficiency)):
            if not 0.0 < v <= 1.0:
                raise ValueError(f"{label} must be in (0, 1], got {v}")
        self.fit = g.roofline if fitted else None
        if tile is None:
            tile = (self.fit.tile if self.fit is not None and self.fit.tile else None) or DEFAULT_TILE
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        self.tp, self.pp, self.dtype_bytes, self.tile = tp, pp, dtype_bytes, tile
        self.ep, self.router_skew = m.check_ep(tp, ep), router_skew
        self.weight_dtype = weight_dtype or m.dtype
        # FP8 weights take one byte; otherwise weights are in the activation dtype (4 bytes on a float32 CPU engine).
        # Without FP8 tensor cores (Ampere) FP8 weights run weight-only (vLLM's Marlin W8A16): bf16 GEMM compute
        self.weight_bytes = check_weight_dtype(self.weight_dtype) if self.weight_dtype == "fp8" else dtype_bytes
        self.fp8_compute = self.weight_dtype == "fp8" and g.has_fp8
        self.kv_cache_dtype, self.kv_bytes = kv_cache_dtype, kv_dtype_bytes(kv_cache_dtype, dtype_bytes)
        self.layers, self.num_stages = layers_per_stage(m.num_layers, pp), pp
        self.moe_layers = [m.stage_layer_kinds(s, pp)[1] for s in range(pp)]
        self.compute_efficiency, self.memory_efficiency = compute_efficiency, memory_efficiency
        self.comm_efficiency, self.kernel_launch_overhead = comm_efficiency, kernel_launch_overhead
        self.host_overhead_base, self.host_overhead_per_item = host_overhead_base, host_overhead_per_item
        if comm_latency is None:
            comm_latency = NVLINK_COMM_LATENCY_S if g.interconnect == "nvlink" else PCIE_COMM_LATENCY_S
        self.comm_latency = comm_latency
        self.pp_link_bandwidth = g.interconnect_bw if pp_link_bandwidth is None else pp_link_bandwidth
        self.tp_link_bandwidth = g.interconnect_bw if tp_link_bandwidth is None else tp_link_bandwidth
        # prefill attention's efficiency rising with the keys per query (sim.cost.attention_fit), where measured
        self.attn_fit = attention_fit(g.kernel_db) if fitted else None
        self._flop_rate = g.bf16_flops * compute_efficiency
        gemm_peak = g.fp8_flops if self.fp8_compute else g.bf16_flops
        self._gemm_rate = gemm_peak * compute_efficiency
        self._byte_rate = g.mem_bandwidth * memory_efficiency
        self._tp_rate = self.tp_link_bandwidth * comm_efficiency
        self._pp_rate = self.pp_link_bandwidth * comm_efficiency
        fit = self.fit
        self._gemm_fit = ((gemm_peak * fit.gemm_peak_efficiency, fit.gemm_half_rows,
                           g.mem_bandwidth * fit.gemm_memory_efficiency, fit.gemm_floor_s)
                          if fit is not None and fit.gemm_peak_efficiency else None)
        # kind -> (bytes/s, floor seconds)
        self._elem_fit = {k: (g.mem_bandwidth * e, floor) for k, e, floor in (fit.elementwise if fit else ())}

        d, h, hd = dtype_bytes, m.hidden_size, m.head_dim
        qh, kvh = m.q_heads_per_gpu(tp), m.kv_heads_per_gpu(tp)
        self._h, self._qh, self._kvh, self._hd = h, qh, kvh, hd
        self._inter = m.intermediate_per_gpu(tp)
        self._vocab_shard = m.vocab_per_gpu(tp)
        # attention projections on one GPU, each (in features, out features): fused qkv, or MLA's latent ones
        self._qkv = (list(m.mla.projections(h, qh).values())[:-1] if m.mla is not None
                     else [(h, (qh + 2 * kvh) * hd)])
        self._linears: dict[str, tuple[int, int]] = {  # op -> (in features, out features) of a plain GEMM, one GPU
            **({"qkv_proj": self._qkv[0]} if m.mla is None else {}),
            "o_proj": (qh * (m.mla.v_head_dim if m.mla else hd), h),
            "gate_up_proj": (h, (2 if m.gated_mlp else 1) * self._inter),
            "down_proj": (self._inter, h),
        }
        # attention coefficients, per layer: FLOPs per query-key pair, bytes per new token / per key read
        qk_dim, v_dim = (m.mla.qk_head_dim, m.mla.v_head_dim) if m.mla is not None else (hd, hd)
        self._attn_flops_per_pair = 2.0 * qh * (qk_dim + v_dim)   # QK^T and PV, 2 FLOPs per MAC
        q_and_out = qh * (qk_dim + v_dim) * d                      # read q, write output
        kv_row = float(m.kv_values_per_token_layer(tp) * self.kv_bytes)  # one token's cached k and v (or latent)
        self._attn_bytes_per_new = q_and_out + kv_row + 2.0 * kv_row  # + its own k,v read, cache write (read+write)
        self._attn_bytes_per_key = kv_row                          # cached keys/values read
        self._cache: dict[tuple[int, int, int], _OpCost] = {}
        self._token_heads: dict[tuple[int, int], tuple[_OpCost, _OpCost]] = {}  # ``_token_part``'s per token count
        self._sampling: dict[int, tuple[_OpCost, _OpCost]] = {}  # ``_sampling_ops`` per sampled row count
        self._layer_plans: dict[int, list[tuple[str, int]]] = {}

    # ---- primitive pricing ----------------------------------------------------------------------

    def _roof(self, flops: float, nbytes: float) -> float:
        """Roofline time of one kernel, launch overhead included."""
        t_c = flops / self._flop_rate
        t_m = nbytes / self._byte_rate
        return (max(t_m, t_c)) + self.kernel_launch_overhead

    def _linear(self, rows: float, k: int, n: int, groups: float = 1.0, weight_bytes: int | None = None) -> _OpCost:
        """``groups`` [rows, k] x [k, n] GEMMs in one kernel (1: a plain GEMM; more: a MoE layer's experts).

        Tile-padded rows in the compute term; weights (``weight_bytes`` per parameter, default the
        model's) and activations in bytes; one kernel floor.
        """
        if rows <= 0 or groups <= 0:
            return _ZERO
        d = self.dtype_bytes
        wb = self.weight_bytes if weight_bytes is None else weight_bytes
        padded = -(-rows // self.tile) * self.tile
        nbytes = groups * (wb * k * n + d * rows * (k + n))
        if self._gemm_fit is not None:  # efficiency rising with the rows (fitted to the GPU's GEMM table)
            peak, half, byte_rate, floor = self._gemm_fit
            t = max(2.0 * groups * (padded + half) * k * n / peak, nbytes / byte_rate) + floor
        else:
            t = (max(2.0 * groups * padded * k * n / self._gemm_rate, nbytes / self._byte_rate)
                 + self.kernel_launch_overhead)
        return (t, 2.0 * groups * rows * k * n, float(nbytes))

    def _elementwise(self, flops: float, nbytes: float, kind: str) -> _OpCost:
        fit = self._elem_fit.get(kind)
        if fit is None:
            return (self._roof(flops, nbytes), float(flops), float(nbytes))
        byte_rate, floor = fit
        t_c, t_m = flops / self._flop_rate, nbytes / byte_rate
        return ((max(t_m, t_c)) + floor, float(flops), float(nbytes))

    def _all_reduce(self, nbytes: float) -> float:
        """Ring all-reduce of ``nbytes`` across the TP group (zero when tp = 1)."""
        tp = self.tp
        if tp == 1:
            return 0.0
        return 2.0 * (tp - 1) / tp * nbytes / self._tp_rate + self.comm_latency

    # ---- token-count-dependent ops --------------------------------------------------------------

    def token_op_costs(self, num_tokens: int, num_items: int) -> dict[str, _OpCost]:
        """(seconds, flops, bytes) of one invocation of every op that depends only on token/item counts.

        Layer ops are per layer; ``embedding``, ``final_norm``, ``lm_head``, ``sampling`` and
        ``pp_send_recv`` are per stage execution (the caller decides which stages run them).
        """
        T, N, d = num_tokens, num_items, self.dtype_bytes
        h, qh, kvh, hd, inter = self._h, self._qh, self._kvh, self._hd, self._inter
        act_hidden = T * h * d  # bytes of one [T, hidden] activation
        norm = self._elementwise(4.0 * T * h, 2.0 * act_hidden + h * d, "norm")
        resid = self._elementwise(1.0 * T * h, 3.0 * act_hidden, "residual")
        rot_elems = T * (qh + kvh) * hd
        gated = self.model.gated_mlp
        act = (self._elementwise(5.0 * T * inter, 3.0 * T * inter * d, "act") if gated
               else self._elementwise(8.0 * T * inter, 2.0 * T * inter * d, "act"))
        ar = self._all_reduce(act_hidden)
        costs: dict[str, _OpCost] = {
            "input_norm": norm,
            "qkv_proj": self._sum(self._linear(T, i, o) for i, o in self._qkv),
            "rotary": self._elementwise(3.0 * rot_elems, 2.0 * rot_elems * d, "rotary"),
            "o_proj": self._linear(T, *self._linears["o_proj"]),
            "tp_all_reduce": (ar, 0.0, 0.0),
            "residual_add": resid,
            "post_attn_norm": norm,
            "gate_up_proj": self._linear(T, *self._linears["gate_up_proj"]),
            "act": act,
            "down_proj": self._linear(T, *self._linears["down_proj"]),
            "tp_all_reduce_mlp": (ar, 0.0, 0.0),
            "residual_add_mlp": resid,
        }
        if self.model.moe is not None:
            costs.update(self._moe_op_costs(T))
        # embedding: gather rows of the vocab-parallel table (+ all-reduce of the masked lookups when tp > 1)
        emb_t, emb_f, emb_b = self._elementwise(0.0, 2.0 * act_hidden + 8.0 * T, "embedding")
        costs["embedding"] = (emb_t + ar, emb_f, emb_b)
        costs["final_norm"] = norm
        costs["lm_head"], costs["sampling"] = self._sampling_ops(N)
        # hidden states and the residual go to the next stage (as vLLM's IntermediateTensors)
        pp_t = 2.0 * act_hidden / self._pp_rate + self.comm_latency if self.pp > 1 else 0.0
        costs["pp_send_recv"] = (pp_t, 0.0, 0.0)
        return costs

    def _sampling_ops(self, num_items: int) -> tuple[_OpCost, _OpCost]:
        """(lm_head, sampling) of one stage execution: the only ops that depend on the rows that sample."""
        N, h, d = num_items, self._h, self.dtype_bytes
        # lm head only for the rows that sample; with TP the logit shards are gathered on one rank
        lm_t, lm_f, lm_b = self._linear(N, h, self._vocab_shard)
        if self.tp > 1 and N > 0:
            V = self.model.vocab_size
            lm_t += (self.tp - 1) / self.tp * N * V * d / self._tp_rate + self.comm_latency
        logits = float(N) * self.model.vocab_size
        if N > 0:
            samp_b = SAMPLING_PASSES * 4.0 * logits
            samp_f = SAMPLING_FLOPS_PER_LOGIT * logits
            t = max(samp_f / self._flop_rate, samp_b / self._byte_rate) + SAMPLING_KERNELS * self.kernel_launch_overhead
            return (lm_t, lm_f, lm_b), (t, samp_f, samp_b)
        return (lm_t, lm_f, lm_b), _ZERO

    @staticmethod
    def _sum(costs) -> _OpCost:
        t = f = b = 0.0
        for ct, cf, cb in costs:
            t, f, b = t + ct, f + cf, b + cb
        return (t, f, b)

    def _stage_token_ops(self, num_tokens: int, num_items: int, stage: int, costs: dict | None = None) -> dict:
        """Stage totals (layer ops times the stage's layers) of the token-dependent ops, all op names present
        (``costs``: ``token_op_costs(num_tokens, num_items)`` if the caller has it)."""
        costs = costs if costs is not None else self.token_op_costs(num_tokens, num_items)
        plan = self._layer_plans.get(stage)
        if plan is None:  # each layer op with the stage's layers that run it
            L, moe = self.layers[stage], self.moe_layers[stage]
            plan = self._layer_plans[stage] = [(op, op_layers(op, L, moe, self.ep)) for op in LAYER_OPS + MOE_OPS]
        out: dict[str, _OpCost] = {}
        for op, n in plan:
            c = costs.get(op)
            if c is not None:
                t, f, b = c
                out[op] = (n * t, n * f, n * b)
        first, last = stage == 0, stage == self.pp - 1
        for op in FIRST_STAGE_OPS:
            out[op] = costs[op] if first else _ZERO
        for op in LAST_STAGE_OPS:
            out[op] = costs[op] if last else _ZERO
        for op in STAGE_OPS:
            out[op] = _ZERO if last else costs[op]
        return out

    def _token_part(self, num_tokens: int, num_items: int, stage: int) -> _OpCost:
        """The sum of ``_stage_token_ops``' values, in their order. Only lm_head and sampling, summed after every op
        but pp_send_recv, depend on the items: the sum before them is kept per token count (``_token_heads``), so
        that a new item count costs three additions (the same floats: the same additions in the same order)."""
        key = (num_tokens, num_items, stage)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        head = self._token_heads.get((num_tokens, stage))
        if head is None:
            ops = self._stage_token_ops(num_tokens, num_items, stage)
            t = f = b = 0
            for op, (ot, of, ob) in ops.items():
                if op == "lm_head":
                    break
                t, f, b = t + ot, f + of, b + ob
            head = self._token_heads[num_tokens, stage] = (t, f, b), ops["pp_send_recv"]
            if len(self._token_heads) >= _CACHE_LIMIT:
                self._token_heads.clear()
        (t, f, b), (pt, pf, pb) = head
        if stage == self.pp - 1:  # (elsewhere they are zeros, which add nothing)
            tail = self._sampling.get(num_items)
            if tail is None:
                tail = self._sampling[num_items] = self._sampling_ops(num_items)
            (lt, lf, lb), (st, sf, sb) = tail
            t, f, b = t + lt + st, f + lf + sf, b + lb + sb
        res = (t + pt, f + pf, b + pb)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = res
        return res

    # ---- attention ------------------------------------------------------------------------------

    def attn_prefill_cost(self, new_tokens: int, cached_tokens: int, causal_pairs: int) -> _OpCost:
        """One layer's prefill attention over summed chunk sizes, cached contexts and causal query-key pairs."""
        if new_tokens <= 0:
            return _ZERO
        f = self._attn_flops_per_pair * causal_pairs
        b = self._attn_bytes_per_new * new_tokens + self._attn_bytes_per_key * cached_tokens
        fit = self.attn_fit
        if fit is None:
            return (self._roof(f, b), f, b)
        t_c = f / (self.gpu.bf16_flops * fit.efficiency(causal_pairs / new_tokens))  # mean keys per query row
        return (max(t_c, b / self._byte_rate) + self.kernel_launch_overhead, f, b)

    def attn_decode_cost(self, num_decodes: int, total_context: int) -> _OpCost:
        """One layer's decode attention: ``num_decodes`` queries reading ``total_context`` keys in all."""
        if num_decodes <= 0:
            return _ZERO
        f = self._attn_flops_per_pair * total_context
        # total_context includes each decode's own key, already counted in the per-new-token bytes
        b = self._attn_bytes_per_new * num_decodes + self._attn_bytes_per_key * (total_context - num_decodes)
        return (self._roof(f, b), f, b)

    @staticmethod
    def _prefill_sums(batch: Batch) -> tuple[int, int, int]:
        new = cached = pairs = 0
        for it in batch.prefill_items:
            c, p = it.num_new_tokens, it.num_cached_tokens
            new += c
            cached += p
            pairs += c * p + c * (c + 1) // 2  # query j of the chunk sees p + j + 1 keys
        return new, cached, pairs

    # ---- CostModel interface --------------------------------------------------------------------

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        """Device time, FLOPs and bytes of ``batch`` on pipeline ``stage`` (host overhead excluded)."""
        num_tokens = batch.num_prefill_tokens + batch.num_decode_tokens
        if num_tokens == 0:
            return StageCost(0.0, 0.0, 0.0)
        t, f, b = self._token_part(num_tokens, batch.size, stage)
        L = self.layers[stage]
        if batch.prefill_items:
            at, af, ab = self.attn_prefill_cost(*self._prefill_sums(batch))
            t += L * at
            f += L * af
            b += L * ab
        nd = batch.num_decode_tokens
        if nd:
            at, af, ab = self.attn_decode_cost(nd, batch.decode_context)
            t += L * at
            f += L * af
            b += L * ab
        return StageCost(t, f, b)

    def host_time(self, batch: Batch) -> float:
        """Per-iteration CPU time: base plus per scheduled item."""
        return self.host_overhead_base + self.host_overhead_per_item * batch.size

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        """Seconds per non-host op of ``sim.ops`` (zero where it does not run); sums to ``stage_cost().time``."""
        names = LAYER_OPS + (MOE_OPS if self.model.moe else ()) + FIRST_STAGE_OPS + LAST_STAGE_OPS + STAGE_OPS
        num_tokens = batch.num_prefill_tokens + batch.num_decode_tokens
        if num_tokens == 0:
            return {op: 0.0 for op in names}
        ops = self._stage_token_ops(num_tokens, batch.size, stage)
        L = self.layers[stage]
        pre = self.attn_prefill_cost(*self._prefill_sums(batch)) if batch.prefill_items else _ZERO
        dec = self.attn_decode_cost(batch.num_decode_tokens, batch.decode_context)
        ops["attn_prefill"] = (L * pre[0], 0.0, 0.0)
        ops["attn_decode"] = (L * dec[0], 0.0, 0.0)
        return {op: ops[op][0] for op in names}

    def describe(self) -> dict:
        """Parameters and derived rates, for summary.json."""
        return {
            **deployment_fields(self),
            "dtype_bytes": self.dtype_bytes,
            "weight_dtype": self.weight_dtype,
            **({"fp8_compute": self.fp8_compute, "fp8_peak_source": self.gpu.fp8_source or
                f"{self.gpu.name} has no FP8 tensor cores: weight-only FP8 with bf16 compute (vLLM's Marlin kernels)"}
               if self.weight_dtype == "fp8" else {}),
            "kv_cache_dtype": self.kv_cache_dtype,
            **({"ep": self.ep, "router_skew": self.router_skew, "moe_layers_per_stage": self.moe_layers}
               if self.model.moe else {}),
            "compute_efficiency": self.compute_efficiency,
            "memory_efficiency": self.memory_efficiency,
            "comm_efficiency": self.comm_efficiency,
            "tile": self.tile,
            "fitted": None if self.fit is None else {
                "gemm_peak_efficiency": self.fit.gemm_peak_efficiency, "gemm_half_rows": self.fit.gemm_half_rows,
                "gemm_memory_efficiency": self.fit.gemm_memory_efficiency, "gemm_floor_s": self.fit.gemm_floor_s,
                "elementwise": {k: {"memory_efficiency": e, "floor_s": f} for k, e, f in self.fit.elementwise},
                "source": self.fit.source},
            "kernel_launch_overhead_s": self.kernel_launch_overhead,
            "host_overhead_base_s": self.host_overhead_base,
            "host_overhead_per_item_s": self.host_overhead_per_item,
            "comm_latency_s": self.comm_latency,
            "tp_link_bandwidth": self.tp_link_bandwidth,
            "prefill_attention_fit": None if self.attn_fit is None else vars(self.attn_fit),
            "pp_link_bandwidth": self.pp_link_bandwidth,
            "peak_flops": self.gpu.fp8_flops if self.fp8_compute else self.gpu.bf16_flops,
            "mem_bandwidth": self.gpu.mem_bandwidth,
        }
