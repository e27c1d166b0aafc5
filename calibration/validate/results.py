"""The outcome of a validation: each (scheduler, load) pair's measured and predicted runs and their errors."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from calibration.validate.config import LoadLevel, ValidateConfig
from calibration.validate.errors import ExecutedBatch, batch_errors, shape_errors, tail_errors

#: a machine whose reference timing moved by more than this between before and after an engine run drifted
DRIFT_THRESHOLD = 0.25


def prefix_cache_comparison(measured: dict[str, Any], predicted: dict[str, Any]) -> dict[str, Any] | None:
    """Prefix-cache hit rate of the engine run (measured) against the simulator's (predicted); None without caching.

    Both runs use the same ``CachingBlockManager``, so offline (same batches) the two are equal; online the order
    in which requests are admitted and finish depends on timing, so they may differ a little.
    ``difference`` is predicted - measured, in hit-rate points (a fraction, not a relative error).
    """
    m, p = measured.get("prefix_cache"), predicted.get("prefix_cache")
    if not m and not p:
        return None
    m, p = m or {}, p or {}

    def diff(key: str) -> float | None:
        a, b = m.get(key), p.get(key)
        return None if a is None or b is None else b - a

    return {"hit_rate_tokens": {"measured": m.get("hit_rate_tokens"), "predicted": p.get("hit_rate_tokens"),
                                "difference": diff("hit_rate_tokens")},
            "hit_rate_blocks": {"measured": m.get("hit_rate_blocks"), "predicted": p.get("hit_rate_blocks"),
                                "difference": diff("hit_rate_blocks")},
            "hit_tokens": {"measured": m.get("hit_tokens"), "predicted": p.get("hit_tokens")},
            "queried_tokens": {"measured": m.get("queried_tokens"), "predicted": p.get("queried_tokens")},
            "evictions": {"measured": m.get("evictions"), "predicted": p.get("evictions")}}


@dataclass
class RunResult:
    """One scheduler at one load level: both runs, the priced batches and the comparison."""

    name: str
    scheduler: str
    level: LoadLevel
    token_budget: int | None
    engine: Any                   # engine.replay.EngineResult
    simulated: Any                # sim.serving.simulator.SimResult
    batches: pd.DataFrame         # price_batches() frame
    batch_error: dict[str, Any]
    request_error: dict[str, Any]
    composition: dict[str, Any]
    trace_len: int
    executed: list[ExecutedBatch] = field(default_factory=list, repr=False)
    repeats: list[dict[str, Any]] = field(default_factory=list)  # every engine run of this pair (median_run)
    probe: dict[str, float] | None = None  # reference timing before and after the engine run, and their drift
    speculative: dict[str, Any] | None = None  # calibration.validate.speculative.comparison (speculative runs)

    def to_dict(self) -> dict[str, Any]:
        """The run's entry in report.json."""
        eng, sim = self.engine.summary, self.simulated.summary
        tails = {k: dict(v) for k, v in tail_errors(self.request_error).items()}  # copies: request_error stays
        for key, v in tails.items():
            errs = [r["tails"][key] for r in self.repeats if r.get("tails", {}).get(key) is not None]
            v["repeat_range"] = [min(errs), max(errs)] if len(errs) > 1 else None
        return {
            "name": self.name, "scheduler": self.scheduler, "token_budget": self.token_budget,
            "tails": tails,
            "batch_error_by_kind": {k: v["total"]["median"] for k, v in self.batch_error["by_kind"].items()},
            "shape_errors": shape_errors(self.batches),
            "probe": self.probe,
            "drifted": any(r.get("drifted") for r in self.repeats) or bool(
                self.probe and self.probe["drift"] > DRIFT_THRESHOLD),
            "level": dataclasses.asdict(self.level) | {"name": self.level.name, "description": self.level.describe()},
            "requests": {"in_trace": self.trace_len, "completed_measured": eng["requests"]["completed"],
                         "completed_predicted": sim["requests"]["completed"], "skipped": eng["requests"]["skipped"]},
            "iterations": {"measured": eng["batches"]["iterations"], "predicted": sim["batches"]["iterations"]},
            "preemptions": {"measured": eng["kv_cache"]["preemptions"], "predicted": sim["kv_cache"]["preemptions"]},
            "prefix_cache": prefix_cache_comparison(eng, sim),
            "speculative": self.speculative,
            "batch_error": self.batch_error,
            "repeats": self.repeats,
            "request_level": self.request_error,
            "composition_match": self.composition | {"offline": self.level.kind == "offline"},
            "files": {"engine": f"{self.name}/engine", "simulator": f"{self.name}/simulator",
                      "batches": f"{self.name}/batch_errors.csv"},
        }


@dataclass
class ValidationResult:
    """Every run of a validation plus what it was run with."""

    config: ValidateConfig
    runs: list[RunResult]
    profile: dict[str, Any]
    device: dict[str, Any]
    source: str
    out: Path | None = None
    notes: list[str] = field(default_factory=list)
    ops: pd.DataFrame | None = None            # calibration.validate.op_check.op_check table (None: not run)
    ops_summary: dict[str, Any] = field(default_factory=dict)

    @property
    def all_batches(self) -> pd.DataFrame:
        """Every run's priced batches in one frame (column ``run`` names the run)."""
        frames = [r.batches.assign(run=r.name, scheduler=r.scheduler) for r in self.runs if len(r.batches)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def overall(self) -> dict[str, Any]:
        """Batch-level error over every batch of every run."""
        df = self.all_batches
        return batch_errors(df) if len(df) else {}
