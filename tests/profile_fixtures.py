"""Synthetic calibration profiles for tests: every planned point timed by a known function (no torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from calibration.grid import QUICK, GridSpec, Point, plan
from calibration.profile_writer import write_profile
from sim.catalog.models import ModelSpec, get_model
from sim.cost import profile_format
from sim.cost.op_roofline import OpRoofline
from sim.cost.roofline import RooflineCostModel


def roofline_times(model: ModelSpec, gpu: str, factor: float = 1.0, dtype_bytes: int = 2) -> Callable[[Point], float]:
    """Point -> ``factor`` x the catalogue GPU's roofline time of that op at that shape."""
    refs: dict[int, OpRoofline] = {}

    def f(p: Point) -> float:
        tp = max(p.tp, 1)
        if tp not in refs:
            refs[tp] = OpRoofline(RooflineCostModel(model, gpu, tp=tp, dtype_bytes=dtype_bytes, fitted=False))
        return factor * refs[tp].time(p.op, p.tokens, p.seqs, p.context, p.variant)

    return f


def synthetic_profile(path: Path, model: str | ModelSpec = "tiny", *, gpu: str | None = "h100-sxm",
                      tps: tuple[int, ...] = (1,), grid: GridSpec = QUICK, backend: str = "flex",
                      time_of: Callable[[Point], float] | None = None, factor: float = 1.25,
                      dtype_bytes: int = 2) -> Path:
    """Write a complete profile of ``model`` whose every row is ``time_of(point)`` (default: roofline x factor)."""
    m = get_model(model)
    time_of = time_of or roofline_times(m, gpu or "a100-80gb", factor, dtype_bytes)
    rows = []
    for p in plan(m, list(tps), grid):
        t = time_of(p)
        rows.append({"op": p.op, "tp": p.tp, "tokens": p.tokens, "seqs": p.seqs, "context": p.context,
                     "variant": p.variant, "median_s": t, "p10_s": t * 0.95, "p90_s": t * 1.1, "repeats": 10})
    meta = {
        "format": profile_format.FORMAT, "version": profile_format.VERSION, "status": "complete",
        "device": {"type": "cuda" if gpu else "cpu", "name": f"synthetic {gpu or 'cpu'}", "gpu": gpu,
                   "memory_bytes": 80 << 30},
        "dtype": "bfloat16" if dtype_bytes == 2 else "float32", "dtype_bytes": dtype_bytes,
        "model": profile_format.model_shape(m), "tp": list(tps), "grid": grid.to_dict(),
        "communication": {"measured_tp": [], "pp": "roofline", "note": "synthetic"},
        "attention_backend": backend, "date": "2026-01-01T00:00:00+00:00", "git_commit": None,
        "wall_time_s": 0.0,
    }
    if gpu is None:
        meta["device_rates"] = {"flops": 1e11, "mem_bandwidth": 2e10, "launch_s": 5e-6}
    return write_profile(path, meta, pd.DataFrame(rows))
