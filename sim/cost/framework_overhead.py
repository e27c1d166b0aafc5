"""Framework overhead of a profiled device: what whole layers and forward passes cost beyond their ops.

Ops timed one by one run faster than inside the engine's forward pass (Python glue, masks built
once per forward, cold caches; on a GPU without CUDA graphs, launch gaps). Two terms of
``sim.ops.OVERHEAD_OPS`` model it: ``layer_overhead`` per decoder layer and ``forward_overhead``
per forward pass, each linear with non-negative coefficients in simple work counts (the
features below), fitted by relative least squares to the residuals of a profile's whole-unit
rows (real ``ModelRunner.execute`` iterations over a grid of prefill, decode and mixed batches):
measured unit minus the op sum the tables predict for the same batch, so the terms stay
consistent with the op tables they complement. A residual rather than a replacement: the
measured units cover only a small grid, while the op tables cover every shape and give per-op
breakdowns; the features (work counts) extrapolate smoothly beyond the grid. ``layer_forward``
rows are the mean over the model's layers (dense and MoE alike), and so is the op sum they are
compared with (``sim.cost.op_roofline.mean_layer_time``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from sim.batch import Batch
from sim.cost.op_roofline import prefill_pairs
from sim.cost.tables import fit_nonnegative
from sim.cost.unit_rows import unit_batch
from sim.ops import UNIT_TIMINGS

#: names of the features the overhead terms are linear in
LAYER_FEATURES: tuple[str, ...] = ("const", "prefill_part", "decode_part", "items", "tokens", "prefill_pairs",
                                   "decode_keys")
FORWARD_FEATURES: tuple[str, ...] = ("const", "tokens", "sampled_rows")
Fit = tuple[list[float], list[float], dict[str, Any]]


def layer_features(batch: Batch, padded: bool, decodes: tuple[int, int, int | None]) -> list[float]:
    """LAYER_FEATURES of ``batch``; attention work is counted as the backend does it (``padded``: SDPA pads
    every sequence to the longest). ``decodes``: (decodes, their total context, longest context or None)."""
    pre = batch.prefill_items
    nd, dctx, longest = decodes
    if padded and len(pre) > 1:
        c_max = max(it.num_new_tokens for it in pre)
        k_max = max(it.num_new_tokens + it.num_cached_tokens for it in pre)
        pairs = len(pre) * prefill_pairs(c_max, k_max - c_max)
    else:
        pairs = sum(prefill_pairs(it.num_new_tokens, it.num_cached_tokens) for it in pre)
    keys = nd * longest if longest else dctx
    return [1.0, float(bool(pre)), float(nd > 0), float(len(batch.items)),
            float(batch.num_prefill_tokens + nd), float(pairs), float(keys)]


def forward_features(batch: Batch) -> list[float]:
    """FORWARD_FEATURES of ``batch`` (a row samples when its item completes every known token)."""
    sampled = sum(1 for r, n, c in batch.items if c + n == r.prompt_tokens + r.num_generated)
    return [1.0, float(batch.num_prefill_tokens + batch.num_decode_tokens), float(sampled)]


def no_overhead(note: str) -> Fit:
    """Zero coefficients, with the reason."""
    return [0.0] * len(LAYER_FEATURES), [0.0] * len(FORWARD_FEATURES), {"rows": 0, "note": note}


def fit_overhead(table: pd.DataFrame, num_layers: int, layer_feats: Callable[[Batch], list[float]],
                 layer_ops: Callable[[Batch], float], outside_ops: Callable[[Batch, int], float]) -> Fit:
    """(layer coefficients, forward coefficients, fit report) from a profile table's unit rows.

    ``layer_ops(batch)`` is one layer's op-table seconds, ``outside_ops(batch, sampled)`` the
    ops outside the layers; the residuals of the measured units over them are what is fitted.
    """
    units = table[table["op"].isin(UNIT_TIMINGS)]
    if units.empty:
        return no_overhead("no whole-unit timings in the profile")
    key = ["tokens", "seqs", "context", "variant"]
    lay = units[units["op"] == "layer_forward"].set_index(key)["median_s"]
    fwd = units[units["op"] == "forward"].set_index(key)["median_s"]
    shared = [k for k in lay.index if k in fwd.index]
    if not shared:
        return no_overhead("unit rows lack layer/forward pairs")
    L = num_layers
    xl, yl, sl, xf, yf, sf = [], [], [], [], [], []
    for k in shared:
        b = unit_batch(*k)
        ml, mf = float(lay[k]), float(fwd[k])
        xl.append(layer_feats(b))
        yl.append(ml - layer_ops(b))
        sl.append(ml)
        xf.append(forward_features(b))
        yf.append(mf - L * ml - outside_ops(b, int(xf[-1][2])))
        sf.append(mf)
    cl = fit_nonnegative(np.array(xl), np.array(yl), np.array(sl))
    cf = fit_nonnegative(np.array(xf), np.array(yf), np.array(sf))
    pl = np.array(xl) @ cl + (np.array(sl) - np.array(yl))
    pf = L * pl + np.array(xf) @ cf + (np.array(sf) - np.array(yf) - L * np.array(sl))
    info = {"rows": len(shared),
            "layer_overhead": dict(zip(LAYER_FEATURES, map(float, cl))),
            "forward_overhead": dict(zip(FORWARD_FEATURES, map(float, cf))),
            "layer_fit_median_abs_error": float(np.median(np.abs(pl / np.array(sl) - 1))),
            "forward_fit_median_abs_error": float(np.median(np.abs(pf / np.array(sf) - 1)))}
    return list(map(float, cl)), list(map(float, cf)), info
