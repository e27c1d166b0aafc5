"""Kernel-database cost model: ops priced from AIConfigurator's measured kernel latencies, roofline elsewhere.

Op mapping, on the deployment's shard shapes (TP divides heads, MLP width and vocabulary):

- ``qkv_proj``, ``o_proj``, ``gate_up_proj``, ``down_proj``: bf16 GEMMs with m = the batch's tokens;
  ``lm_head``: a GEMM with m = the rows that sample (plus, with TP, the roofline's logit gather);
- ``attn_prefill``: the context-attention table, each chunk priced as the full prefill with its
  number of causal query-key pairs; several chunks in one batch cost the sum of their prices less
  the table's smallest (one call's fixed cost, counted once);
- ``attn_decode``: the generation-attention table at the batch's mean keys per request;
- ``tp_all_reduce`` (both of a layer): the framework's custom all-reduce table for the TP degree, its CUDA-graph
  variant for decode-only iterations (vLLM captures those by default) and the eager one for those with a prefill;
- ``pp_send_recv``, norms, rotary, activation, residual adds, embedding, sampling and the host
  overhead: the roofline (the database has no p2p transfers or elementwise kernels).

Every price names its source (table file, kernel, framework version, or ``roofline``); see
``sim.cost.kernels.lookups`` for interpolation and extrapolation.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sim.batch import Batch
from sim.catalog.hardware import GPUS, GPUSpec, get_gpu
from sim.catalog.models import ModelSpec, get_model
from sim.cost.interface import CostModel, StageCost, deployment_fields, stage_totals
from sim.cost.kernels import database as db
from sim.cost.kernels.lookups import (
    DecodeAttention,
    PrefillAttention,
    all_reduce_curve,
    gemm_curve,
    head_rows,
)
from sim.cost.kernels.moe_tables import MoETables
from sim.cost.kernels.run_pricing import KernelRunPricing
from sim.cost.roofline import RooflineCostModel
from sim.ops import FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, MOE_OPS, STAGE_OPS

ROOFLINE = "roofline"
DEVICE_OPS: tuple[str, ...] = LAYER_OPS + MOE_OPS + FIRST_STAGE_OPS + LAST_STAGE_OPS + STAGE_OPS
GEMM_OPS: tuple[str, ...] = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
ALL_REDUCE_OPS: tuple[str, ...] = ("tp_all_reduce", "tp_all_reduce_mlp")
_CACHE_LIMIT = 200_000
_OpTime = tuple[float, str]


def gpus_with_database() -> list[str]:
    """Catalogue GPUs whose measured kernel tables the package ships."""
    return [name for name, g in GPUS.items() if g.kernel_db]


class KernelCostModel(KernelRunPricing, MoETables, CostModel):
    """Prices batches from measured kernel tables; see the module docstring."""

    name = "kernels"

    def __init__(self, model: ModelSpec | str, gpu: GPUSpec | str, *, tp: int = 1, pp: int = 1,
                 kernel_db: str | None = None, cuda_graphs: bool = True, **roofline_kwargs: Any) -> None:
        """``kernel_db``: ``FRAMEWORK[:VERSION]`` (default: vLLM, its newest version measured on this GPU)."""
        self.model = m = get_model(model)
        self.gpu = g = get_gpu(gpu)
        if not g.kernel_db:
            raise db.KernelDatabaseError(f"no measured kernel database for GPU {g.name}; GPUs with one: "
                                         f"{', '.join(gpus_with_database())}")
        self.rl = rl = RooflineCostModel(m, g, tp=tp, pp=pp, **roofline_kwargs)
        self.tp, self.pp, self.layers, self.num_stages = tp, pp, rl.layers, pp
        self.cuda_graphs = cuda_graphs
        framework, version = db.parse_kernel_db(kernel_db)
        self.refs = db.resolve(g.kernel_db, framework, version)
        self.framework, self.version = framework, self.refs["gemm"].version
        self.source_counts: Counter[str] = Counter()
        self._count_keys: dict[str, str] = {}
        self._build_gemms()
        self._build_attention()
        self._build_all_reduce()
        self._build_moe()
        self._build_a2a()
        self._token_cache: dict[tuple[int, int, int, bool], tuple[float, float, float]] = {}
        self._token_heads: dict[tuple[int, int, bool], tuple] = {}  # ``_token_head`` per token count
        self._sampling: dict[tuple[int, int], tuple] = {}  # ``_sampling_part`` per item count and stage
        self._prefill_cache: dict[tuple[int, int], _OpTime] = {}

    # ---- tables -----------------------------------------------------------------------------

    def _gemm_roofline(self, m: float, n: float, k: float) -> float:
        return self.rl._linear(max(1, round(m)), int(k), int(n))[0]

    def _build_gemms(self) -> None:
        ref = self.refs["gemm"]
        table = db.read_table(ref.path)
        dtype = "fp8" if self.rl.fp8_compute else "bfloat16"  # FP8 GEMMs where the GPU computes in FP8
        rows = table[table["gemm_dtype"] == dtype]
        if rows.empty:
            raise db.KernelDatabaseError(f"{ref.path}: no {dtype} GEMM rows")
        shapes = dict(self.rl._linears)  # op -> (k: in features, n: out features)
        shapes["lm_head"] = (self.model.hidden_size, self.model.vocab_per_gpu(self.tp))
        self._gemms = {op: gemm_curve(rows, ref, n, k, self._gemm_roofline) for op, (k, n) in shapes.items()}

    def _build_attention(self) -> None:
        rl, m = self.rl, self.model
        qh, kvh, hd = m.q_heads_per_gpu(self.tp), m.kv_heads_per_gpu(self.tp), m.head_dim
        self._prefill = self._decode = None
        self.attention_notes: list[str] = []
        ref = self.refs.get("context_attention")
        if ref is not None:
            rows, fold = head_rows(db.read_table(ref.path), qh, kvh, hd)
            if len(rows) and fold == 1 and (rows["batch_size"] == 1).any():
                self._prefill = PrefillAttention(
                    rows, ref, lambda s: rl.attn_prefill_cost(s, 0, s * (s + 1) / 2)[0])
            else:
                self.attention_notes.append(f"{ref.path.name} has no {qh}/{kvh} heads x {hd} rows: roofline")
        ref = self.refs.get("generation_attention")
        if ref is not None:
            rows, fold = head_rows(db.read_table(ref.path), qh, kvh, hd)
            if len(rows):
                self._decode = DecodeAttention(rows, fold, ref, rl)
            else:
                self.attention_notes.append(f"{ref.path.name} has no {qh}/{kvh} heads x {hd} rows: roofline")

    def _build_all_reduce(self) -> None:
        self._all_reduce = {}
        ref = self.refs.get("all_reduce")
        if self.tp == 1 or ref is None:
            return
        table = db.read_table(ref.path)
        tp, rate, lat = self.tp, self.rl._tp_rate, self.rl.comm_latency
        ring = lambda nbytes: 2.0 * (tp - 1) / tp * nbytes / rate + lat
        for graphs in (True, False):
            curve = all_reduce_curve(table, ref, tp, graphs, ring)
            if curve is not None:
                self._all_reduce[graphs] = curve

    # ---- token-count ops --------------------------------------------------------------------

    def _count(self, source: str) -> None:
        self.source_counts[self._count_key(source)] += 1

    def _count_key(self, source: str) -> str:
        """What ``source_counts`` counts ``source`` under: its table, without the kernel in brackets (a few dozen)."""
        key = self._count_keys.get(source)
        if key is None:
            key = self._count_keys[source] = source.split(" [")[0] if source != ROOFLINE else ROOFLINE
        return key

    def token_op_times(self, num_tokens: int, num_seqs: int, decode_only: bool = False, costs: dict | None = None
                       ) -> dict[str, _OpTime]:
        """(seconds, source) of one call of every device op except attention (layer ops: per layer; ``costs``: the
        roofline's ``token_op_costs(num_tokens, num_seqs)`` if the caller has it)."""
        rl, T, N = self.rl, num_tokens, num_seqs
        costs = costs if costs is not None else rl.token_op_costs(T, N)
        out: dict[str, _OpTime] = {op: (costs[op][0], ROOFLINE) for op in DEVICE_OPS if op in costs}
        for op in GEMM_OPS:
            if op in self._gemms:  # MLA's latent projections are several GEMMs: roofline
                out[op] = self._gemms[op](T)
        if self._moe is not None:  # the table times the routed experts of T tokens (one rank's share)
            out["moe_experts"] = self._moe(T)
        if self._a2a and T:
            out.update(self._a2a_times(T))
        if N > 0:
            out["lm_head"] = self._lm_head_time(N, costs["lm_head"][0])
        curve = self._all_reduce.get(decode_only and self.cuda_graphs)
        if curve is not None:
            ar = curve(float(T * self.model.hidden_size * rl.dtype_bytes))
            for op in ALL_REDUCE_OPS:
                out[op] = ar
        return out

    def _lm_head_time(self, num_seqs: int, roofline_time: float) -> _OpTime:
        """lm_head over ``num_seqs`` (> 0) sampled rows: the GEMM table's time plus the roofline's gather of the
        logit shards (its ``roofline_time`` less its GEMM)."""
        t, src = self._gemms["lm_head"](num_seqs)
        gemm = self.rl._linear(num_seqs, self.model.hidden_size, self.model.vocab_per_gpu(self.tp))[0]
        return t + (roofline_time - gemm), src + ("+roofline-gather" if self.tp > 1 else "")

    def gemm_time(self, op: str, m: int) -> float:
        """Seconds of the GEMM of ``op`` (a projection or ``lm_head``, local work only) with ``m`` rows."""
        return self._gemms[op](m)[0]

    def _stage_token_times(self, num_tokens: int, num_items: int, stage: int, decode_only: bool,
                           costs: dict | None = None) -> dict[str, _OpTime]:
        """Stage totals of the token-count ops (layer ops times the stage's layers); zero where one does not run."""
        ops = self.token_op_times(num_tokens, num_items, decode_only, costs)
        return stage_totals(ops, self.layers[stage], stage == 0, stage == self.pp - 1, self.rl.moe_layers[stage],
                            self.rl.ep)

    def _token_part(self, num_tokens: int, num_items: int, stage: int, decode_only: bool
                    ) -> tuple[float, float, float]:
        """The sums of ``_stage_token_times``' seconds and of the roofline's ``_stage_token_ops``' FLOPs and bytes,
        each in its order, every op's source counted at each new shape. Only lm_head and sampling, summed after
        every op but pp_send_recv, depend on the items: the sums before them and the other ops' sources are kept
        per token count (``_token_heads``), so a new item count adds three terms (the same floats)."""
        key = (num_tokens, num_items, stage, decode_only)
        hit = self._token_cache.get(key)
        if hit is not None:
            return hit
        head = self._token_heads.get((num_tokens, stage, decode_only))
        if head is None:
            head = self._token_head(num_tokens, num_items, stage, decode_only)
        (t, f, b), sources, (pt, pf, pb) = head
        self.source_counts.update(sources)
        tail = self._sampling.get((num_items, stage))
        if tail is None:
            tail = self._sampling[num_items, stage] = self._sampling_part(num_items, stage)
        (lt, lf, lb, lsrc), (st, sf, sb, ssrc) = tail
        self._count(lsrc)
        self._count(ssrc)
        res = (t + lt + st + pt, f + lf + sf + pf, b + lb + sb + pb)
        if len(self._token_cache) >= _CACHE_LIMIT:
            self._token_cache.clear()
        self._token_cache[key] = res
        return res

    def _token_head(self, num_tokens: int, num_items: int, stage: int, decode_only: bool) -> tuple:
        """``_token_part``'s sums before lm_head (seconds, FLOPs, bytes), the other ops' count keys, and
        pp_send_recv's terms, for this token count (``num_items``: any; the parts it sets are left out)."""
        costs = self.rl.token_op_costs(num_tokens, num_items)  # (read once for both sums)
        ops = self._stage_token_times(num_tokens, num_items, stage, decode_only, costs)
        useful = self.rl._stage_token_ops(num_tokens, num_items, stage, costs)  # FLOPs, bytes: for MFU
        t = f = b = 0
        for op, (ot, _) in ops.items():
            if op == "lm_head":
                break
            t += ot
        for op, (_, of, ob) in useful.items():
            if op == "lm_head":
                break
            f, b = f + of, b + ob
        sources = [self._count_key(src) for op, (_, src) in ops.items() if op not in ("lm_head", "sampling")]
        _, pf, pb = useful["pp_send_recv"]
        head = self._token_heads[num_tokens, stage, decode_only] = (t, f, b), sources, (ops["pp_send_recv"][0], pf, pb)
        if len(self._token_heads) >= _CACHE_LIMIT:
            self._token_heads.clear()
        return head

    def _sampling_part(self, num_items: int, stage: int) -> tuple:
        """(seconds, FLOPs, bytes, source) of lm_head and of sampling over ``num_items`` rows on ``stage`` (zeros,
        sources kept, where they do not run), as ``_stage_token_times`` and ``_stage_token_ops`` price them."""
        lm, samp = self.rl._sampling_ops(num_items)
        lm_time = self._lm_head_time(num_items, lm[0]) if num_items > 0 else (lm[0], ROOFLINE)
        if stage != self.pp - 1:
            return (0.0, 0.0, 0.0, lm_time[1]), (0.0, 0.0, 0.0, ROOFLINE)
        return (lm_time[0], lm[1], lm[2], lm_time[1]), (samp[0], samp[1], samp[2], ROOFLINE)

    # ---- attention --------------------------------------------------------------------------

    def _chunk(self, chunk: int, cached: int) -> _OpTime:
        key = (chunk, cached)
        hit = self._prefill_cache.get(key)
        if hit is None:
            hit = self._prefill(chunk, cached)
            self._count(hit[1])
            if len(self._prefill_cache) >= _CACHE_LIMIT:
                self._prefill_cache.clear()
            self._prefill_cache[key] = hit
        return hit

    def attn_prefill(self, batch: Batch) -> _OpTime:
        """One layer's prefill attention of ``batch``: the chunks' prices summed, one call's fixed cost once."""
        if self._prefill is None:
            return self.rl.attn_prefill_cost(*self.rl._prefill_sums(batch))[0], ROOFLINE
        floor = self._prefill.floor
        t, source = 0.0, ""
        for it in batch.prefill_items:
            ti, src = self._chunk(it.num_new_tokens, it.num_cached_tokens)
            t += ti - floor
            source = src if not source or src.endswith("+edge") else source
        return t + floor, source

    def _prefill_seconds(self, batch: Batch, sums: tuple[int, int, int]) -> float:
        """``attn_prefill(batch)``'s seconds (the same floats) without its source; ``sums``: the roofline's
        ``_prefill_sums(batch)``."""
        if self._prefill is None:
            return self.rl.attn_prefill_cost(*sums)[0]
        floor, chunk = self._prefill.floor, self._chunk
        t = 0.0
        for it in batch.prefill_items:
            t += chunk(it.num_new_tokens, it.num_cached_tokens)[0] - floor
        return t + floor

    def attn_decode(self, num_decodes: int, total_context: int) -> _OpTime:
        """One layer's decode attention of ``num_decodes`` requests reading ``total_context`` keys in all."""
        if num_decodes <= 0:
            return 0.0, ROOFLINE
        if self._decode is None:
            return self.rl.attn_decode_cost(num_decodes, total_context)[0], ROOFLINE
        return self._decode(num_decodes, total_context)

    # ---- CostModel interface ----------------------------------------------------------------

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        """Device time (communication included), FLOPs and bytes of ``batch`` on ``stage``; host excluded."""
        num_tokens = batch.num_prefill_tokens + batch.num_decode_tokens
        if num_tokens == 0:
            return StageCost(0.0, 0.0, 0.0)
        t, f, b = self._token_part(num_tokens, batch.size, stage, not batch.prefill_items)
        L = self.layers[stage]
        if batch.prefill_items:
            sums = self.rl._prefill_sums(batch)
            t += L * self._prefill_seconds(batch, sums)
            _, af, ab = self.rl.attn_prefill_cost(*sums)
            f += L * af
            b += L * ab
        nd = batch.num_decode_tokens
        if nd:
            t += L * (self._decode.seconds(nd, batch.decode_context) if self._decode is not None
                      else self.rl.attn_decode_cost(nd, batch.decode_context)[0])
            _, af, ab = self.rl.attn_decode_cost(nd, batch.decode_context)
            f += L * af
            b += L * ab
        return StageCost(t, f, b)

    def host_time(self, batch: Batch) -> float:
        """The roofline's per-iteration CPU time (the database measures kernels only)."""
        return self.rl.host_time(batch)

    def _explain(self, batch: Batch, stage: int) -> dict[str, _OpTime]:
        num_tokens = batch.num_prefill_tokens + batch.num_decode_tokens
        if num_tokens == 0:
            return {op: (0.0, ROOFLINE) for op in DEVICE_OPS if self.model.moe or op not in MOE_OPS}
        ops = self._stage_token_times(num_tokens, batch.size, stage, not batch.prefill_items)
        L = self.layers[stage]
        t, s = self.attn_prefill(batch) if batch.prefill_items else (0.0, ROOFLINE)
        ops["attn_prefill"] = (L * t, s)
        t, s = self.attn_decode(batch.num_decode_tokens, batch.decode_context)
        ops["attn_decode"] = (L * t, s)
        return {op: ops[op] for op in DEVICE_OPS if op in ops}

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        """Seconds per device op of ``sim.ops`` (zero where one does not run); sums to ``stage_cost().time``."""
        return {op: v[0] for op, v in self._explain(batch, stage).items()}

    def breakdown_sources(self, batch: Batch, stage: int) -> dict[str, str]:
        """Where each op's price comes from: a kernel table (file, kernel; ``+edge`` when extrapolated by the
        roofline from the table's edge) or ``roofline``; ``host_overhead`` included."""
        out = {op: v[1] for op, v in self._explain(batch, stage).items()}
        out["host_overhead"] = ROOFLINE
        return out

    def describe(self) -> dict:
        """Which database, versions and kernels priced what, and how (for summary.json)."""
        return {
            **deployment_fields(self),
            "database": "AIConfigurator kernel database (aiconfigurator-core, Apache-2.0)",
            "package_version": db.package_version(),
            "system": self.gpu.kernel_db,
            "framework": self.framework,
            "version": self.version,
            "tables": {k: r.describe() for k, r in self.refs.items()},
            "cuda_graphs_for_decode_all_reduce": self.cuda_graphs,
            "mapping": {
                "gemm": "qkv/o/gate_up/down: m = tokens; lm_head: m = sampled rows; bilinear in n,k between "
                        "measured shapes; exact at measured m, linear between",
                "attn_prefill": "each chunk as the full prefill with equal causal query-key pairs; chunks summed, "
                                "one call's fixed cost once",
                "attn_decode": "generation table at the mean keys per request (step = keys - 1); KV heads beyond "
                               "the table's folded into the batch",
                "tp_all_reduce": "custom all-reduce table: CUDA-graph variant for decode-only iterations, eager "
                                 "otherwise",
                "outside": "roofline scaled to agree with the table at its edge (+edge)",
                "roofline": "norms, rotary, activation, residual adds, embedding, sampling, pp_send_recv, host",
            },
            "notes": self.attention_notes,
            "distinct_prices_by_source": dict(sorted(self.source_counts.items())),
            "roofline": self.rl.describe(),
        }


def for_simulation(config: Any, kernel_db: str | None) -> KernelCostModel:
    """The kernel-database cost model of ``config`` (a SimConfig)."""
    model = config.model_spec()
    kw = config.roofline_kwargs(model)
    return KernelCostModel(model, config.gpu, tp=kw.pop("tp"), pp=kw.pop("pp"), kernel_db=kernel_db, **kw)
