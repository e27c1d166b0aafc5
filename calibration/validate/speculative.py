"""Validate with n-gram speculative decoding: the engine measures acceptance, the simulator is fed it, both compared.

The engine (``engine.speculative``) drafts by prompt lookup and verifies greedily, so its acceptance is measured.
The simulator gets (1) the measured per-position acceptance as ``--spec-acceptance`` (the rates its seeded draws
use) and (2) the engine's lookups replayed (``MeasuredLookups``: whether prompt lookup found drafts at that output
position of that request), because n-gram drafts exist only where the history repeats, which no rate says.
The comparison: per position measured, used and simulated; per batch the error of verify and plain batches; per
request the accepted tokens and acceptance measured against predicted.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np
import pandas as pd

from calibration.validate.errors import error_stats
from sim.request import Request


class MeasuredLookups:
    """A simulator proposer replaying the engine's n-gram lookups: at a request's output position, the drafts
    the engine's lookup found at its latest lookup at or before that position (0 before its first)."""

    def __init__(self, lookups: dict[int, list[tuple[int, int, int]]]) -> None:
        """``lookups``: trace index -> (outputs generated, drafts allowed, drafts found) per engine lookup."""
        self.positions = {i: [g for g, _k, _f in rows] for i, rows in lookups.items()}
        self.found = {i: [(k, f) for _g, k, f in rows] for i, rows in lookups.items()}

    def __call__(self, request: Request, k: int) -> int:
        pos = self.positions.get(request.index)
        if not pos:
            return 0
        j = bisect.bisect_right(pos, request.num_generated) - 1
        if j < 0:
            return 0
        allowed, found = self.found[request.index][j]
        return k if found >= allowed else min(k, found)  # a full draft then: as many as allowed now


def acceptance_used(measured: list[float | None]) -> tuple[list[float], list[str]]:
    """The per-position rates fed to the simulator from the engine's measured ones (accepted over drafts that
    reached the position, as sim.spec reports them); notes where they differ: a position no draft reached gets
    0, and a rate above the one before it is capped there (``--spec-acceptance`` rates cannot rise)."""
    used, notes, prev = [], [], 1.0
    for i, m in enumerate(measured, start=1):
        v = 0.0 if m is None else float(m)
        if m is None:
            notes.append(f"position {i}: no draft reached it on the engine; rate 0 used")
        elif v > prev:
            notes.append(f"position {i}: measured {v:.4f} above position {i - 1}'s {prev:.4f}; {prev:.4f} used")
            v = prev
        used.append(v)
        prev = v
    return used, notes


def acceptance_arg(rates: list[float]) -> str:
    """``--spec-acceptance`` text that parses back to exactly ``rates`` (repr round-trips a float)."""
    return ",".join(repr(float(r)) for r in rates)


def _rate(df: pd.DataFrame) -> np.ndarray:
    p = df["spec_proposed"].to_numpy(dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, df["spec_accepted"].to_numpy(dtype=float) / np.where(p > 0, p, 1.0), np.nan)


