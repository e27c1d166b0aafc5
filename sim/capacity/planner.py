"""Configuration search: capacity of every GPU x parallelism x scheduler x budget within a GPU limit, and the cheapest.

:func:`enumerate_candidates` lists TP x PP x replicas (at most ``max_gpus`` GPUs) per GPU type,
marks those whose weights (or not even one KV block) do not fit as infeasible with the memory
planner's reason, and crosses the rest with the schedulers and token budgets (a budget only varies
schedulers that chunk prompts; the others run once with their default). :func:`plan` runs every
feasible candidate's capacity search (:mod:`sim.capacity.search`) with the points of all searches in
parallel processes (or on Ray), records every finished point in ``results.jsonl`` (a rerun resumes
from it) and returns the table sorted by capacity per GPU, with the cost per million output tokens
from GPU hourly prices, and the Pareto front of latency against throughput.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import os
import re
import signal
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.capacity.candidates import Candidate, enumerate_candidates, enumerate_disaggregated, powers_of_two
from sim.capacity.search import (
    CapacitySearch,
    InlineExecutor,
    ProfileRef,
    ResultsFile,
    RunStats,
    Slo,
    Workload,
    run_searches,
)
from sim.catalog.hardware import get_gpu
from sim.inputs import read_json_object
from sim.outputs.run_folder import naming

__all__ = ["Candidate", "PlanResult", "enumerate_candidates", "enumerate_disaggregated", "plan", "powers_of_two"]

RESULTS_FILE = "results.jsonl"
#: the highest GPU-hour price a price file may give (USD); anything above is a typo, not a price
MAX_PRICE = 1e6
TABLE_COLUMNS = ["config", "mode", "gpu", "tp", "ep", "pp", "replicas", "gpus", "scheduler", "token_budget",
                 "status", "capacity_qps", "capacity_min", "capacity_max", "qps_per_gpu", "output_tok_s_per_gpu", "usd_per_hour",
                 "usd_per_m_output_tokens", "goodput_qps", "tbt_p99", "scheduling_delay_p50", "ttft_p99",
                 "binding", "limit", "saturated_rps", "kv_blocks", "skipped", "simulations", "cost_model", "note"]


# ---- prices -----------------------------------------------------------------------------------------

def default_prices(gpus: Iterable[str]) -> dict[str, float]:
    """Catalogue GPU-hour prices (``sim.catalog.hardware``'s ``hourly_price_usd``)."""
    return {get_gpu(g).name: get_gpu(g).hourly_price_usd for g in gpus}


def load_prices(path: str | os.PathLike[str]) -> dict[str, float]:
    """Read ``{"gpu name": usd_per_gpu_hour, ...}`` from a JSON file (names as in ``servesim gpus``)."""
    path = os.fspath(path)
    data = read_json_object(path, expected='a JSON object {"gpu": usd_per_gpu_hour, ...}', what="price file")
    prices = {}
    for k, v in data.items():
        try:
            name = get_gpu(k).name
        except ValueError as exc:
            raise ValueError(f"{path}: field '{k}': {exc}") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= MAX_PRICE:
            raise ValueError(f"{path}: field '{k}': expected a price in USD per GPU-hour from 0 to {MAX_PRICE:g}, "
                             f"got {v!r}")
        prices[name] = float(v)
    return prices


# ---- executors ----------------------------------------------------------------------------------------

def _init_worker(parent: int | None = None) -> None:
    """Worker processes leave Ctrl-C to the parent, which stops cleanly, and exit when the parent dies (kill -9
    included): on Linux the kernel sends SIGTERM (prctl PR_SET_PDEATHSIG); elsewhere a thread polls the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = parent or os.getppid()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)

    def watch() -> None:
        import time
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)
    import threading
    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


class RayExecutor(cf.Executor):
    """Runs jobs as Ray tasks (``ray.init(address=...)``, or a local Ray instance for ``"local"``)."""

    def __init__(self, address: str = "local") -> None:
        try:
            import ray
        except ImportError:
            raise ValueError("--ray needs Ray: pip install 'servesim[ray]'") from None
        self._ray = ray
        self._owns = not ray.is_initialized()
        if self._owns:
            ray.init(address=None if address == "local" else address, include_dashboard=False,
                     ignore_reinit_error=True, log_to_driver=False)
        self._remote: dict[Any, Any] = {}

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[override]
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn)
        return self._remote[fn].remote(*args, **kwargs).future()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        if self._owns and self._ray.is_initialized():
            self._ray.shutdown()


def make_executor(jobs: int | None = None, ray: str | None = None) -> cf.Executor:
    """Ray when ``ray`` is an address or "local"; else ``jobs`` local processes (1: in this process)."""
    if ray:
        return RayExecutor(ray)
    jobs = jobs or os.cpu_count() or 1
    if jobs <= 1:
        return InlineExecutor()
    return cf.ProcessPoolExecutor(max_workers=jobs, initializer=_init_worker, initargs=(os.getpid(),))


# ---- the plan ----------------------------------------------------------------------------------------

@dataclass
class PlanResult:
    """The sorted table (one row per candidate), the Pareto front, all passing points, what ran."""

    table: pd.DataFrame
    pareto: pd.DataFrame
    points: pd.DataFrame
    stats: RunStats
    results_path: Path | None = None
    figure_path: Path | None = None
    results: list = field(default_factory=list)


def sustained_output_tok_s(qps: float, metrics: dict[str, Any]) -> float | None:
    """Output tokens per second a rate sustains: rate x mean output tokens per completed request.

    The one definition plan.csv and pareto.csv share (a run's own tokens/s also counts its drain).
    """
    if not metrics or not metrics.get("completed"):
        return None
    return qps * metrics["output_tokens"] / metrics["completed"]


def _row(c: Candidate, res, prices: dict[str, float], fallback: str | None = None,
         slo_names: Iterable[str] = ()) -> dict[str, Any]:
    row: dict[str, Any] = {k: None for k in [*TABLE_COLUMNS, *slo_names]}
    row.update(config=c.label, mode=c.mode, gpu=c.gpu, tp=c.tp, ep=c.ep, pp=c.pp, replicas=c.replicas, gpus=c.gpus,
               scheduler=c.scheduler,
               token_budget=c.token_budget, kv_blocks=c.kv_blocks)
    price = prices.get(c.gpu)
    row["usd_per_hour"] = price * c.gpus if price is not None else None
    if c.infeasible:
        row.update(status="infeasible", note=c.infeasible)
        return row
    row["simulations"] = res.num_simulations
    if res.error:
        row.update(status="error", note=res.error)
        return row
    m = res.metrics
    row.update(status="ok", capacity_qps=res.capacity, capacity_min=res.capacity_min,
               capacity_max=res.capacity_max, qps_per_gpu=res.capacity / c.gpus,
               tbt_p99=m.get("tbt_p99"), scheduling_delay_p50=m.get("scheduling_delay_p50"),
               ttft_p99=m.get("ttft_p99"), skipped=m.get("skipped"), binding=",".join(res.binding) or None,
               limit=res.limit, saturated_rps=res.saturated_rps,
               goodput_qps=res.capacity * m["good_fraction"] if m.get("good_fraction") is not None else None,
               **{name: m.get(name) for name in slo_names})
    notes = [fallback] if fallback else []
    if res.capacity == 0:
        notes.append("fails the SLO even at the lowest rate tried")
    if not res.bounded:
        notes.append("passes even at the highest rate tried, 16x saturation: a lower bound; raise --duration")
    if m.get("skipped"):
        notes.append(f"{int(m['skipped'])} requests per run skipped (never servable)")
    row["note"] = "; ".join(notes) or None
    tok_s = sustained_output_tok_s(res.capacity, m)
    if tok_s is not None:
        row["output_tok_s_per_gpu"] = tok_s / c.gpus
        if row["usd_per_hour"] is not None and tok_s > 0:
            row["usd_per_m_output_tokens"] = row["usd_per_hour"] / (tok_s * 3600) * 1e6
    return row


def slo_columns(slo: Slo) -> list[str]:
    """The SLO's bounds that the fixed columns lack (plan.csv gets a column per bound the user gave)."""
    return [name for name, _ in slo.bounds if name not in TABLE_COLUMNS]


def sort_table(table: pd.DataFrame, by: str = "capacity") -> pd.DataFrame:
    """Feasible rows by capacity per GPU (descending) or cost per million output tokens (ascending), then the rest."""
    key = {"capacity": ("qps_per_gpu", False), "cost": ("usd_per_m_output_tokens", True)}[by]
    ok = table[table["status"] == "ok"].sort_values([key[0], "gpus"], ascending=[key[1], True], kind="stable",
                                                    na_position="last")
    rest = table[table["status"] != "ok"]
    return pd.concat([ok, rest], ignore_index=True)


def pareto_front(points: pd.DataFrame, x: str = "qps_per_gpu", y: str = "tbt_p99") -> pd.DataFrame:
    """Points not dominated by another with at least as much ``x`` (throughput) and at most as much ``y`` (latency)."""
    if points.empty:
        return points.copy()
    p = points.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, True], kind="stable")
    best = np.minimum.accumulate(p[y].to_numpy())
    keep = np.ones(len(p), dtype=bool)
    keep[1:] = p[y].to_numpy()[1:] < best[:-1]
    return p[keep].sort_values(x, kind="stable").reset_index(drop=True)


