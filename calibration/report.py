"""Fit report of a profile: how well its tables interpolate (leave-out) and how far the roofline is from it.

Per op and TP: every fifth interior point of the table is held out and predicted from the
rest with the same interpolation the profiled cost model uses; the roofline (the profile
device's catalogue datasheet, or rates fitted to the profile for a CPU or unlisted GPU) is
compared with every measurement. Decode batches with mixed contexts are predicted from the
uniform-context table at their mean context. With ``gpu`` the report adds the per-op factors
a transfer to that GPU would apply (an estimate).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from calibration.grid import GridSpec, mixed_contexts
from sim.catalog.hardware import get_gpu
from sim.catalog.models import ModelSpec
from sim.cost.op_roofline import OpRoofline, profile_device_spec
from sim.cost.profile_format import MIXED, PADDED_BACKENDS, SEQ_AXIS_OPS, TP_INDEPENDENT_OPS, Profile, profile_model
from sim.cost.roofline import RooflineCostModel
from sim.cost.tables import Grid2D, Table1D
from sim.ops import ALL_OPS

COLUMNS = ("op", "tp", "kind", "points", "held_out", "interp_median_pct", "interp_max_pct", "roofline_median_pct",
           "roofline_max_pct")


LEAVE_OUT = "leave-out"  # a table's every fifth interior point predicted from the rest
MIXED_CHECK = "mixed"  # mixed-context decode batches predicted from the uniform table (mean or longest context)


def held_out_1d(n: int) -> list[int]:
    """Indices held out of a sorted n-point table: every fifth interior point (never the first or last)."""
    return list(range(1, n - 1))[4::5]


def _pct(errs: np.ndarray) -> tuple[float, float]:
    if errs.size == 0:
        return float("nan"), float("nan")
    a = np.abs(errs) * 100
    return float(np.median(a)), float(np.max(a))


def _rooflines(profile: Profile, model: ModelSpec, gpu: str | None = None) -> dict[int, OpRoofline]:
    spec, kw = profile_device_spec(profile) if gpu is None else (get_gpu(gpu), {})
    db = int(profile.meta["dtype_bytes"])
    return {tp: OpRoofline(RooflineCostModel(model, spec, tp=tp, dtype_bytes=db, **kw)) for tp in profile.tps}


def _x(op: str, rows: pd.DataFrame) -> np.ndarray:
    return rows["seqs" if op in SEQ_AXIS_OPS else "tokens"].to_numpy()


def _ref_times(ref: OpRoofline, rows: pd.DataFrame) -> np.ndarray:
    return np.array([ref.time(r.op, int(r.tokens), int(r.seqs), int(r.context), r.variant)
                     for r in rows.itertuples()])


def _report_1d(op: str, rows: pd.DataFrame, ref: OpRoofline) -> dict[str, Any]:
    rows = rows.sort_values("seqs" if op in SEQ_AXIS_OPS else "tokens")
    x, y = _x(op, rows).astype(float), rows["median_s"].to_numpy()
    held = held_out_1d(len(x))
    keep = np.setdiff1d(np.arange(len(x)), held)
    tab = Table1D(x[keep], y[keep])
    interp = _pct(tab.evaluate(x[held]) / y[held] - 1) if held else (float("nan"), float("nan"))
    roof = _pct(_ref_times(ref, rows) / y - 1)
    return {"points": len(x), "held_out": len(held), "interp": interp, "roofline": roof}


def _uv(op: str, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    u = rows["tokens" if op == "attn_prefill" else "seqs"].to_numpy().astype(float)
    return u, rows["context"].to_numpy().astype(float)


def held_out_2d(u: np.ndarray, v: np.ndarray) -> list[int]:
    """Every fifth interior point in (u, v) order; interior: not in the first or last row, not a row's end."""
    order = np.lexsort((v, u))
    ulo, uhi = u.min(), u.max()
    interior = [int(i) for i in order
                if ulo < u[i] < uhi and v[u == u[i]].min() < v[i] < v[u == u[i]].max()]
    return interior[4::5]


def _grid(op: str, u: np.ndarray, v: np.ndarray, t: np.ndarray, ref: OpRoofline) -> Grid2D:
    return Grid2D(u, v, t, ref.prefill_shape if op == "attn_prefill" else ref.decode_shape)


