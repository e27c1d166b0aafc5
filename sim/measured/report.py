"""The ``validate --measured`` report: report.md and report.json, metric by metric, every figure marked measured
(the client's) or simulated (servesim's)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim.measured.compare import FORMULAS
from sim.measured.run import MeasuredRun


@dataclass
class Outcome:
    """One measured run and what servesim predicted for it (``rows`` empty when it was not simulated)."""

    run: MeasuredRun
    rows: list[dict[str, Any]] = field(default_factory=list)
    workload: str = ""
    deployment: dict[str, Any] = field(default_factory=dict)
    cost: str = ""
    figures: dict[str, Any] = field(default_factory=dict)   # {name: (measured, simulated)}
    skipped: str | None = None                              # why it was not simulated
    notes: list[str] = field(default_factory=list)


def _fmt(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x * 1e3:.2f} ms" if abs(x) < 1 else f"{x:.3f} s" if abs(x) < 100 else f"{x:.0f} s"


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:,.1f}" if isinstance(x, float) else f"{x:,}"


def _err(e: float | None) -> str:
    return "n/a" if e is None else f"{e:+.1f}%"


def _pool(dep: dict[str, Any]) -> str:
    pool = dep.get("pool", {})
    keys = ("gpu", "tp", "pp", "replicas", "scheduler", "token_budget", "max_batch_size", "block_size", "kv_blocks",
            "enable_prefix_caching", "engine_loop", "frontend")
    shown = ", ".join(f"{k} {pool[k]}" for k in keys if k in pool and pool[k] is not None)
    return f"{dep.get('model', '?')} ({shown})" if dep else "n/a"


def section(o: Outcome) -> list[str]:
    r = o.run
    title = r.label or Path(r.source).name
    who = f"{r.client}{' ' + r.client_version if r.client_version else ''}"
    start = "the client's send" if r.definitions.clock == "client" else "queued at the engine"
    lines = [f"## {title}", "", (f"- **Measured**: {who}, `{r.source}` ({r.format}; clock: {r.definitions.clock}, "
                                 f"request start = {start}).")]
    if o.skipped:
        lines += [f"- **Not simulated**: {o.skipped}. Measured figures only."]
    else:
        lines += [f"- **Workload**: {o.workload}.", f"- **Deployment (simulated)**: {_pool(o.deployment)}.",
                  f"- **Cost model**: {o.cost}."]
    lines += [(f"- **Definitions ({r.client})**: " + "; ".join(
                  f"{label} = {FORMULAS[formula]}" for _, formula, label in r.definitions.metrics)
               + f". Percentiles: {r.definitions.percentile}. Failed requests: {r.definitions.failed}."
               + (f" {r.definitions.note}." if r.definitions.note else ""))]
    lines += ["", "| metric | stat | measured | simulated (servesim) | error |", "|---|---|---:|---:|---:|"]
    for row in o.rows:
        src = " *" if row["measured_from"] == "client per-request" else ""
        lines.append(f"| {row['label']} | {row['stat']} | {_fmt(row['measured'])}{src} | {_fmt(row['simulated'])} "
                     f"| {_err(row['error_pct'])} |")
    star = ("\\* computed from the measured per-request records with the client's definition (its own summary does "
            "not report this statistic).")
    lines += ["", star, "", "| run figure | measured | simulated (servesim) |", "|---|---:|---:|"]
    for name, (m, s) in (o.figures or {"requests completed": (len(r.succeeded), None)}).items():
        timed = name.startswith("duration")
        lines.append(f"| {name} | {_fmt(m) if timed else _num(m)} | {_fmt(s) if timed else _num(s)} |")
    notes = r.notes + o.notes
    return lines + ([""] + [f"- {n}" for n in notes] if notes else []) + [""]


def write_report(out: Path, outcomes: list[Outcome], command: str, version: str) -> tuple[Path, Path]:
    """report.md and report.json into ``out``."""
    head = ["# servesim against a measured benchmark run", "", f"Written by `{command}` (servesim {version}).", "",
            ("Every figure is marked **measured** (the benchmark client's own, on its clock and definitions) or "
             "**simulated** (servesim's prediction for the same workload, computed with the client's definitions). "
             "Error = (simulated - measured) / measured."), ""]
    md = "\n".join(head + [line for o in outcomes for line in section(o)])
    (out / "report.md").write_text(md + "\n")
    doc = {"command": command, "servesim_version": version, "runs": [{
        "label": o.run.label, "source": o.run.source, "format": o.run.format, "client": o.run.client,
        "client_version": o.run.client_version, "clock": o.run.definitions.clock, "exact": o.run.exact,
        "workload": o.workload, "deployment": o.deployment, "cost_model": o.cost, "skipped": o.skipped,
        "definitions": {k: {"formula": f, "means": FORMULAS[f], "label": lab} for k, f, lab in o.run.definitions.metrics},
        "percentile": o.run.definitions.percentile, "failed": o.run.definitions.failed,
        "metrics": [{**row, "measured_is": "measured", "simulated_is": "simulated"} for row in o.rows],
        "figures": {k: {"measured": m, "simulated": s} for k, (m, s) in o.figures.items()},
        "notes": o.run.notes + o.notes} for o in outcomes]}
    from sim.outputs.run_folder import clean_json
    (out / "report.json").write_text(json.dumps(clean_json(doc), indent=2, default=str) + "\n")
    return out / "report.md", out / "report.json"