def passing_points(candidates: list[Candidate], searches: dict[int, CapacitySearch]) -> pd.DataFrame:
    """Every simulated (seed, rate) that met the SLO, with its latency and throughput per GPU (points.csv)."""
    rows = []
    for i, c in enumerate(candidates):
        s = searches.get(i)
        if s is None:
            continue
        for p in s.points:
            m = p["metrics"]
            if p["passed"] and m:
                rows.append({"config": c.label, "mode": c.mode, "gpu": c.gpu, "tp": c.tp, "ep": c.ep, "pp": c.pp, "replicas": c.replicas,
                             "scheduler": c.scheduler, "token_budget": c.token_budget, "seed": p["seed"],
                             "qps": p["qps"], "qps_per_gpu": p["qps"] / c.gpus,
                             "output_tok_s_per_gpu": (sustained_output_tok_s(p["qps"], m) or 0) / c.gpus,
                             "tbt_p99": m["tbt_p99"], "ttft_p99": m["ttft_p99"],
                             "scheduling_delay_p50": m["scheduling_delay_p50"]})
    return pd.DataFrame(rows)


def plot_pareto(points: pd.DataFrame, front: pd.DataFrame, path: str | os.PathLike[str], *,
                title: str = "", latency: str = "tbt_p99", configs: pd.DataFrame | None = None) -> Path:
    """Latency vs requests/s per GPU: each configuration at its capacity (``configs``, the table's rows),
    every passing seed run faintly behind, the front (built from the configurations) as a line; saved as PNG."""
    from sim.outputs.plots import plt, save_figure  # Agg backend, shared figure writer

    fig, ax = plt.subplots(figsize=(9, 5.5))
    both = pd.concat([d for d in (points, configs) if d is not None and not d.empty])
    markers = dict(zip(sorted(both["gpu"].unique()), "os^Dv<>p"))
    colors = dict(zip(sorted(both["scheduler"].unique()), plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for (gpu, sched), g in points.groupby(["gpu", "scheduler"], sort=True):
        ax.scatter(g["qps_per_gpu"], g[latency] * 1e3, s=8, alpha=0.2, marker=markers[gpu], color=colors[sched])
    if configs is not None and not configs.empty:
        for (gpu, sched), g in configs.groupby(["gpu", "scheduler"], sort=True):
            ax.scatter(g["qps_per_gpu"], g[latency] * 1e3, s=30, marker=markers[gpu], color=colors[sched],
                       label=f"{sched} on {gpu} (at capacity)")
    if not front.empty:
        ax.step(front["qps_per_gpu"], front[latency] * 1e3, where="post", color="black", lw=1.2,
                label="Pareto front")
        ax.scatter(front["qps_per_gpu"], front[latency] * 1e3, s=40, facecolors="none", edgecolors="black",
                   zorder=3)
        lines = []
        for k, (_, r) in enumerate(front.iterrows(), start=1):
            ax.annotate(str(k), (r["qps_per_gpu"], r[latency] * 1e3), fontsize=8, fontweight="bold",
                        xytext=(4, -10), textcoords="offset points")
            lines.append(f"{k}: {r['config']}")
        ax.text(1.02, 0.0, "front:\n" + "\n".join(lines), transform=ax.transAxes, fontsize=7, va="bottom",
                family="monospace")
    ax.set_xlabel("request rate per GPU (req/s) meeting the SLO; faint: single-seed runs that passed")
    ax.set_ylabel(f"{latency.replace('_', ' ').upper()} (ms)")
    import textwrap  # a long SLO would run past the axes (and the legend beside them): wrap it instead
    ax.set_title("\n".join(textwrap.wrap(title or "latency vs throughput", 70)), fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def plan(candidates: list[Candidate], workload: Workload, slo: Slo | None = None, *,
         seeds: Iterable[int] = (0, 1, 2), rel_tol: float = 0.05, pass_rule: str = "median",
         prices: dict[str, float] | None = None, out_dir: str | os.PathLike[str] | None = None,
         executor: cf.Executor | None = None, progress: bool | None = None,
         profile: ProfileRef | None = None, goodput: dict[str, float] | None = None,
         clients: tuple[int, float] | None = None) -> PlanResult:
    """Run the capacity search of every feasible candidate and tabulate them.

    With ``out_dir``, points go to ``out_dir/results.jsonl`` (a rerun resumes from it) and the
    table to ``plan.csv``, the front to ``pareto.csv`` and ``pareto.png``. With ``profile``, the
    candidates it can price (its ``fallback()`` is None) use its cost model; the others the
    roofline, with the reason in their note.
    """
    slo = slo or Slo()
    seeds = list(seeds)
    prices = {**default_prices({c.gpu for c in candidates}), **(prices or {})}
    out = Path(out_dir) if out_dir is not None else None
    store = ResultsFile(out / RESULTS_FILE if out is not None else None)
    fallback = {i: profile.fallback(c.config) if profile is not None else None
                for i, c in enumerate(candidates) if c.config is not None}
    searches = {i: CapacitySearch(c.config, workload, slo, seeds=seeds, rel_tol=rel_tol, pass_rule=pass_rule,
                                  label=c.label, profile=profile if fallback[i] is None else None,
                                  goodput=goodput, clients=clients)
                for i, c in enumerate(candidates) if c.config is not None}
    own = executor is None
    executor = executor if executor is not None else InlineExecutor()
    try:
        stats = run_searches(list(searches.values()), executor=executor, results=store, progress=progress)
    finally:
        store.close()
        if own:
            executor.shutdown(wait=True, cancel_futures=True)
    rows = []
    results = []
    for i, c in enumerate(candidates):
        res = searches[i].result() if i in searches else None
        results.append(res)
        rows.append(_row(c, res, prices, fallback.get(i), slo_columns(slo)))
        if i in searches:
            rows[-1]["cost_model"] = "roofline" if searches[i].profile is None else "profiled"
    table = sort_table(pd.DataFrame(rows, columns=[*TABLE_COLUMNS, *slo_columns(slo)]))
    points = passing_points(candidates, searches)
    # the front is built from the table (each configuration at its capacity, median over seeds), so that
    # every figure in pareto.csv is the one plan.csv gives for the same configuration
    front = pareto_front(table[(table["status"] == "ok") & (table["capacity_qps"] > 0)])
    result = PlanResult(table, front, points, stats, store.path, None, results)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name, frame in (("plan.csv", table), ("pareto.csv", front), ("points.csv", points)):
            with naming(out / name):
                frame.to_csv(out / name, index=False, float_format="%.6g", lineterminator="\n")
        if not points.empty:
            model = next(c.config.model_spec().name for c in candidates if c.config is not None)
            result.figure_path = plot_pareto(points, front, out / "pareto.png", title=f"{model}: SLO {slo.describe()}",
                                             configs=table[table["status"] == "ok"])
    return result


# ---- text output ---------------------------------------------------------------------------------------

def _fmt(v: Any, spec: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _slo_header(name: str) -> tuple[str, float, str]:
    """(column header, scale, format) of an SLO metric: TBT and TPOT in ms, the others in seconds."""
    lat, _, stat = name.rpartition("_")
    short = {"scheduling_delay": "delay", "ttft": "TTFT", "tbt": "TBT", "tpot": "TPOT", "e2e": "E2E"}[lat]
    if lat in ("tbt", "tpot"):
        return f"{short}{stat[1:] if stat[0] == 'p' else stat} ms", 1e3, ".0f"
    return f"{short}{stat[1:] if stat[0] == 'p' else stat} s", 1.0, ".2f"


#: digits in an infeasible row's reason: rows whose reasons differ only there are printed as one line
_NUMBERS = re.compile(r"\d+(\.\d+)?")


def format_table(table: pd.DataFrame, limit: int | None = None, slo: Slo | None = None) -> str:
    """Fixed-width text of the plan table: a column per SLO bound (``slo``; default Sarathi-Serve's two), the bound
    that binds just above capacity and the knob most often full; infeasible rows whose reasons differ only in their
    figures are folded into one line with their count."""
    names = [n for n, _ in (slo or Slo()).bounds]
    cols = [_slo_header(n) for n in names]
    head = (f"{'gpu':<10}{'TPxPPxR':>9}{'gpus':>5} {'scheduler':<10}{'budget':>7}{'cap qps':>9}{'seeds':>15}"
            f"{'qps/gpu':>9}{'goodput':>8}{'$/h':>7}{'$/Mtok':>8}" + "".join(f"{h:>11}" for h, _, _ in cols)
            + f"{'sims':>5}  binding / limit")
    lines = [head, "-" * len(head)]
    rows = table if limit is None else table.head(limit)
    folded: dict[tuple, list] = {}
    for r in rows.itertuples(index=False):
        disagg = getattr(r, "mode", "aggregated") == "disaggregated"
        par = "P/D" if disagg else f"{r.tp}x{r.pp}x{r.replicas}" + (f"E{r.ep}" if r.ep and r.ep > 1 else "")
        budget = _fmt(r.token_budget if r.token_budget == r.token_budget else None, ".0f")
        if r.status != "ok":
            key = (r.gpu, r.status, _NUMBERS.sub("#", str(r.note)))
            if key not in folded:
                folded[key] = []
                lines.append((key, f"{r.gpu:<10}{par:>9}{r.gpus:>5} {r.scheduler:<10}{budget:>7}  "
                                   f"{r.status.upper()}: {r.note}"))
            folded[key].append(r)
            continue
        spread = f"{_fmt(r.capacity_min, '.3g')}-{_fmt(r.capacity_max, '.3g')}"
        values = "".join(f"{_fmt(_num(getattr(r, n, None), k), f):>11}" for n, (_, k, f) in zip(names, cols))
        why = "/".join(str(v) for v in (r.binding, r.limit) if isinstance(v, str) and v)
        lines.append(f"{r.gpu:<10}{par:>9}{r.gpus:>5} {r.scheduler:<10}{budget:>7}{_fmt(r.capacity_qps, '.3g'):>9}"
                     f"{spread:>15}{_fmt(r.qps_per_gpu, '.3g'):>9}{_fmt(_num(r.goodput_qps), '.3g'):>8}"
                     f"{_fmt(r.usd_per_hour, '.1f'):>7}{_fmt(r.usd_per_m_output_tokens, '.2f'):>8}{values}"
                     f"{_fmt(r.simulations, '.0f'):>5}  {why or '-'}"
                     + (f"  [{r.config}]" if disagg else "")
                     + (f"  ({r.note})" if isinstance(r.note, str) and r.note else ""))
    out = []
    for line in lines:
        if isinstance(line, tuple):
            key, text = line
            n = len(folded[key])
            out.append(text if n == 1 else f"{text}  [and {n - 1} more like it: {n} configurations]")
        else:
            out.append(line)
    return "\n".join(out)


def _num(v: Any, scale: float = 1.0) -> float | None:
    """A table cell as a number (None for missing or NaN), times ``scale``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v * scale
