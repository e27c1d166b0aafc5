"""Fitting the embedded roofline's per-GPU parameters to published measurements (run once; stored in gpus.toml).

Two parameter groups, each from its own measurements:

- **GEMMs**, from AIConfigurator's measured bf16 GEMM table of the GPU (the ``kernels`` extra): time =
  max(FLOPs of the tile-padded rows / (peak x e(m)), bytes / (bandwidth x e_w)) + floor, with the
  compute efficiency rising with the rows, e(m) = e_max * m / (m + m_half) (GEMMs keep gaining
  efficiency well past the compute/memory ridge: why a chunked prefill costs more than a whole one).
  Fitted by least squares on log time over the table's shapes with n and k from 1024 to 32768;
  the tile is chosen among 16, 32, 64 and 128 where the table measures both sides of tile steps
  (k*tile and k*tile + 1 rows), else kept at 64.
- **Elementwise ops and the embedding**, from Vidur's measured op tables of the GPU: per op kind
  (norm, rotary, activation, residual add, embedding) time = floor + bytes / (bandwidth x e_kind),
  a non-negative relative least-squares line in the bytes the roofline counts. The fit uses the
  tables of the models *not* in the comparison set (Llama-2-7B, Llama-3-8B, Llama-2-70B), so
  ``benchmarks/kernels_vs_vidur.py`` checks it on models it was not fitted to.

GPUs without Vidur tables take the elementwise efficiencies and floors fitted on the A100 (a kernel's
fraction of bandwidth carries over better than a guess); ``source`` says so.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import least_squares, nnls

from sim.catalog.hardware import get_gpu
from sim.catalog.models import ModelSpec
from sim.cost.roofline import ELEMENTWISE_KINDS, RooflineCostModel

VIDUR_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "measured" / "vidur"
#: Vidur files of the models the comparison checks (left out of the elementwise fit)
COMPARISON = ("Llama-2-7b-hf", "Meta-Llama-3-8B", "Llama-2-70b-hf")
#: servesim op -> (Vidur op, elementwise kind)
ELEMENTWISE_OPS = {"input_norm": ("input_layernorm", "norm"), "post_attn_norm": ("post_attention_layernorm", "norm"),
                   "rotary": ("attn_rope", "rotary"), "act": ("mlp_act", "act"), "residual_add": ("add", "residual"),
                   "embedding": ("emb", "embedding")}
VIDUR_GPU = {"a100-80gb": "a100", "a40": "a40"}
TILES = (16, 32, 64, 128)


def vidur_model(raw: pd.DataFrame, name: str) -> ModelSpec:
    """The layer shape a Vidur table measured (one layer; its own vocabulary)."""
    r = raw.iloc[0]
    heads, hidden = int(r["n_head"]), int(r["n_embd"])
    return ModelSpec(name=name, num_layers=1, hidden_size=hidden, num_heads=heads, num_kv_heads=int(r["n_kv_head"]),
                     intermediate_size=int(r["n_expanded_embd"]), vocab_size=int(r["vocab_size"]), max_context=4096,
                     gated_mlp=bool(r["use_gated_mlp"]))


def vidur_tables(gpu: str, *, comparison: bool | None = None) -> list[tuple[str, pd.DataFrame]]:
    """(model file stem, table) of each Vidur table of ``gpu``; ``comparison`` True/False: only/without those."""
    folder = VIDUR_ROOT / VIDUR_GPU.get(gpu, "")
    if gpu not in VIDUR_GPU or not folder.is_dir():
        return []
    out = []
    for f in sorted(folder.glob("*/*.mlp.csv")):
        stem = f.name.removesuffix(".mlp.csv")
        if comparison is None or (stem in COMPARISON) == comparison:
            out.append((stem, pd.read_csv(f)))
    return out


def elementwise_points(gpu: str, tables: list[tuple[str, pd.DataFrame]]) -> pd.DataFrame:
    """One row per (table, TP, tokens, op): measured seconds, the roofline's bytes and kind."""
    rows = []
    for stem, raw in tables:
        for tp in sorted(raw["num_tensor_parallel_workers"].unique()):
            spec = vidur_model(raw, stem)
            try:
                spec.check_tp(int(tp))
            except ValueError:
                continue
            rl = RooflineCostModel(spec, gpu, tp=int(tp))
            sel = raw[raw["num_tensor_parallel_workers"] == tp].groupby("num_tokens").median(numeric_only=True)
            for n, r in sel.iterrows():
                costs = rl.token_op_costs(int(n), int(n))
                for op, (v_op, kind) in ELEMENTWISE_OPS.items():
                    if f"time_stats.{v_op}.median" not in r.index or not r[f"time_stats.{v_op}.median"] > 0:
                        continue  # e.g. phi-2: parallel attention and MLP, one norm
                    rows.append({"model": stem, "tp": int(tp), "tokens": int(n), "op": op, "kind": kind,
                                 "bytes": costs[op][2], "seconds": float(r[f"time_stats.{v_op}.median"]) * 1e-3})
    return pd.DataFrame(rows)


def fit_elementwise(points: pd.DataFrame, bandwidth: float) -> dict[str, dict[str, float]]:
    """Per kind: memory efficiency and floor (seconds) of time = floor + bytes / (bandwidth x efficiency)."""
    out = {}
    for kind in ELEMENTWISE_KINDS:
        p = points[points["kind"] == kind]
        if p.empty:
            continue
        w = 1.0 / p["seconds"].to_numpy()
        a = np.column_stack([np.ones(len(p)), p["bytes"].to_numpy()]) * w[:, None]
        (floor, per_byte), _ = nnls(a, p["seconds"].to_numpy() * w)
        out[kind] = {"memory_efficiency": round(float(min(1.0, 1.0 / (per_byte * bandwidth))), 4),
                     "floor_s": round(float(floor), 8)}
    return out


