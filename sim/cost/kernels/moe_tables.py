"""The kernels model's MoE tables: the routed experts' time (the ``moe`` table) and expert-parallel dispatch and
combine (the ``moe_a2a`` table, DeepEP), each for this exact expert shape, else the roofline, noted.

A mixin of ``sim.cost.kernels.model.KernelCostModel`` (its model, tables, roofline and notes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.cost.kernels import database as db
from sim.cost.kernels.lookups import MS, Curve

US = 1e-6  # the moe_a2a table's latency unit (its transmit_us column)
LOW_LATENCY_TOKENS = 256  # DeepEP's low-latency kernels take at most this many tokens a rank (the table's range)
_OpTime = tuple[float, str]


class MoETables:
    """``_build_moe``, ``_build_a2a`` and the measured all-to-all times they give (``_a2a_times``)."""

    model: Any
    refs: dict
    rl: Any
    tp: int
    attention_notes: list[str]

    def _build_moe(self) -> None:
        """The routed experts' time against tokens from the ``moe`` table, for this exact expert shape, dtype,
        TP or EP split and routing (balanced; power-law tables for a router skew); else the roofline, noted."""
        self._moe = None
        moe, ref = self.model.moe, self.refs.get("moe")
        if moe is None:
            return
        if ref is None:
            self.attention_notes.append("no moe table for this GPU and framework: moe_experts from the roofline")
            return
        rl = self.rl
        t = db.read_table(ref.path)
        skew = rl.router_skew  # the tables' power-law exponents, if the skew is one of them (within 0.05)
        dist = "balanced" if skew == 0 else next(
            (d for d in ("power_law_1.01", "power_law_1.2") if abs(float(d.split("_")[-1]) - skew) <= 0.05), None)
        if dist is None:
            self.attention_notes.append(f"router skew {skew:g} is none of the moe table's distributions (balanced, "
                                        "power law 1.01 or 1.2): moe_experts from the roofline")
            return
        want = {"hidden_size": self.model.hidden_size,
                "inter_size": moe.expert_intermediate_size, "topk": moe.top_k, "num_experts": moe.num_experts,
                "moe_tp_size": 1 if rl.ep > 1 else self.tp, "moe_ep_size": rl.ep, "distribution": dist}
        dtypes = ("fp8", "fp8_block") if rl.fp8_compute else ("bfloat16",)  # per-tensor or block-scaled FP8
        rows = t[np.logical_and.reduce([t[k] == v for k, v in want.items()]) & t["moe_dtype"].isin(dtypes)]
        if rows.empty:
            self.attention_notes.append(f"{ref.path.name} has no {'/'.join(dtypes)} rows for {want}: moe_experts "
                                        "from the roofline")
            return
        rows, kernel = _fastest_kernel(rows)
        rows = rows.sort_values("num_tokens")
        self._moe = Curve(rows["num_tokens"].to_numpy(dtype=float), rows["latency"].to_numpy(dtype=float) * MS,
                          lambda x: rl._moe_op_costs(max(1, round(x)))["moe_experts"][0],
                          f"kernels:{ref.describe()} [{kernel}, {rows['moe_dtype'].iloc[0]}, {dist}]")

    def _build_a2a(self) -> None:
        """EP dispatch and combine from the ``moe_a2a`` table (DeepEP on one node: its low-latency kernels up to
        256 tokens a rank, its high-throughput ones above), for this EP degree and expert shape; else roofline."""
        self._a2a: dict[str, tuple[Curve, Curve]] = {}
        moe, ref, rl = self.model.moe, self.refs.get("moe_a2a"), self.rl
        if moe is None or rl.ep == 1 or ref is None:
            return
        t = db.read_table(ref.path)
        rows = t[(t["ep_size"] == rl.ep) & (t["node_num"] == 1) & (t["hidden_size"] == self.model.hidden_size)
                 & (t["topk"] == moe.top_k) & (t["num_experts"] == moe.num_experts) & (t["comm_dtype"] == "default")]
        h, d, k = self.model.hidden_size, rl.dtype_bytes, moe.top_k
        curves = {}
        for phase in ("dispatch", "combine"):
            pair = []
            for backend in ("deepep_ll", "deepep_ht"):
                r = rows[(rows["phase"] == phase) & (rows["comm_backend"] == backend)].sort_values("num_tokens")
                if r.empty:
                    break
                pair.append(Curve(r["num_tokens"].to_numpy(dtype=float), r["latency"].to_numpy(dtype=float) * US,
                                  lambda x: rl._all_to_all(x * k * h * d), f"kernels:{ref.describe()} [{backend}]"))
            if len(pair) == 2:
                curves[phase] = tuple(pair)
        if len(curves) == 2:
            self._a2a = curves
        else:
            self.attention_notes.append(f"{ref.path.name} has no EP{rl.ep} rows for this expert shape: EP "
                                        "dispatch/combine from the roofline")

    def _a2a_times(self, T: int) -> dict[str, _OpTime]:
        """Measured dispatch and combine of T tokens (T/ep a rank); the combine adds the roofline's all-gather."""
        per_rank = T / self.rl.ep
        out = {}
        for op, phase in (("ep_dispatch", "dispatch"), ("ep_combine", "combine")):
            low, high = self._a2a[phase]
            out[op] = (low if per_rank <= LOW_LATENCY_TOKENS else high)(per_rank)
        gather = self.rl._all_gather(T * self.model.hidden_size * self.rl.dtype_bytes)
        out["ep_combine"] = (out["ep_combine"][0] + gather, out["ep_combine"][1] + "+roofline-gather")
        return out


def _fastest_kernel(rows: Any) -> tuple[Any, str]:
    """The rows of the kernel with the least total time over the token counts every kernel measured (vLLM's MoE
    tables hold several backends for one shape, some several times slower at small batches)."""
    common = set.intersection(*(set(g["num_tokens"]) for _, g in rows.groupby("kernel_source")))
    totals = {k: g[g["num_tokens"].isin(common)]["latency"].sum() for k, g in rows.groupby("kernel_source")}
    best = min(sorted(totals), key=totals.get)
    return rows[rows["kernel_source"] == best], str(best)
