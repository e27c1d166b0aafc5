"""Sizing for a target rate: does one deployment meet the SLO at R req/s (``capacity --qps``), and which deployment
is cheapest at R (``plan --qps``): each configuration's capacity scaled out by whole replicas."""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from sim.capacity.point import evaluate_point, point_passes
from sim.serving.load_verdict import MIN_REQUESTS


def check_at_rate(search: Any, qps: float, *, executor: cf.Executor | None = None,
                  progress: bool | None = None) -> dict[str, Any]:
    """Run each of ``search``'s seeds at ``qps`` in full (no early stop) and judge them by its SLO and pass rule.

    Returns ``passes``, the per-seed verdicts, the median metrics, each bound's use (value / bound), the bounds
    broken, the saturation verdict and goodput, and ``lines``: the same in words for the console.
    """
    from sim.capacity.search import InlineExecutor
    executor = executor or InlineExecutor()
    specs = [dataclasses.replace(search.point_spec(s, qps), slo=None) for s in search.seeds]
    recs = [f.result() for f in [executor.submit(evaluate_point, sp) for sp in specs]]
    errors = [r["error"] for r in recs if r.get("error")]
    if errors:
        return {"qps": qps, "passes": False, "error": errors[0], "lines": [f"{search.label}: error: {errors[0]}"]}
    verdicts = [bool(point_passes(r, search.slo)) for r in recs]
    passes = (sum(verdicts) * 2 >= len(verdicts)) if search.pass_rule == "median" else all(verdicts)
    metrics: dict[str, Any] = {}
    for k in recs[0]["metrics"]:
        vals = [r["metrics"][k] for r in recs if isinstance(r["metrics"].get(k), (int, float))]
        metrics[k] = float(np.median(vals)) if vals else None
    broken = sorted({b for r in recs for b in search.slo.binding(r["metrics"])})
    use = search.slo.headroom(metrics)
    lines = [f"{search.label} at {qps:g} req/s: {'MEETS' if passes else 'FAILS'} the SLO "
             f"({sum(verdicts)} of {len(verdicts)} seeds pass; rule: {search.pass_rule})",
             "bounds (median over seeds): " + ", ".join(f"{k} {metrics[k] * 1e3:.1f} ms = {v:.0%} of its bound"
                                                        for k, v in use.items())]
    if broken:
        lines.append(f"broken in some seed: {', '.join(broken)}")
    sat = [r["metrics"].get("saturated") for r in recs]
    if all(x is None for x in sat):  # too few requests (or all at once): the SLO alone cannot tell a burst from a rate
        lines.append(f"saturation: no verdict (fewer than {MIN_REQUESTS} requests per seed, or all at once): the SLO "
                     f"verdict covers a burst, not a sustained {qps:g} req/s; raise -n or --duration")
    else:
        lines.append(f"saturation: {sum(bool(x) for x in sat)} of {len(sat)} seeds saturated (queue growing), median "
                     f"offered {metrics.get('offered_rps') or 0:.3g} req/s")
    if metrics.get("goodput_rps") is not None:
        lines.append(f"goodput: {metrics['goodput_rps']:.3g} req/s ({metrics['good_fraction']:.1%} of requests meet "
                     f"the per-request SLO)")
    return {"label": search.label, "qps": qps, "passes": passes, "seeds": search.seeds, "seed_passes": verdicts,
            "metrics": metrics, "bound_use": use, "broken": broken, "lines": lines}


def size_for_rate(table: pd.DataFrame, qps: float) -> pd.DataFrame:
    """The configurations that ran, each scaled to the whole replicas its capacity needs for ``qps``, cheapest first.

    A configuration of r replicas with capacity C serves ``qps`` with ceil(qps / (C / r)) replicas (round-robin
    replicas share the load evenly); columns ``replicas_needed``, ``gpus_needed``, ``usd_per_hour_at_rate`` and
    ``headroom`` (the scaled capacity over ``qps``, minus 1). Rows without capacity are left out.
    """
    ok = table[(table["status"] == "ok") & (table["capacity_qps"].fillna(0) > 0)].copy()
    if ok.empty:
        return ok
    per_replica = ok["capacity_qps"] / ok["replicas"]
    need = np.ceil(qps / per_replica - 1e-9).astype(int).clip(lower=1)
    ok["replicas_needed"] = need
    ok["gpus_needed"] = need * ok["gpus"] // ok["replicas"]
    ok["usd_per_hour_at_rate"] = ok["usd_per_hour"] / ok["replicas"] * need
    ok["headroom"] = need * per_replica / qps - 1
    key = "usd_per_hour_at_rate" if ok["usd_per_hour_at_rate"].notna().any() else "gpus_needed"
    return ok.sort_values([key, "gpus_needed", "headroom"], ascending=[True, True, False],
                          kind="stable").reset_index(drop=True)


def scaled_config(config: Any, replicas: int) -> Any:
    """``config`` with ``replicas`` replicas (a disaggregated one: both pools scaled by the same factor)."""
    if hasattr(config, "replicas"):
        return dataclasses.replace(config, replicas=replicas)
    raise ValueError("a disaggregated configuration is sized by its pools, not scaled by replicas")


def replicas_label(row: pd.Series) -> str:
    """E.g. '3 x (2x h100-sxm ...)': the sized deployment in words."""
    n = int(row["replicas_needed"])
    return f"{n} x [{row['config']}]" if int(row["replicas"]) == 1 else f"{row['config']} scaled to {n} replicas"
