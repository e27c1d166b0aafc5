"""Profiled cost model: per-op interpolation in a calibration profile's measured tables, roofline outside them.

Token-count ops (projections, norms, activation, residuals, embedding) and the per-sequence
ops (final norm, lm head, sampling, host overhead) use monotone piecewise-linear tables;
attention uses 2-D tables (prefill: chunk x cached context; decode: batch size x context per
request), blended across rows with the roofline's shape (``sim.cost.tables.Grid2D``). Outside a
table an op is priced by the roofline scaled to agree with the table at its edge.
Communication comes from the profile when it was measured there (several GPUs), else from the
roofline's interconnect model. Every op's price names its source (``breakdown_sources``).

Mixtures of experts: a MoE layer is priced with the MoE ops (router, routed experts, shared experts;
the expert-parallel all-to-alls from the roofline, zero without EP) in place of the dense MLP's,
dense layers with the dense MLP (``model.stage_layer_kinds``, ``sim.cost.interface.op_layers``).

Framework overhead (profile format 2): ops timed one by one in a hot loop run faster than inside
the engine's forward pass. The profile's whole-unit rows (``layer_forward``, ``forward``: real
``ModelRunner.execute`` iterations) measure the difference; two fitted terms of
``sim.ops.OVERHEAD_OPS``, ``layer_overhead`` per decoder layer and ``forward_overhead`` per forward
pass on the last stage, add it to the op sum (``sim.cost.framework_overhead``: features, fit, and
why a residual rather than a replacement). Overhead is framework time: never scaled to another
GPU. A version-1 profile has no unit rows: its overhead terms are zero.

Transfer: with ``gpu`` different from the profile's device, each op is scaled by the ratio of
the two devices' rooflines at that op's shape (so compute-bound shapes scale with FLOP/s and
memory-bound ones with bandwidth); such predictions are estimates and ``describe()`` says so.
Host overhead is CPU time and is never scaled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.batch import Batch
from sim.catalog.hardware import GPUSpec, get_gpu, register_device
from sim.catalog.models import ModelSpec, get_model
from sim.cost.framework_overhead import fit_overhead, forward_features, layer_features, no_overhead
from sim.cost.graph_decode import SOURCE as GRAPH_SOURCE
from sim.cost.graph_decode import GraphDecodeTable
from sim.cost.host_prefill import HostPrefill
from sim.cost.interface import CostModel, StageCost, op_layers, stage_totals
from sim.cost.op_roofline import OpRoofline, mean_layer_time, prefill_pairs, profile_device_spec
from sim.cost.profile_format import PADDED_BACKENDS, SEQ_AXIS_OPS, Profile, ProfileError, model_ops, read_profile
from sim.cost.roofline import RooflineCostModel
from sim.cost.tables import Grid2D, Table1D
from sim.cost.wake import WakeTable
from sim.ops import COMMUNICATION_OPS, FIRST_STAGE_OPS, LAST_STAGE_OPS, LAYER_OPS, MOE_OPS, OVERHEAD_OPS, STAGE_OPS

if TYPE_CHECKING:
    from sim.serving.simulator import SimConfig

_CACHE_LIMIT = 200_000
OUTSIDE_LAYER_OPS: tuple[str, ...] = FIRST_STAGE_OPS + LAST_STAGE_OPS + STAGE_OPS
#: 1-D tables a profile may hold (a model's own: ``model_ops(model, TABLE_OPS)``)
TABLE_OPS: tuple[str, ...] = tuple(op for op in LAYER_OPS + MOE_OPS + OUTSIDE_LAYER_OPS + ("host_overhead",)
                                   if op not in ("attn_prefill", "attn_decode"))

PROFILE = "profile"            # interpolated in the measured table
EDGE = "profile-edge"          # roofline scaled to agree with the table at its nearest edge
ROOFLINE = "roofline"          # not measured (communication on a single device)
TRANSFER = "+transfer"         # suffix: scaled by the roofline ratio of another GPU (an estimate)
FIT = "profile-fit"            # overhead terms: fitted to the profile's whole-unit timings


class ProfiledCostModel(CostModel):
    """Prices batches from a calibration profile; see the module docstring."""

    name = "profiled"

    def __init__(self, profile: Profile | str | Path, model: ModelSpec | str, gpu: GPUSpec | str | None = None,
                 tp: int = 1, pp: int = 1, **roofline_kwargs: Any) -> None:
        """``gpu``: price for this catalogue GPU (None: the profile's device); ``roofline_kwargs`` tune the fallback."""
        self.profile = profile if isinstance(profile, Profile) else read_profile(profile)
        self.model = m = get_model(model)
        self.profile.check_usable(m, tp)
        self.tp, self.pp = tp, pp
        src_spec, src_kw = profile_device_spec(self.profile)
        dtype_bytes = int(self.profile.meta["dtype_bytes"])
        src_rl = RooflineCostModel(m, src_spec, tp=tp, pp=pp, dtype_bytes=dtype_bytes, **{**roofline_kwargs, **src_kw})
        self._src = OpRoofline(src_rl)
        target = get_gpu(gpu) if gpu is not None else src_spec
        self.gpu = target
        self.transfer = target.name != src_spec.name
        self._ref = (OpRoofline(RooflineCostModel(m, target, tp=tp, pp=pp, dtype_bytes=dtype_bytes, **roofline_kwargs))
                     if self.transfer else self._src)
        self.layers, self.moe_layers, self.num_stages = src_rl.layers, src_rl.moe_layers, pp
        self.device_ops = LAYER_OPS + (MOE_OPS if m.is_moe else ()) + OUTSIDE_LAYER_OPS  # as the roofline names them
        self._suffix = TRANSFER if self.transfer else ""
        self._comm_measured = {op: self.profile.comm_source(op, tp) == "measured" for op in COMMUNICATION_OPS}
        self._tables: dict[str, Table1D] = {}
        self._edge: dict[str, tuple[float, float, float, float]] = {}  # op -> (lo, scale at lo, hi, scale at hi)
        for op in model_ops(m, TABLE_OPS):  # the ops this model runs (check_usable: every one measured)
            if op in COMMUNICATION_OPS and not self._comm_measured[op]:
                continue
            rows = self.profile.rows(op, tp)
            axis = "seqs" if op in SEQ_AXIS_OPS else "tokens"
            tab = Table1D(rows[axis].to_numpy(), rows["median_s"].to_numpy())
            self._tables[op] = tab
            lo, hi = int(tab.lo), int(tab.hi)
            self._edge[op] = (tab.lo, tab(tab.lo) / self._src_time(op, lo),
                              tab.hi, tab(tab.hi) / self._src_time(op, hi))
        pre = self.profile.rows("attn_prefill", tp)
        self._prefill = Grid2D(pre["tokens"].to_numpy(), pre["context"].to_numpy(), pre["median_s"].to_numpy(),
                               self._src.prefill_shape)
        self._prefill_floor = self._prefill.min_time
        # the reference SDPA backend pads every sequence of a part to the longest: price it that way
        self.padded = self.profile.meta.get("attention_backend") in PADDED_BACKENDS
        dec = self.profile.rows("attn_decode", tp)
        self._decode = Grid2D(dec["seqs"].to_numpy(), dec["context"].to_numpy(), dec["median_s"].to_numpy(),
                              self._src.decode_shape)
        self._token_cache: dict[tuple[int, int, int], tuple[float, float, float]] = {}
        self._prefill_cache: dict[tuple[int, int], tuple[float, bool]] = {}
        self._host_cache: dict[int, float] = {}
        self.layer_coef, self.forward_coef, self.overhead_fit = self._fit_overhead()
        self._wake = WakeTable(self.profile.meta["wake"]) if self.profile.meta.get("wake") else None
        self.host_prefill = HostPrefill.from_meta(self.profile.meta.get("host_prefill"))
        self._graphs = GraphDecodeTable.from_profile(self.profile, self._src, tp=tp, pp=pp, transfer=self.transfer)

    # ---- framework overhead ---------------------------------------------------------------------

    def _layer_features(self, batch: Batch) -> list[float]:
        return layer_features(batch, self.padded, self._decode_args(batch))

    def _layer_ops(self, batch: Batch) -> float:
        """The op tables' seconds for one decoder layer of ``batch`` (no overhead)."""
        T = batch.num_prefill_tokens + batch.num_decode_tokens
        t = mean_layer_time(self.model, self.token_op_times(T, len(batch.items)))  # unit rows: mean over layers
        if batch.prefill_items:
            t += self.attn_prefill(batch)[0]
        if batch.num_decode_tokens:
            t += self.attn_decode(*self._decode_args(batch))[0]
        return t

    def _outside_ops(self, batch: Batch, sampled: int) -> float:
        """The op tables' seconds of a forward pass outside its layers (embedding, final norm, lm head, sampling)."""
        ops = self.token_op_times(batch.num_prefill_tokens + batch.num_decode_tokens, sampled)
        return sum(ops[op][0] for op in FIRST_STAGE_OPS + LAST_STAGE_OPS)

    def _fit_overhead(self) -> tuple[list[float], list[float], dict[str, Any]]:
        """Fit ``layer_overhead`` and ``forward_overhead`` to the profile's unit rows (zeros without any)."""
        if self.transfer:
            return no_overhead("framework overhead of the profiled device does not transfer to another GPU")
        return fit_overhead(self.profile.table, self.model.num_layers, self._layer_features, self._layer_ops,
                            self._outside_ops)

    def layer_overhead(self, batch: Batch) -> float:
        """Seconds of framework overhead per decoder layer of ``batch`` (beyond its ops)."""
        return sum(c * x for c, x in zip(self.layer_coef, self._layer_features(batch)) if c)

    def forward_overhead(self, batch: Batch) -> float:
        """Seconds of framework overhead per forward pass of ``batch`` outside the layers (last stage)."""
        return sum(c * x for c, x in zip(self.forward_coef, forward_features(batch)) if c)

    def _overheads(self, batch: Batch, stage: int) -> dict[str, float]:
        """Stage seconds of each OVERHEAD_OPS term."""
        return {"layer_overhead": self.layers[stage] * self.layer_overhead(batch),
                "forward_overhead": self.forward_overhead(batch) if stage == self.pp - 1 else 0.0}

    # ---- 1-D ops --------------------------------------------------------------------------------

    def _src_time(self, op: str, x: int) -> float:
        """Source-roofline seconds of ``op`` at its table coordinate ``x`` (tokens or sequences)."""
        if op == "pp_send_recv":
            return self._src.pp_send_recv(x)
        return self._src.token_ops(x, x)[op][0]

    def _table_op(self, op: str, x: int, src_t: float, ref_t: float) -> tuple[float, str]:
        """Seconds and source of table op ``op`` at coordinate ``x``; ``src_t``/``ref_t`` its rooflines there."""
        tab = self._tables[op]
        if tab.lo <= x <= tab.hi:
            t = tab(x)
            if self.transfer:
                t *= ref_t / src_t if src_t > 0 else 1.0
            return t, PROFILE + self._suffix
        lo, s_lo, _hi, s_hi = self._edge[op]
        return ref_t * (s_lo if x < lo else s_hi), EDGE + self._suffix

    def token_op_times(self, num_tokens: int, num_seqs: int) -> dict[str, tuple[float, str]]:
        """(seconds, source) of one call of every device op except attention (layer ops: per layer)."""
        T, N = num_tokens, num_seqs
        src_T = self._src.token_ops(T, N)
        src_N = self._src.token_ops(N, N) if N != T else src_T
        if self.transfer:
            ref_T = self._ref.token_ops(T, N)
            ref_N = self._ref.token_ops(N, N) if N != T else ref_T
        else:
            ref_T, ref_N = src_T, src_N
        out: dict[str, tuple[float, str]] = {}
        for op in self.device_ops:
            if op in ("attn_prefill", "attn_decode"):
                continue
            if op == "pp_send_recv":
                if self.pp == 1:
                    out[op] = (0.0, ROOFLINE)
                elif self._comm_measured[op]:
                    out[op] = self._table_op(op, T, self._src.pp_send_recv(T), self._ref.pp_send_recv(T))
                else:
                    out[op] = (self._ref.pp_send_recv(T), ROOFLINE)
                continue
            if op not in self._tables:  # communication not measured; an op this model does not run (zero layers)
                out[op] = (ref_T[op][0], ROOFLINE)
                continue
            if op in SEQ_AXIS_OPS:
                out[op] = self._table_op(op, N, src_N[op][0], ref_N[op][0])
            else:
                out[op] = self._table_op(op, T, src_T[op][0], ref_T[op][0])
        if self.tp > 1:  # the engine's embedding / lm head exclude TP communication: add it back
            emb, lm = self._ref.comm_extra(T, N)
            if self._comm_measured["tp_all_reduce"]:
                emb = self._table_op("tp_all_reduce", T, src_T["tp_all_reduce"][0], ref_T["tp_all_reduce"][0])[0]
            t, s = out["embedding"]
            out["embedding"] = (t + emb, s + "+comm")
            t, s = out["lm_head"]
            out["lm_head"] = (t + lm, s + "+" + ROOFLINE + "-comm")
        return out

    def _stage_token_times(self, num_tokens: int, num_items: int, stage: int) -> dict[str, tuple[float, str]]:
        """Stage totals of the token-dependent ops (layer ops times the stage's layers); zero where one does not run."""
        ops = self.token_op_times(num_tokens, num_items)
        return stage_totals(ops, self.layers[stage], stage == 0, stage == self.pp - 1, self.moe_layers[stage])

    def _token_part(self, num_tokens: int, num_items: int, stage: int) -> tuple[float, float, float]:
        key = (num_tokens, num_items, stage)
        hit = self._token_cache.get(key)
        if hit is not None:
            return hit
        t = sum(v[0] for v in self._stage_token_times(num_tokens, num_items, stage).values())
        # work done (for MFU): the target roofline's useful FLOPs and bytes, as RooflineCostModel reports them
        costs = self._ref.rl.token_op_costs(num_tokens, num_items)
        L, moe = self.layers[stage], self.moe_layers[stage]
        first, last = stage == 0, stage == self.pp - 1
        f = b = 0.0
        for op in LAYER_OPS + MOE_OPS:
            if op in costs:
                f += op_layers(op, L, moe) * costs[op][1]
                b += op_layers(op, L, moe) * costs[op][2]
        for op in (FIRST_STAGE_OPS if first else ()) + (LAST_STAGE_OPS if last else ()):
            f += costs[op][1]
            b += costs[op][2]
        res = (t, f, b)
        if len(self._token_cache) >= _CACHE_LIMIT:
            self._token_cache.clear()
        self._token_cache[key] = res
        return res

    # ---- attention ------------------------------------------------------------------------------

    def _prefill_item(self, chunk: int, cached: int) -> tuple[float, bool]:
        """(measured-table seconds, inside the grid) of one chunk on the profiled device."""
        key = (chunk, cached)
        hit = self._prefill_cache.get(key)
        if hit is None:
            g = self._prefill
            hit = (g(chunk, cached), g.contains(chunk, cached))
            if len(self._prefill_cache) >= _CACHE_LIMIT:
                self._prefill_cache.clear()
            self._prefill_cache[key] = hit
        return hit

    def attn_prefill(self, batch: Batch) -> tuple[float, float, float, str]:
        """One layer's prefill attention: (seconds, flops, bytes, source).

        The engine attends all chunks in one call. For a varlen backend the chunks' table times
        are summed, each less the table's smallest time (a call's fixed cost, counted once); a
        padded backend (SDPA) pays for every chunk as if it were the longest chunk over the
        longest context. A single chunk gets exactly its table time.
        """
        new = cached = pairs = 0
        floor = self._prefill_floor
        items = batch.prefill_items
        if self.padded and len(items) > 1:
            c_max = max(it.num_new_tokens for it in items)
            k_max = max(it.num_new_tokens + it.num_cached_tokens for it in items)
            ti, inside = self._prefill_item(c_max, k_max - c_max)
            t = floor + len(items) * (ti - floor if ti > floor else 0.0)
            for it in items:
                c, p = it.num_new_tokens, it.num_cached_tokens
                new += c
                cached += p
                pairs += prefill_pairs(c, p)
        else:
            t = 0.0
            inside = True
            for it in items:
                c, p = it.num_new_tokens, it.num_cached_tokens
                ti, ins = self._prefill_item(c, p)
                t += ti - floor if ti > floor else 0.0
                inside = inside and ins
                new += c
                cached += p
                pairs += prefill_pairs(c, p)
            t += floor
        rt, f, b = self._ref.rl.attn_prefill_cost(new, cached, pairs)
        if self.transfer:
            t *= rt / self._src.rl.attn_prefill_cost(new, cached, pairs)[0]
        return t, f, b, (PROFILE if inside else EDGE) + self._suffix

    def attn_decode(self, num_decodes: int, total_context: int, max_context: int | None = None
                    ) -> tuple[float, float, float, str]:
        """One layer's decode attention over ``total_context`` keys: (seconds, flops, bytes, source).

        Mixed contexts are priced at their mean context per request (the table's coordinate),
        or at ``max_context`` for a padded backend when it is given.
        """
        if num_decodes <= 0:
            return 0.0, 0.0, 0.0, PROFILE + self._suffix
        L = max_context if self.padded and max_context else total_context / num_decodes
        t = self._decode(num_decodes, L)
        rt, f, b = self._ref.rl.attn_decode_cost(num_decodes, total_context)
        if self.transfer:
            t *= rt / self._src.rl.attn_decode_cost(num_decodes, total_context)[0]
        src = PROFILE if self._decode.contains(num_decodes, L) else EDGE
        return t, f, b, src + self._suffix

    def _decode_args(self, batch: Batch) -> tuple[int, int, int | None]:
        """(decodes, their total context, their longest context when the backend pads, else None)."""
        nd = batch.num_decode_tokens
        if not self.padded or nd <= 1:
            return nd, batch.decode_context, None
        longest = max([c for r, n, c in batch.items  # Batch's decode test, inlined
                       if n == 1 and r.num_generated and c == r.prompt_tokens + r.num_generated - 1]) + 1
        return nd, batch.decode_context, longest

    # ---- CostModel interface --------------------------------------------------------------------

    def stage_cost(self, batch: Batch, stage: int) -> StageCost:
        """Device time (communication included), FLOPs and bytes of ``batch`` on ``stage``; host excluded."""
        num_tokens = batch.num_prefill_tokens + batch.num_decode_tokens
        if num_tokens == 0:
            return StageCost(0.0, 0.0, 0.0)
        t, f, b = self._token_part(num_tokens, len(batch.items), stage)
        L = self.layers[stage]
        if batch.prefill_items:
            at, af, ab, _ = self.attn_prefill(batch)
            t += L * at
            f += L * af
            b += L * ab
        if batch.num_decode_tokens:
            at, af, ab, _ = self.attn_decode(*self._decode_args(batch))
            t += L * at
            f += L * af
            b += L * ab
        t += sum(self._overheads(batch, stage).values())
        graph = self._graphs.time(batch) if self._graphs is not None else None
        return StageCost(t if graph is None else graph, f, b)

    def wake_time(self, idle_s: float) -> tuple[float, float, float]:
        """Measured (late wake-up, extra host, extra device) seconds of the first iteration after ``idle_s`` idle
        (profile ``wake`` table, monotone in the idle time, held beyond its longest gap); effects of the
        profiled machine: never transferred to another GPU."""
        if self._wake is None or idle_s <= 0 or self.transfer:
            return 0.0, 0.0, 0.0
        return self._wake(idle_s)

    def host_time(self, batch: Batch) -> float:
        """Measured per-iteration CPU time at this batch's size: the engine's host part (scheduling, input
        preparation, output processing, ``on_batch_done``; a version-1 profile: the first two only), plus
        the measured prefill extras (profile ``host_prefill``): per prompt token, per iteration with a prefill
        part, per prefill item."""
        n = batch.size
        hit = self._host_cache.get(n)
        if hit is None:
            rt = self._src.token_ops(n, n)["host_overhead"][0]
            hit = self._table_op("host_overhead", n, rt, rt)[0]  # CPU time: never scaled to another GPU
            self._host_cache[n] = hit
        return hit + self.host_prefill.time(batch)

    def _explain(self, batch: Batch, stage: int) -> dict[str, tuple[float, str]]:
        num_tokens = batch.num_prefill_tokens + batch.num_decode_tokens
        if num_tokens == 0:
            return {op: (0.0, PROFILE) for op in self.device_ops + OVERHEAD_OPS}
        ops = self._stage_token_times(num_tokens, len(batch.items), stage)
        L = self.layers[stage]
        if batch.prefill_items:
            t, _, _, s = self.attn_prefill(batch)
            ops["attn_prefill"] = (L * t, s)
        else:
            ops["attn_prefill"] = (0.0, PROFILE)
        t, _, _, s = self.attn_decode(*self._decode_args(batch))
        ops["attn_decode"] = (L * t, s)
        for op, t in self._overheads(batch, stage).items():
            ops[op] = (t, FIT)
        graph = self._graphs.time(batch) if self._graphs is not None else None
        if graph is not None:  # a graph replay: the ops' shares of the measured whole forward pass
            k = graph / (sum(v[0] for v in ops.values()) or 1.0)
            ops = {op: (v[0] * k, GRAPH_SOURCE) for op, v in ops.items()}
        return {op: ops[op] for op in self.device_ops + OVERHEAD_OPS}

    def breakdown(self, batch: Batch, stage: int) -> dict[str, float]:
        """Seconds per device op of ``sim.ops`` and per overhead term (``OVERHEAD_OPS``; zero where one does not
        run); sums to ``stage_cost().time``."""
        return {op: v[0] for op, v in self._explain(batch, stage).items()}

    def breakdown_sources(self, batch: Batch, stage: int) -> dict[str, str]:
        """Where each op's price comes from: ``profile`` (interpolated), ``profile-edge`` (roofline scaled at
        the table's edge), ``roofline`` (not measured), ``+transfer`` (scaled to another GPU: an estimate),
        ``profile-fit`` (overhead terms fitted to whole-unit timings); ``host_overhead`` included. A profile
        imported from another tool's measurements adds who measured each op, e.g. ``profile (vidur:emb)``."""
        out = {op: v[1] for op, v in self._explain(batch, stage).items()}
        n = batch.size
        out["host_overhead"] = PROFILE if self._tables["host_overhead"].contains(n) else EDGE
        origin = self.profile.meta.get("op_sources") or {}
        return {op: f"{src} ({origin[op]})" if op in origin and src.startswith("profile") else src
                for op, src in out.items()}

    def describe(self) -> dict:
        """Profile provenance, target GPU and whether the prices are a transfer estimate (for summary.json)."""
        meta = self.profile.meta
        d: dict[str, Any] = {
            "name": self.name, "profile": str(self.profile.path), "profile_device": self.profile.device_name,
            "profile_gpu": self.profile.gpu, "profile_date": meta.get("date"), "profile_commit": meta.get("git_commit"),
            "dtype": meta.get("dtype"), "model": self.model.name, "gpu": self.gpu.name, "tp": self.tp, "pp": self.pp,
            "layers_per_stage": list(self.layers),
            **({"moe_layers_per_stage": self.moe_layers} if self.model.is_moe else {}),
            "decode_path": meta.get("decode_path", "eager"), "decode_graph_table": self._graphs is not None,
            "communication": {op: ("profile" if v else "roofline") for op, v in self._comm_measured.items()},
            "attention_backend": meta.get("attention_backend"),
            "padded_attention": self.padded,
            "fallback": "roofline scaled to agree with the measured table at its edge",
            "framework_overhead": self.overhead_fit,
            "wake": meta.get("wake"), "host_prefill": dataclasses.asdict(self.host_prefill),
            "measured_by": (meta.get("source") or {}).get("measured_by"), "op_sources": meta.get("op_sources"),
            "estimate": self.transfer, "transfer": None,
        }
        if self.transfer:
            d["transfer"] = {
                "from": self._src.rl.gpu.name, "to": self.gpu.name, "estimate": True,
                "method": "each op scaled by the ratio of the two devices' rooflines at its shape "
                          "(compute-bound: FLOP/s; memory-bound: bandwidth); host overhead not scaled",
            }
        return d

    def transfer_note(self) -> str | None:
        """One line for users when prices were transferred from another device, else None."""
        return None if not self.transfer else (
            f"note: profile measured on {self.profile.device_name}; times for {self.gpu.name} are an estimate "
            f"(each op scaled by the roofline ratio of the two devices)")


def for_simulation(profile: str | Path, config: SimConfig, gpu: str | None) -> tuple[SimConfig, ProfiledCostModel]:
    """The profiled cost model for ``config``; with no explicit ``gpu`` a catalogue-GPU profile sets ``config.gpu``."""
    prof = read_profile(profile)
    if config.ep != 1 or config.router_skew:
        raise ProfileError(f"profile {prof.path}: a profile times the engine's own MoE layer (experts split by TP, no "
                           f"expert parallelism; uniform routing): price --ep or --router-skew with the roofline")
    if gpu is None:  # the profile's own device: a catalogue GPU, or the measured device itself (never an A100)
        config = dataclasses.replace(config, gpu=prof.gpu or register_device(profile_device_spec(prof)[0]))
    model = get_model(config.model)
    return config, ProfiledCostModel(prof, model, gpu=gpu, tp=config.tp, pp=config.pp)