def _report_2d(op: str, rows: pd.DataFrame, ref: OpRoofline) -> dict[str, Any]:
    u, v = _uv(op, rows)
    y = rows["median_s"].to_numpy()
    held = held_out_2d(u, v)
    keep = np.setdiff1d(np.arange(len(u)), held)
    grid = _grid(op, u[keep], v[keep], y[keep], ref)
    pred = np.array([grid(u[i], v[i]) for i in held])
    interp = _pct(pred / y[held] - 1) if held else (float("nan"), float("nan"))
    return {"points": len(u), "held_out": len(held), "interp": interp, "roofline": _pct(_ref_times(ref, rows) / y - 1)}


def _report_mixed(uniform: pd.DataFrame, mixed: pd.DataFrame, ref: OpRoofline, profile: Profile,
                  model: ModelSpec) -> dict[str, Any]:
    """The uniform table's prediction for mixed batches, as the cost model makes it (mean, or max when padded)."""
    u, v = _uv("attn_decode", uniform)
    grid = _grid("attn_decode", u, v, uniform["median_s"].to_numpy(), ref)
    y = mixed["median_s"].to_numpy()
    padded = profile.meta.get("attention_backend") in PADDED_BACKENDS
    spec = GridSpec.from_dict(profile.meta["grid"])

    def ctx(b: int, mean: int) -> float:
        return float(max(mixed_contexts(b, model.max_context, spec.seed, spec.max_kv_tokens))) if padded else mean

    pred = np.array([grid(float(b), ctx(int(b), int(c))) for b, c in zip(mixed["seqs"], mixed["context"])])
    return {"points": len(y), "held_out": len(y), "interp": _pct(pred / y - 1),
            "roofline": _pct(_ref_times(ref, mixed) / y - 1)}


def fit_report(profile: Profile, model: ModelSpec | None = None) -> pd.DataFrame:
    """One row per (op, tp, kind): points, held-out points, |error| % of interpolation and roofline (median, max).

    ``kind`` is ``leave-out`` for each table, and ``mixed`` for the mixed-context decode check (its
    "interpolation" error is the uniform table's, read as the cost model reads it).
    """
    model = model or profile_model(profile)
    refs = _rooflines(profile, model)
    out = []
    t = profile.table
    for op in ALL_OPS:
        for tp in ([0] if op in TP_INDEPENDENT_OPS else profile.tps):
            rows = t[(t["op"] == op) & (t["tp"] == tp)]
            if rows.empty:
                continue
            ref = refs[max(tp, 1) if tp else profile.tps[0]]
            uniform = rows[rows["variant"] == ""]
            res = (_report_2d(op, uniform, ref) if op in ("attn_prefill", "attn_decode")
                   else _report_1d(op, uniform, ref))
            out.append((op, tp, LEAVE_OUT, res))
            mixed = rows[rows["variant"] == MIXED]
            if op == "attn_decode" and not mixed.empty:
                out.append((op, tp, MIXED_CHECK, _report_mixed(uniform, mixed, ref, profile, model)))
    return pd.DataFrame([(op, tp, kind, r["points"], r["held_out"], *r["interp"], *r["roofline"])
                         for op, tp, kind, r in out], columns=list(COLUMNS))


def transfer_factors(profile: Profile, gpu: str, model: ModelSpec | None = None) -> pd.DataFrame:
    """Per (op, tp): median and range of the factor a transfer to ``gpu`` applies over the op's measured shapes."""
    model = model or profile_model(profile)
    src, dst = _rooflines(profile, model), _rooflines(profile, model, gpu)
    rows = []
    for (op, tp), g in profile.table.groupby(["op", "tp"], sort=False):
        if op == "host_overhead":
            continue
        k = max(int(tp), 1) if tp else profile.tps[0]
        f = _ref_times(dst[k], g) / _ref_times(src[k], g)
        rows.append((op, int(tp), float(np.median(f)), float(f.min()), float(f.max())))
    return pd.DataFrame(rows, columns=["op", "tp", "median_factor", "min_factor", "max_factor"])


def _fmt(x: float) -> str:
    return "-" if not np.isfinite(x) else f"{x:.1f}%"