def gemm_points(gpu: str) -> pd.DataFrame:
    """The bf16 rows of the GPU's measured GEMM table (vLLM's newest version), n and k from 1024 to 32768."""
    from sim.cost.kernels import database as db
    ref = db.resolve(get_gpu(gpu).kernel_db, db.DEFAULT_FRAMEWORK, None)["gemm"]
    t = db.read_table(ref.path)
    t = t[(t["gemm_dtype"] == "bfloat16") & t["n"].between(1024, 32768) & t["k"].between(1024, 32768)]
    t, _ = db.pick_kernel(t)
    return t.assign(seconds=t["latency"] * 1e-3, table=ref.describe())[["m", "n", "k", "seconds", "table"]]


def gemm_model(params: np.ndarray, m: np.ndarray, n: np.ndarray, k: np.ndarray, tile: int, flops: float,
               bandwidth: float) -> np.ndarray:
    """Seconds of the fitted GEMM roofline (see the module docstring); ``params`` = log of (e_max, m_half, e_w,
    floor)."""
    e_max, m_half, e_w, floor = np.exp(params)
    padded = np.ceil(m / tile) * tile
    eff = np.minimum(e_max * padded / (padded + m_half), 1.0)
    compute = 2.0 * padded * n * k / (flops * eff)
    memory = 2.0 * (k * n + m * k + m * n) / (bandwidth * min(e_w, 1.0))
    return np.maximum(compute, memory) + floor


def fit_gemm(points: pd.DataFrame, flops: float, bandwidth: float) -> dict[str, Any]:
    """GEMM parameters minimising the squared log error over ``points``, and the tile."""
    m, n, k, t = (points[c].to_numpy(dtype=float) for c in ("m", "n", "k", "seconds"))
    ms = set(points["m"].unique().tolist())
    tiles = [x for x in TILES if {x * j + 1 for j in (1, 2, 4)} <= ms] or [64]

    def solve(tile: int):
        res = least_squares(lambda p: np.log(gemm_model(p, m, n, k, tile, flops, bandwidth)) - np.log(t),
                            x0=np.log([0.8, 64.0, 0.8, 5e-6]), bounds=(np.log([0.05, 0.1, 0.05, 1e-7]),
                                                                       np.log([1.0, 1e5, 1.0, 1e-3])))
        return float(np.median(np.abs(np.exp(res.fun) - 1))), res.x, tile

    err, x, tile = min(solve(tile) for tile in tiles)
    e_max, m_half, e_w, floor = np.exp(x)
    return {"gemm_peak_efficiency": round(float(e_max), 4), "gemm_half_rows": round(float(m_half), 2),
            "gemm_memory_efficiency": round(float(e_w), 4), "gemm_floor_s": round(float(floor), 8), "tile": tile,
            "tile_fitted": len(tiles) > 1, "gemm_fit_median_abs_err": round(err, 4),
            "gemm_table": str(points["table"].iloc[0])}


def fit_gpu(gpu: str, a100_elementwise: dict[str, dict[str, float]] | None = None) -> dict[str, Any]:
    """The roofline parameters of ``gpu`` (the TOML table ``[<gpu>.roofline]``)."""
    g = get_gpu(gpu)
    out: dict[str, Any] = {}
    notes = []
    if g.kernel_db:
        out.update(fit_gemm(gemm_points(gpu), g.bf16_flops, g.mem_bandwidth))
        notes.append(f"GEMMs fitted to AIConfigurator's {out['gemm_table']}"
                     + ("" if out["tile_fitted"] else " (its rows do not resolve tile steps: tile kept at 64)"))
    tables = vidur_tables(gpu, comparison=False)
    if tables:
        out["elementwise"] = fit_elementwise(elementwise_points(gpu, tables), g.mem_bandwidth)
        notes.append(f"elementwise ops and embedding fitted to Vidur's {VIDUR_GPU[gpu]} tables of "
                     f"{', '.join(s for s, _ in tables)} (not the compared models)")
    elif a100_elementwise:
        out["elementwise"] = a100_elementwise
        notes.append("elementwise ops and embedding: the A100's fitted efficiencies and floors (no measurement of "
                     "this GPU's)")
    out["source"] = "; ".join(notes) + " (calibration/roofline_fit.py)"
    return out


#: GPUs with measurements of their own: a kernel table measured on that very part, or Vidur's tables
FITTED_GPUS = ("a100-80gb", "a40", "l40s", "h100-sxm", "h200", "b200", "rtx-pro-6000-server")


def fit_all(gpus: tuple[str, ...] = FITTED_GPUS) -> dict[str, dict[str, Any]]:
    """Fitted parameters of each GPU (the A100's elementwise fit carried to those without Vidur tables)."""
    base = fit_gpu("a100-80gb")
    return {gpu: base if gpu == "a100-80gb" else fit_gpu(gpu, base.get("elementwise")) for gpu in gpus}


def to_toml(fits: dict[str, dict[str, Any]]) -> str:
    """The ``[<gpu>.roofline]`` tables to paste into sim/catalog/gpus.toml."""
    lines = []
    for gpu, fit in fits.items():
        lines.append(f"[{gpu}.roofline]")
        for key, v in fit.items():
            if key == "elementwise":
                continue
            lines.append(f"{key} = {_toml_value(v)}")
        for kind, d in fit.get("elementwise", {}).items():
            lines.append(f'elementwise.{kind} = {{ memory_efficiency = {d["memory_efficiency"]}, '
                         f'floor_s = {d["floor_s"]} }}')
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace('"', "'") + '"'
    return repr(v)
