"""Why a batch-level error: a sample of the engine's batches run again with every op timed inside the real forward pass.

For each sampled batch (rebuilt exactly, on fresh requests and KV blocks) the runner executes
it with each ``engine.ops.OPS`` entry wrapped by a timer (the host clock on a CPU, CUDA events
on a GPU; CUDA graphs off so that decode ops run one by one). Per op this gives three numbers
for the same shapes: the profile's prediction (``cost.breakdown``), the time *in situ* (inside
the forward pass, as the engine runs it) and the time *isolated* (the same call, same
arguments, repeated in a tight loop right now, the way calibration times ops). Predicted far
from in situ while isolated is close to predicted means the calibration method (hot-loop
timing) is the cause, not a stale or noisy profile; forward time well above the sum of the
ops in situ points at work outside the ops.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import pandas as pd

from calibration.validate.errors import KINDS, ExecutedBatch
from sim.cost.interface import CostModel

OPCHECK_PREFIX = "opcheck-"


def sample_batches(executed: Sequence[ExecutedBatch], n: int, seed: int = 0) -> list[ExecutedBatch]:
    """Up to ``n`` batches spread over the kinds (prefill, decode, mixed) and over the run, reproducibly."""
    if n <= 0 or not executed:
        return []
    by_kind: dict[str, list[ExecutedBatch]] = {k: [] for k in KINDS}
    for ex in executed:
        by_kind[ex.rebuild().kind].append(ex)
    present = [k for k in KINDS if by_kind[k]]
    rng = np.random.default_rng(seed)
    out: list[ExecutedBatch] = []
    share = max(1, n // len(present))
    for k in present:
        pool = by_kind[k]
        idx = np.sort(rng.choice(len(pool), size=min(share, len(pool)), replace=False))
        out += [pool[i] for i in idx]
    return out[:n]


class _OpTimer:
    """Wraps every entry of ``engine.ops.OPS``: per-op seconds of the current forward pass, last arguments kept."""

    def __init__(self, device_type: str) -> None:
        import torch
        self.torch = torch
        self.cuda = device_type == "cuda"
        self.times: dict[str, float] = {}
        self.events: list[tuple[str, Any, Any]] = []
        self.args: dict[str, tuple] = {}
        self.calls: dict[str, int] = {}
        self.keep_args = False

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            if self.keep_args:
                self.args[name] = (args, kwargs)
                self.calls[name] = self.calls.get(name, 0) + 1
            if self.cuda:
                a = self.torch.cuda.Event(enable_timing=True)
                b = self.torch.cuda.Event(enable_timing=True)
                a.record()
                out = fn(*args, **kwargs)
                b.record()
                self.events.append((name, a, b))
                return out
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
            return out
        return timed

    def start(self) -> None:
        self.times, self.events = {}, []

    def collect(self) -> dict[str, float]:
        if self.cuda:
            self.torch.cuda.synchronize()
            for name, a, b in self.events:
                self.times[name] = self.times.get(name, 0.0) + a.elapsed_time(b) / 1e3
        return dict(self.times)


def op_check(runner: Any, batches: Sequence[ExecutedBatch], cost: CostModel, *, repeats: int = 5,
             isolated: bool = True) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-op predicted, in-situ and isolated seconds summed over ``batches``; and a summary dict.

    Each batch runs once to warm up and ``repeats`` times timed; per op the median over the
    repeats is kept. ``isolated`` also re-times every op's last call in a tight loop
    (``calibration.timing.time_call``, as calibration does).
    """
    import torch

    from engine import ops as engine_ops
    from sim.kv.block_manager import BlockManager, KVCacheError

    timer = _OpTimer(runner.device.type)
    originals = dict(engine_ops.OPS)
    saved_graphs = runner.graphs
    pred: dict[str, float] = {}
    insitu: dict[str, float] = {}
    iso: dict[str, float] = {}
    forward: list[float] = []
    used = 0
    try:
        runner.graphs = None  # decode ops one by one (a graph replay would hide them)
        for name, fn in originals.items():
            engine_ops.OPS[name] = timer.wrap(name, fn)
        for ex in batches:
            batch = ex.rebuild(OPCHECK_PREFIX)
            bm = BlockManager(runner.num_blocks, runner.block_size, 0.0)
            try:
                for r, new, cached in batch.items:
                    bm.grow(r, cached + new)
                    toks = runner.token_ids(r)
                    toks.extend([0] * max(0, cached + new - len(toks)))
            except KVCacheError:
                continue
            try:
                runner.execute(batch)
                per_op: dict[str, list[float]] = {}
                fw = []
                for i in range(repeats):
                    timer.start()
                    timer.keep_args = i == repeats - 1
                    runner.execute(batch)
                    fw.append(float(runner.last_timing["device_s"]))
                    for op, t in timer.collect().items():
                        per_op.setdefault(op, []).append(t)
                timer.keep_args = False
                forward.append(float(np.median(fw)))
                for op, ts in per_op.items():
                    insitu[op] = insitu.get(op, 0.0) + float(np.median(ts))
                for op, t in cost.breakdown(batch, 0).items():
                    pred[op] = pred.get(op, 0.0) + t
                if isolated:
                    _time_isolated(originals, timer.args, timer.calls, runner.device, iso)
                used += 1
            finally:
                for r, _new, _cached in batch.items:
                    runner.release(r)
                timer.args, timer.calls = {}, {}
    finally:
        engine_ops.OPS.update(originals)
        runner.graphs = saved_graphs
        if runner.device.type == "cuda":
            torch.cuda.synchronize()
    ops = [op for op in originals if pred.get(op, 0.0) > 0 or insitu.get(op, 0.0) > 0]
    df = pd.DataFrame({"op": ops, "predicted_s": [pred.get(op, 0.0) for op in ops],
                       "in_situ_s": [insitu.get(op, 0.0) for op in ops],
                       "isolated_s": [iso.get(op, np.nan) for op in ops]})
    with np.errstate(divide="ignore", invalid="ignore"):
        df["predicted_vs_in_situ"] = np.where(df["in_situ_s"] > 0, df["predicted_s"] / df["in_situ_s"] - 1, np.nan)
        df["isolated_vs_in_situ"] = np.where(df["in_situ_s"] > 0, df["isolated_s"] / df["in_situ_s"] - 1, np.nan)
    total_in, total_pred = float(df["in_situ_s"].sum()), float(df["predicted_s"].sum())
    total_iso = float(df["isolated_s"].sum()) if isolated else None
    fw_sum = float(sum(forward))
    summary = {
        "batches": used, "repeats": repeats,
        "forward_s": fw_sum, "ops_in_situ_s": total_in, "ops_predicted_s": total_pred, "ops_isolated_s": total_iso,
        "outside_ops_fraction": 1 - total_in / fw_sum if fw_sum > 0 else None,
        "predicted_vs_forward": total_pred / fw_sum - 1 if fw_sum > 0 else None,
        "predicted_vs_in_situ": total_pred / total_in - 1 if total_in > 0 else None,
        "isolated_vs_in_situ": total_iso / total_in - 1 if total_iso is not None and total_in > 0 else None,
    }
    return df, summary


def _time_isolated(originals: dict, args: dict[str, tuple], calls: dict[str, int], device: Any,
                   acc: dict[str, float]) -> None:
    """Each op's last in-situ call repeated in a tight loop (as calibration times it), times its calls per
    forward pass (once per layer for layer ops); added to ``acc``."""
    from calibration.timing import TimingSettings, time_call
    settings = TimingSettings(warmup=2, min_repeats=10, max_repeats=50, target_s=0.002)
    for op, (a, kw) in args.items():
        fn = originals[op]
        t = time_call(lambda i, fn=fn, a=a, kw=kw: fn(*a, **kw), device, settings).median_s
        acc[op] = acc.get(op, 0.0) + t * calls.get(op, 1)