def format_report(profile: Profile, df: pd.DataFrame, transfer_to: str | None = None,
                  factors: pd.DataFrame | None = None) -> str:
    """Markdown: provenance, the per-op table, communication, skipped points and (optionally) transfer factors."""
    m = profile.meta
    dev = m["device"]
    spec, kw = profile_device_spec(profile)
    roof = (f"the {spec.name} datasheet roofline with default efficiencies" if not kw else
            f"a roofline with rates fitted to this profile ({m['device_rates']['flops'] / 1e9:.1f} GFLOP/s, "
            f"{m['device_rates']['mem_bandwidth'] / 1e9:.1f} GB/s, "
            f"{m['device_rates']['launch_s'] * 1e6:.1f} us per call)")
    lines = [
        f"# Calibration report: {m['model'].get('name')} on {dev.get('name')}",
        "",
        f"- profile: `{profile.path}` ({m.get('status')}), measured {m.get('date')}, commit {m.get('git_commit')}",
        f"- device: {dev.get('type')} {dev.get('name')}" + (f" (catalogue GPU {dev['gpu']})" if dev.get("gpu") else "")
        + f"; torch {m.get('torch')}, dtype {m.get('dtype')}, attention backend {m.get('attention_backend')}",
        f"- TP shards: {', '.join(map(str, m['tp']))}; grid {m['grid'].get('name')}; "
        f"{len(profile.table)} measurements in {m.get('wall_time_s')} s",
        "",
        "Interpolation error: every fifth interior point of each table is held out and predicted from the rest "
        "(1-D: monotone piecewise-linear; attention: linear along the context, roofline-shaped across chunk or "
        "batch sizes). "
        f"Roofline error: {roof}, against every measurement. Errors are |predicted / measured - 1|.",
        "",
        "| op | tp | points | held out | interp. median | interp. max | roofline median | roofline max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    table = df[df["kind"] == LEAVE_OUT]
    for r in table.itertuples(index=False):
        lines.append(f"| {r.op} | {r.tp if r.tp else 'all'} | {r.points} | {r.held_out} | "
                     f"{_fmt(r.interp_median_pct)} | {_fmt(r.interp_max_pct)} | {_fmt(r.roofline_median_pct)} | "
                     f"{_fmt(r.roofline_max_pct)} |")
    scored = table[table["held_out"] > 0]
    if len(scored):
        w = scored.loc[scored["interp_max_pct"].idxmax()]
        lines += ["", f"Held-out error: median over ops {scored['interp_median_pct'].median():.1f}%, largest per-op "
                      f"median {scored['interp_median_pct'].max():.1f}%, worst single point "
                      f"{w.interp_max_pct:.1f}% ({w.op}, TP {w.tp if w.tp else 'all'})."]
    mixed = df[df["kind"] == MIXED_CHECK]
    if len(mixed):
        how = ("their longest context (the padded SDPA backend pays for it)"
               if m.get("attention_backend") in PADDED_BACKENDS else "their mean context per request")
        lines += ["", f"Decode batches with mixed contexts, priced from the uniform table at {how}:", "",
                  "| tp | batches | median error | max error | roofline median |", "|---:|---:|---:|---:|---:|"]
        for r in mixed.itertuples(index=False):
            lines.append(f"| {r.tp} | {r.points} | {_fmt(r.interp_median_pct)} | {_fmt(r.interp_max_pct)} | "
                         f"{_fmt(r.roofline_median_pct)} |")
    lines += ["", f"Communication: {m['communication'].get('note', '')}"]
    if m.get("skipped"):
        lines += ["", f"Skipped (did not fit in memory; the cost model extrapolates there): "
                      f"{len(m['skipped'])} point(s)"]
    if transfer_to is not None and factors is not None:
        lines += ["", f"## Transfer to {transfer_to}: an ESTIMATE", "",
                  f"Used with `--gpu {transfer_to}`, each op's time is multiplied by the ratio of the {transfer_to} "
                  f"roofline to the profiled device's at that shape (compute-bound: FLOP/s, memory-bound: "
                  f"bandwidth). These are not measurements.", "",
                  "| op | tp | median factor | min | max |", "|---|---:|---:|---:|---:|"]
        for r in factors.itertuples(index=False):
            lines.append(f"| {r.op} | {r.tp if r.tp else 'all'} | {r.median_factor:.3g} | {r.min_factor:.3g} | "
                         f"{r.max_factor:.3g} |")
    return "\n".join(lines) + "\n"