def comparison(eng: Any, sim: Any, priced: pd.DataFrame, used: list[float], notes: list[str]) -> dict[str, Any]:
    """report.json's ``speculative`` entry of a run: acceptance measured / used / simulated, per batch, per request."""
    me, pr = eng.summary["speculative"], sim.summary["speculative"]
    measured = me["per_position_acceptance"]
    positions = [{"position": i + 1, "measured": measured[i], "used": used[i],
                  "simulated": pr["per_position_acceptance"][i]} for i in range(len(used))]
    keys = ("verify_steps", "proposed_tokens", "accepted_tokens", "acceptance_rate", "mean_accepted_length",
            "output_tokens_per_iteration")
    overall = {k: {"measured": me.get(k), "predicted": pr.get(k)} for k in keys}
    overall["lookup_hit_rate"] = {"measured": me.get("lookup_hit_rate"), "predicted": None}
    # per batch: the error of batches that verified drafts and of those that did not
    per_batch: dict[str, Any] = {}
    if len(priced) and "spec_proposed" in eng.batches:
        drafts = eng.batches.set_index("batch_id")["spec_proposed"]
        has = priced["batch_id"].map(drafts).fillna(0).to_numpy() > 0
        per_batch = {"with_drafts": error_stats(priced["error_total"][has]),
                     "without_drafts": error_stats(priced["error_total"][~has])}
    # per request: measured against predicted for the same request id
    cols = ["request_id", "spec_steps", "spec_proposed", "spec_accepted"]
    m = eng.requests[cols].assign(rate=_rate(eng.requests))
    p = sim.requests[cols].assign(rate=_rate(sim.requests))
    j = m.merge(p, on="request_id", suffixes=("_measured", "_predicted"))
    per_request = {"requests": len(j),
                   "accepted_tokens_difference": error_stats(j["spec_accepted_predicted"] - j["spec_accepted_measured"]),
                   "acceptance_rate_difference": error_stats(j["rate_predicted"] - j["rate_measured"]),
                   "verify_steps_difference": error_stats(j["spec_steps_predicted"] - j["spec_steps_measured"])}
    return {"method": me["method"], "num_speculative_tokens": me["num_speculative_tokens"],
            "prompt_lookup": [me.get("prompt_lookup_min"), me.get("prompt_lookup_max")],
            "acceptance_measured_equals_used": all(a == b for a, b in zip(measured, used)) and not notes,
            "notes": notes, "per_position": positions, "overall": overall, "per_batch": per_batch,
            "per_request": per_request}


def _f(x: float | None, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    return str(x) if isinstance(x, (int, np.integer)) and fmt == "{:.3f}" else fmt.format(x)


def markdown(sp: dict[str, Any]) -> list[str]:
    """The report.md lines of one run's speculative comparison."""
    lines = [f"Speculative decoding ({sp['method']}, k={sp['num_speculative_tokens']}, prompt lookup "
             f"{sp['prompt_lookup'][0]}-{sp['prompt_lookup'][1]}): the engine verifies drafts greedily (acceptance "
             "measured); the simulator draws acceptance from the measured per-position rates (used) and replays "
             "the engine's lookups. Acceptance measured = acceptance used: "
             f"**{'yes' if sp['acceptance_measured_equals_used'] else 'no'}**.", ""]
    lines += [f"- {n}" for n in sp["notes"]] + ([""] if sp["notes"] else [])
    lines += ["| draft position | measured (engine) | used (fed to simulator) | simulated draws |",
              "|---|---|---|---|"]
    lines += [f"| {p['position']} | {_f(p['measured'])} | {_f(p['used'])} | {_f(p['simulated'])} |"
              for p in sp["per_position"]]
    lines += ["", "| overall | measured (engine) | predicted (simulator) |", "|---|---|---|"]
    lines += [f"| {k.replace('_', ' ')} | {_f(v['measured'])} | {_f(v['predicted'])} |"
              for k, v in sp["overall"].items()]
    pb, rq = sp["per_batch"], sp["per_request"]
    if pb:
        lines += ["", "Per batch (every engine batch priced; error = predicted / measured - 1): with drafts median "
                  f"{_f(pb['with_drafts']['median'], '{:+.1%}')} over {pb['with_drafts']['count']} batches, without "
                  f"{_f(pb['without_drafts']['median'], '{:+.1%}')} over {pb['without_drafts']['count']}."]
    lines += ["", f"Per request ({rq['requests']} requests, predicted - measured): accepted tokens median "
              f"{_f(rq['accepted_tokens_difference']['median'], '{:+.1f}')}, acceptance rate median "
              f"{_f(rq['acceptance_rate_difference']['median'], '{:+.3f}')}, verify steps median "
              f"{_f(rq['verify_steps_difference']['median'], '{:+.1f}')}.", ""]
    return lines
