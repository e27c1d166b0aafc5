"""Vidur's measured op tables as a servesim calibration profile.

Vidur's profiler (microsoft/vidur, MIT) timed the ops of Llama-family layers on real GPUs, one
``mlp.csv`` per model and GPU: per (tokens, TP workers) the median, min and max milliseconds of
``emb``, ``input_layernorm``, ``attn_pre_proj`` (fused QKV), ``attn_rope``, ``attn_post_proj``,
``post_attention_layernorm``, ``mlp_up_proj`` (fused gate+up), ``mlp_act``, ``mlp_down_proj`` and
``add``. Those become profile rows (min and max stand in for p10 and p90; Vidur does not record
its repeat count, written as 1). What Vidur's table lacks is priced on the calibration grid by the
kernel-database model when the ``kernels`` extra is installed (attention, lm head), else by the
roofline (and always: sampling and host overhead); ``final_norm`` is Vidur's input-norm kernel on
the sampled rows. ``profile.json`` names each op's source. Nothing is copied into the repository:
the profile is written where ``--out`` says.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import pandas as pd

from calibration.grid import FULL, Point, decode_points, prefill_points, token_grid
from calibration.profile_writer import write_profile
from sim.catalog.hardware import get_gpu
from sim.catalog.models import ModelSpec, get_model
from sim.cost import profile_format
from sim.cost.op_roofline import OpRoofline
from sim.cost.roofline import RooflineCostModel
from sim.cost.unit_rows import unit_batch
from sim.version import __version__

#: Vidur op -> the servesim ops it measures
VIDUR_OPS: dict[str, tuple[str, ...]] = {
    "emb": ("embedding",), "input_layernorm": ("input_norm",), "attn_pre_proj": ("qkv_proj",),
    "attn_rope": ("rotary",), "attn_post_proj": ("o_proj",), "post_attention_layernorm": ("post_attn_norm",),
    "mlp_up_proj": ("gate_up_proj",), "mlp_act": ("act",), "mlp_down_proj": ("down_proj",),
    "add": ("residual_add", "residual_add_mlp"),
}
#: Vidur's model columns -> ModelSpec fields they must agree with
SHAPE = {"n_head": "num_heads", "n_kv_head": "num_kv_heads", "n_embd": "hidden_size",
         "n_expanded_embd": "intermediate_size"}
VIDUR_COMMIT = "7d47513"


def _fail(path: Path, what: str) -> None:
    raise profile_format.ProfileError(f"{path}: {what}")


def read_vidur(path: str | Path, model: ModelSpec) -> pd.DataFrame:
    """The mlp.csv rows, checked against ``model``'s shape (messages name the file, line and field)."""
    path = Path(path)
    try:
        raw = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        _fail(path, f"not a readable Vidur mlp.csv: {e}")
    need = ["num_tokens", "num_tensor_parallel_workers", *SHAPE] + [
        f"time_stats.{op}.{s}" for op in VIDUR_OPS for s in ("min", "max", "median")]
    missing = [c for c in need if c not in raw.columns]
    if missing:
        _fail(path, f"header lacks column(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                    f"(expected Vidur's profiling/mlp.csv)")
    for col, field in SHAPE.items():
        bad = raw[col] != getattr(model, field)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            _fail(path, f"line {i + 2}: field '{col}' is {raw[col].iloc[i]}, but {model.name} has {field} "
                        f"{getattr(model, field)}: the table measured another model")
    return raw


def _vidur_rows(raw: pd.DataFrame, tps: list[int]) -> list[dict[str, Any]]:
    """Profile rows of every op Vidur measured (repeated token counts: their median), and final_norm."""
    rows = []
    for v_op, ours in VIDUR_OPS.items():
        cols = [f"time_stats.{v_op}.{s}" for s in ("median", "min", "max")]
        for op in ours + (("final_norm",) if v_op == "input_layernorm" else ()):
            shared = op in profile_format.TP_INDEPENDENT_OPS
            for tp in ([1] if shared else tps):
                sel = raw[raw["num_tensor_parallel_workers"] == tp].groupby("num_tokens")[cols].median()
                for n, (med, lo, hi) in zip(sel.index, sel.to_numpy()):
                    seqs = int(n) if op == "final_norm" else 0  # the same norm kernel on the rows that sample
                    rows.append(_row(op, 0 if shared else tp, int(n), seqs, 0, med, lo, hi))
    return rows


def _row(op: str, tp: int, tokens: int, seqs: int, context: int, median_ms: float, lo_ms: float, hi_ms: float,
         variant: str = "") -> dict[str, Any]:
    med = median_ms * 1e-3
    return {"op": op, "tp": tp, "tokens": tokens, "seqs": seqs, "context": context, "variant": variant,
            "median_s": med, "p10_s": min(lo_ms * 1e-3, med), "p90_s": max(hi_ms * 1e-3, med), "repeats": 1}


def _kernels(model: ModelSpec, gpu: str, tp: int) -> Any:
    """The kernel-database model for this shape, or None (extra not installed, or no database for the GPU)."""
    try:
        from sim.cost.kernels.database import KernelDatabaseError
        from sim.cost.kernels.model import KernelCostModel
        return KernelCostModel(model, gpu, tp=tp)
    except (ImportError, KernelDatabaseError):
        return None


def _filled_rows(model: ModelSpec, gpu: str, tps: list[int]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rows of the ops Vidur lacks, priced on the full calibration grid, and each op's source."""
    grid = FULL
    rows: list[dict[str, Any]] = []
    sources: dict[str, str] = {}

    def add(p: Point, seconds: float) -> None:
        rows.append(_row(p.op, p.tp, p.tokens, p.seqs, p.context, seconds * 1e3, seconds * 1e3, seconds * 1e3))

    for tp in tps:
        km = _kernels(model, gpu, tp)
        ref = OpRoofline(RooflineCostModel(model, gpu, tp=tp))
        for c, p in prefill_points(grid, model.max_context):
            pt = Point("attn_prefill", tp, c, 1, p)
            add(pt, km.attn_prefill(unit_batch(c, 1, p, "prefill"))[0] if km else ref.time("attn_prefill", c, 1, p))
        for b, ctx in decode_points(grid, model.max_context):
            add(Point("attn_decode", tp, b, b, ctx), km.attn_decode(b, b * ctx)[0] if km else
                ref.time("attn_decode", b, b, ctx))
        for n in token_grid(grid, grid.max_seqs):
            add(Point("lm_head", tp, n, n, 0), km.gemm_time("lm_head", n) if km else ref.time("lm_head", n, n, 0))
        via = f"kernels ({km.refs['gemm'].framework} {km.version} tables of {km.gpu.kernel_db})" if km else "roofline"
        for op in ("attn_prefill", "attn_decode", "lm_head"):
            sources[op] = via
    ref = OpRoofline(RooflineCostModel(model, gpu, tp=1))
    for n in token_grid(grid, grid.max_seqs):
        add(Point("sampling", 0, n, n, 0), ref.time("sampling", n, n, 0))
    for b in grid.host_batches:
        add(Point("host_overhead", 0, b, b, 0), ref.time("host_overhead", b, b, 0))
    sources["sampling"] = sources["host_overhead"] = "roofline"
    return rows, sources


def import_vidur(path: str | Path, model: str, gpu: str, out: str | Path) -> Path:
    """Write a profile of ``model`` on ``gpu`` into ``out`` from Vidur's ``mlp.csv`` at ``path``."""
    spec, g = get_model(model), get_gpu(gpu)
    path = Path(path).resolve()
    if spec.is_moe:
        _fail(path, f"{spec.name} is a mixture of experts: Vidur's tables time dense MLPs, not its MoE ops")
    raw = read_vidur(path, spec)
    tps = []
    for tp in sorted(set(int(x) for x in raw["num_tensor_parallel_workers"])):
        try:
            spec.check_tp(tp)
            tps.append(tp)
        except ValueError:
            continue
    if 1 not in tps:
        _fail(path, "holds no rows for one TP worker (needed for the ops whose shapes do not depend on TP)")
    vidur_rows = _vidur_rows(raw, tps)
    filled, sources = _filled_rows(spec, g.name, tps)
    for v_op, ours in VIDUR_OPS.items():
        for op in ours:
            sources[op] = f"vidur:{v_op}"
    sources["final_norm"] = "vidur:input_layernorm (the same kernel on the sampled rows)"
    vocab = int(raw["vocab_size"].iloc[0]) if "vocab_size" in raw.columns else None
    meta: dict[str, Any] = {
        "format": profile_format.FORMAT, "version": profile_format.VERSION, "status": "complete",
        "device": {"type": "cuda", "name": f"{g.name} (measured by Vidur's profiler)", "gpu": g.name,
                   "memory_bytes": int(g.mem_bytes), "count": 1, "driver": None, "cuda": None},
        "dtype": "float16", "dtype_bytes": 2, "servesim": __version__,
        "model": profile_format.model_shape(spec), "tp": tps,
        "grid": {**FULL.to_dict(), "name": "vidur-import"},
        "attention_backend": "flash",
        "communication": {"measured_tp": [], "pp": "roofline", "note": "from the roofline interconnect model"},
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {"measured_by": f"Vidur's profiler on {g.name}", "file": str(path),
                   "repository": "microsoft/vidur data/profiling", "commit": VIDUR_COMMIT, "license": "MIT",
                   "vidur_vocab_size": vocab,
                   "note": "min and max of Vidur's repeats stand in for p10 and p90; repeats unknown (written 1)"},
        "op_sources": dict(sorted(sources.items())),
        "command": f"servesim calibrate --import-vidur {path} --model {spec.name} --gpu {g.name}",
    }
    return write_profile(out, meta, pd.DataFrame(vidur_rows + filled))
