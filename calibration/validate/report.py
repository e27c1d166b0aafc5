"""The validation report: run folders, ``report.json``, ``report.md`` and the plots, every number labelled measured or predicted.

Layout of the output folder::

    report.md, report.json, batch_scatter.png        all runs together
    <scheduler>-<level>/engine/                       measured run folder (summary.json, requests.csv, batches.csv)
    <scheduler>-<level>/simulator/                    predicted run folder, same schema
    <scheduler>-<level>/batch_errors.csv              every engine batch: measured and predicted seconds, errors
    <scheduler>-<level>/{batch_scatter,ttft_cdf,tbt_cdf,timeline}.png
    op_check.csv                                      per op: predicted, in situ and isolated seconds
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from sim.outputs.run_folder import FLOAT_FORMAT, clean_json, write_json, write_run

if TYPE_CHECKING:
    from calibration.validate.results import RunResult, ValidationResult

MEASURED = "measured (engine)"
PREDICTED = "predicted (simulator)"
RUN_PLOTS = ("batch_scatter.png", "ttft_cdf.png", "tbt_cdf.png", "timeline.png")
_LATENCY_NAMES = {"ttft": "TTFT", "tbt": "TBT (all gaps)", "tpot": "TPOT", "e2e": "E2E",
                  "scheduling_delay": "scheduling delay"}


# ---- plots ------------------------------------------------------------------------------------

def batch_scatter_figure(df: pd.DataFrame, title: str):
    """Predicted against measured iteration time per engine batch, coloured by kind, with y = x and +-25% lines."""
    import matplotlib.pyplot as plt

    from sim.outputs.plots import KIND_COLORS
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    if len(df):
        x = df["measured_s"].to_numpy(float) * 1e3
        y = df["predicted_s"].to_numpy(float) * 1e3
        for kind, color in KIND_COLORS.items():
            m = (df["kind"] == kind).to_numpy()
            if m.any():
                ax.scatter(x[m], y[m], s=7, alpha=0.45, color=color, label=f"{kind} ({m.sum()})", rasterized=True)
        pos = np.concatenate([x[x > 0], y[y > 0]])
        lo, hi = (pos.min() / 1.5, pos.max() * 1.5) if pos.size else (1e-3, 1.0)
        line = np.array([lo, hi])
        ax.plot(line, line, color="k", lw=1, label="y = x")
        ax.plot(line, line * 1.25, color="gray", lw=0.8, ls="--", label="+-25%")
        ax.plot(line, line * 0.75, color="gray", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi))
        med = float(np.nanmedian(df["error_total"]))
        title = f"{title}\nmedian error {med:+.1%} over {len(df)} batches"
    ax.set(xlabel="measured iteration time (ms, engine)", ylabel="predicted iteration time (ms, cost model)",
           title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _lane(ax, batches: pd.DataFrame, y: float, t0: float, t1: float) -> None:
    from sim.outputs.plots import KIND_COLORS
    from sim.outputs.timeline import batch_kind
    b = batches[(batches["stage"] == 0) & (batches["end"] > t0) & (batches["start"] < t1)]
    kinds = batch_kind(b["num_prefill_tokens"].to_numpy(), b["num_decode_tokens"].to_numpy())
    for kind, color in KIND_COLORS.items():
        k = kinds == kind
        if k.any():
            spans = list(zip((b["start"][k] - t0).to_numpy() * 1e3, (b["end"][k] - b["start"][k]).to_numpy() * 1e3))
            ax.broken_barh(spans, (y - 0.35, 0.7), facecolors=color, edgecolor="white", linewidth=0.2)


def timeline_figure(engine: pd.DataFrame, simulator: pd.DataFrame, title: str, num_batches: int = 40):
    """Batch timeline of both runs: the whole run, and a window of about ``num_batches`` engine batches mid-run."""
    import matplotlib.pyplot as plt

    from sim.outputs.plots import KIND_COLORS, gantt_window
    fig, axes = plt.subplots(2, 1, figsize=(10, 4.6))
    end = max(float(engine["end"].max()) if len(engine) else 0.0, float(simulator["end"].max()) if len(simulator) else 0.0)
    windows = [(0.0, max(end, 1e-6)), gantt_window(engine, num_batches) if len(engine) else (0.0, 1.0)]
    for ax, (t0, t1), what in zip(axes, windows, ("whole run", f"about {num_batches} engine batches mid-run")):
        _lane(ax, engine, 0, t0, t1)
        _lane(ax, simulator, 1, t0, t1)
        ax.set_yticks([0, 1], [MEASURED, PREDICTED])
        ax.invert_yaxis()
        ax.set_xlim(0, (t1 - t0) * 1e3)
        ax.set_xlabel(f"time from {t0:.3f} s (ms)")
        ax.set_title(f"{title}: {what}", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in KIND_COLORS.values()]
    axes[0].legend(handles, list(KIND_COLORS), loc="upper right", fontsize=8, ncol=3)
    return fig


def _runs_for_plots(run: "RunResult"):
    from sim.outputs.plots import Run
    return [Run(MEASURED, run.engine.summary, run.engine.requests, run.engine.batches),
            Run(PREDICTED, run.simulated.summary, run.simulated.requests, run.simulated.batches)]


def write_run_plots(run: "RunResult", folder: Path) -> list[Path]:
    """The four PNGs of ``RUN_PLOTS`` for one run."""
    from sim.outputs.plots import cdf_figure, save_figure, tbt_figure
    pair = _runs_for_plots(run)
    label = f"{run.scheduler}, {run.level.describe()}"
    figs = (batch_scatter_figure(run.batches, f"per-batch time: {label}"),
            cdf_figure(pair, "ttft", "time to first token (s)", f"TTFT: {label}"),
            tbt_figure(pair),
            timeline_figure(run.engine.batches, run.simulated.batches, label))
    return [save_figure(f, folder / name) for f, name in zip(figs, RUN_PLOTS)]


# ---- report.json and report.md --------------------------------------------------------------------

def report_dict(result: "ValidationResult") -> dict[str, Any]:
    """Everything report.json holds."""
    import dataclasses

    from sim.version import __version__
    cfg = dataclasses.asdict(result.config)
    return {
        "title": "servesim validation: engine (measured) vs simulator (predicted)",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "servesim": __version__,
        "source": result.source,
        "config": cfg,
        "device": result.device,
        "profile": result.profile,
        "notes": result.notes,
        "definitions": {
            "error": "predicted / measured - 1 (signed); abs_* are percentiles of its absolute value",
            "measured_s": "engine iteration wall time: host_s (scheduling, input preparation, bookkeeping) + "
                          "forward_s (forward pass and sampling, host clock)",
            "measured_device_s": "engine device time: the forward pass (CUDA events on a GPU, wall clock on a CPU)",
            "predicted_s": "cost model: sum over stages of stage_cost(batch) + host_time(batch), for the very "
                           "batch the engine executed",
            "request_level": "engine run (measured) against the simulator's own run of the same trace (predicted)",
            "composition_match": "engine batches whose (request, new tokens, cached tokens) items equal the "
                                 "simulator's batch at the same position; expected 100% for offline runs",
        },
        "overall": result.overall(),
        "runs": [r.to_dict() for r in result.runs],
        "op_check": ({"summary": result.ops_summary, "ops": result.ops.to_dict(orient="records")}
                     if result.ops is not None else None),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:+.1%}"


def _apct(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x:.1%}"


def _ms(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x * 1e3:.3f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
            + ["| " + " | ".join(r) + " |" for r in rows] + [""])


def _error_row(label: str, st: dict, n: int | None = None) -> list[str]:
    return [label, str(st["count"] if n is None else n), _pct(st["median"]), _pct(st["p90"]), _pct(st["p99"]),
            _apct(st["abs_median"]), _apct(st["abs_p90"]), _apct(st["abs_p99"])]


ERR_HEADER = ["", "batches", "median", "P90", "P99", "median abs", "P90 abs", "P99 abs"]


def _group_table(groups: dict[str, dict]) -> list[str]:
    rows = []
    for label, parts in groups.items():
        rows.append(_error_row(label, parts["total"]))
        rows[-1] += [_pct(parts["device"]["median"]), _pct(parts["host"]["median"])]
    return _table(ERR_HEADER + ["device median", "host median"], rows)


def report_markdown(rep: dict[str, Any]) -> str:
    """report.md from the report dictionary (tables first, then each run's plots)."""
    dev, prof, cfg = rep["device"], rep["profile"], rep["config"]
    lines = [f"# {rep['title']}", "",
             f"- trace: `{rep['source']}`; model `{cfg['model']}`; schedulers {', '.join(cfg['schedulers'])}",
             f"- engine (measured): {dev['name']} ({dev['type']}), {dev['dtype']}, attention {dev['backend']}, "
             f"CUDA graphs {'on' if dev['cuda_graphs'] else 'off'}, {dev['kv_blocks']} KV blocks of "
             f"{dev['block_size']} tokens" + (f", {dev['threads']} CPU thread(s)" if dev.get("threads") else ""),
             f"- cost model (predicted): {prof.get('name')} from `{prof.get('profile')}` measured on "
             f"{prof.get('profile_device')} ({prof.get('dtype')}, attention {prof.get('attention_backend')}), "
             f"{prof.get('profile_date')}",
             f"- created {rep['created']}, servesim {rep['servesim']}", ""]
    lines += [f"> note: {n}" for n in rep["notes"]] + ([""] if rep["notes"] else [])
    lines += ["Error = predicted / measured - 1: negative means the simulator predicts less time than the engine "
              "took. Batch-level errors price every batch the engine executed (same items, same cached context) "
              "with the cost model; request-level errors compare the engine's run with the simulator's own run "
              "of the same trace.", ""]
    lines += tails_markdown(rep["runs"])
    ov = rep["overall"]
    if ov:
        lines += ["## Batch-level error, all runs", ""]
        lines += _table(ERR_HEADER, [_error_row(f"{p} (measured vs predicted)", ov[p]) for p in ("total", "device", "host")])
        lines += ["![predicted vs measured per batch, all runs](batch_scatter.png)", ""]
    if rep.get("op_check"):
        lines += _ops_markdown(rep["op_check"])
    lines += ["## Runs", ""]
    rows = []
    for r in rep["runs"]:
        be, cm, rl = r["batch_error"], r["composition_match"], r["request_level"]
        rows.append([r["name"], r["level"]["description"], str(be["total"]["count"]), _pct(be["total"]["median"]),
                     _apct(be["total"]["abs_median"]), _apct(be["total"]["abs_p99"]),
                     _spread(r.get("repeats") or []),
                     _pct(rl["ttft"]["p50"]["error"]), _pct(rl["tbt"]["p99"]["error"]),
                     _pct(rl["throughput"]["output_tokens_per_s"]["error"]),
                     f"{cm['matching']}/{cm['engine_batches']}" + (" (offline)" if cm["offline"] else "")])
    lines += _table(["run", "load", "engine batches", "median batch error", "median abs", "P99 abs", "repeats (range)",
                     "TTFT P50 error", "TBT P99 error", "throughput error", "same batches as simulator"], rows)
    for r in rep["runs"]:
        lines += _run_markdown(r)
    return "\n".join(lines)


TAIL_COLUMNS = (("ttft_p50", "TTFT P50"), ("ttft_p90", "TTFT P90"), ("ttft_p99", "TTFT P99"), ("tbt_p50", "TBT P50"),
                ("tbt_p90", "TBT P90"), ("tbt_p99", "TBT P99"), ("e2e_p50", "E2E P50"), ("e2e_p99", "E2E P99"),
                ("throughput", "throughput"))


def _tail_cell(v: dict[str, Any]) -> str:
    rng = v.get("repeat_range")
    return _pct(v["error"]) + (f" [{rng[0]:+.0%}, {rng[1]:+.0%}]" if rng else "")


def tails_markdown(runs: list[dict[str, Any]]) -> list[str]:
    """The report's first tables: request-level tails per run, then batch-level error by kind, all batches last."""
    lines = ["## Tails: predicted against measured, per scheduler and load", "",
             "Error of each percentile (predicted / measured - 1; in brackets the range over the repeated engine "
             "runs). Drift: the machine's reference timing before and after the engine run.", ""]
    rows = []
    for r in runs:
        cap = r["level"].get("capacity")
        rows.append([r["name"], *(_tail_cell(r["tails"][k]) for k, _ in TAIL_COLUMNS),
                     "-" if cap is None else f"{cap:.4g} req/s",
                     ("**drifted** " if r.get("drifted") else "")
                     + ("-" if not r.get("probe") else f"{r['probe']['drift']:.0%}")])
    lines += _table(["run", *(h for _, h in TAIL_COLUMNS), "capacity (predicted)", "drift"], rows)
    rows = [[r["name"], *(_ms(r["tails"][k]["measured"]) for k, _ in TAIL_COLUMNS[:8])] for r in runs]
    lines += ["Measured (engine) values, ms:", ""] + _table(["run", *(h for _, h in TAIL_COLUMNS[:8])], rows)
    lines += prefix_cache_markdown(runs)
    lines += ["## Batch-level error by kind (median; all batches last)", ""]
    rows = [[r["name"], *(_pct(r["batch_error_by_kind"].get(k)) for k in ("prefill", "decode", "mixed")),
             _pct(r["batch_error"]["total"]["median"])] for r in runs]
    return lines + _table(["run", "prefill-only", "decode-only", "mixed", "all batches"], rows)


def _points(x: float | None) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{x * 100:+.1f} points"


def prefix_cache_markdown(runs: list[dict[str, Any]]) -> list[str]:
    """Prefix-cache hit rate measured (engine) against predicted (simulator) per run; nothing without caching."""
    runs = [r for r in runs if r.get("prefix_cache")]
    if not runs:
        return []
    lines = ["## Prefix cache: hit rate measured against predicted", "",
             ("Share of the prompt tokens admissions found cached (blocks in brackets). Engine and simulator run "
              "the same block manager: offline (same batches) the rates are equal; online the admission order "
              "follows timing, so they may differ a little. Difference = predicted - measured."), ""]
    rows = []
    for r in runs:
        pc = r["prefix_cache"]
        t, b = pc["hit_rate_tokens"], pc["hit_rate_blocks"]
        rows.append([r["name"], f"{_apct(t['measured'])} ({_apct(b['measured'])})",
                     f"{_apct(t['predicted'])} ({_apct(b['predicted'])})", _points(t["difference"]),
                     f"{pc['hit_tokens']['measured']} / {pc['queried_tokens']['measured']}",
                     f"{pc['hit_tokens']['predicted']} / {pc['queried_tokens']['predicted']}",
                     f"{pc['evictions']['measured']} / {pc['evictions']['predicted']}"])
    return lines + _table(["run", "hit rate measured (engine)", "hit rate predicted (simulator)", "difference",
                           "hit / queried tokens, measured", "hit / queried tokens, predicted",
                           "evictions measured / predicted"], rows)


def _repeat_medians(reps: list[dict[str, Any]]) -> list[float]:
    return [x["median_error"] for x in reps if x["median_error"] is not None]


def _spread(reps: list[dict[str, Any]]) -> str:
    meds = _repeat_medians(reps)
    return "1" if len(reps) <= 1 or not meds else f"{len(reps)} ({_pct(min(meds))}..{_pct(max(meds))})"


def _ops_markdown(oc: dict[str, Any]) -> list[str]:
    s = oc["summary"]
    lines = ["## Op check: where the batch-level error comes from", "",
             f"{s['batches']} engine batches (spread over the kinds) run again with every op timed inside the "
             f"forward pass (in situ, median of {s['repeats']} runs), against the profile's prediction for the same "
             "shapes and the same call repeated in a tight loop now (isolated, as calibration times ops). "
             "Seconds are sums over the sampled batches.", "",
             f"- forward passes measured: {_ms(s['forward_s'])} ms; ops in situ {_ms(s['ops_in_situ_s'])} ms "
             f"(outside the ops: {_apct(s['outside_ops_fraction'])}); ops predicted {_ms(s['ops_predicted_s'])} ms "
             f"({_pct(s['predicted_vs_forward'])} against the forward passes, {_pct(s['predicted_vs_in_situ'])} "
             "against the ops in situ)"]
    if s.get("ops_isolated_s") is not None:
        lines.append(f"- the same ops isolated: {_ms(s['ops_isolated_s'])} ms ({_pct(s['isolated_vs_in_situ'])} "
                     "against in situ): a large negative figure here means ops run slower inside the forward pass "
                     "than in calibration's hot loop")
    lines.append("")
    rows = [[o["op"], _ms(o["predicted_s"]), _ms(o["in_situ_s"]), _ms(o["isolated_s"]),
             _pct(o["predicted_vs_in_situ"]), _pct(o["isolated_vs_in_situ"])] for o in oc["ops"]]
    lines += _table(["op", "predicted (profile, ms)", "in situ (measured, ms)", "isolated (measured now, ms)",
                     "predicted vs in situ", "isolated vs in situ"], rows)
    return lines


def _run_markdown(r: dict[str, Any]) -> list[str]:
    be, rl, cm = r["batch_error"], r["request_level"], r["composition_match"]
    name = r["name"]
    lines = [f"### {name}", "",
             f"Scheduler `{r['scheduler']}`" + (f" (token budget {r['token_budget']})" if r["token_budget"] else "")
             + f", load: {r['level']['description']}. Requests: {r['requests']['completed_measured']} completed on "
             f"the engine (measured), {r['requests']['completed_predicted']} in the simulator (predicted), "
             f"{r['requests']['skipped']} skipped. Iterations: {r['iterations']['measured']} measured, "
             f"{r['iterations']['predicted']} predicted; preemptions {r['preemptions']['measured']} measured, "
             f"{r['preemptions']['predicted']} predicted."
             + _prefix_sentence(r.get("prefix_cache")), ""]
    what = ("offline: the engine and the simulator must form the same batches"
            if cm["offline"] else "online: timing differs, so batches may legitimately differ")
    lines += [f"Batch compositions: {cm['matching']} of {cm['engine_batches']} engine batches equal the simulator's "
              f"({_apct(cm['fraction'])}; {what}).", ""]
    if r.get("speculative"):  # acceptance measured, used and simulated (calibration.validate.speculative)
        from calibration.validate.speculative import markdown
        lines += markdown(r["speculative"])
    if len(r.get("repeats") or []) > 1:
        reps = r["repeats"]
        meds = _repeat_medians(reps)
        lines += [f"Repeats: the engine ran this pair {len(reps)} times (measured); median batch-level error per run "
                  + ", ".join(_pct(x["median_error"]) + (" (reported below)" if x["kept"] else "") for x in reps)
                  + (f"; spread {_pct(min(meds))} to {_pct(max(meds))}: the measurement's own noise." if meds else "."),
                  ""]
    lines += ["Batch-level error (every engine batch; measured iteration "
              f"median {_ms(be['measured_s']['median'])} ms, predicted median {_ms(be['predicted_s']['median'])} ms; "
              f"sum over the run {_pct(be['sum_error'])}):", ""]
    lines += _table(ERR_HEADER, [_error_row(p, be[p]) for p in ("total", "device", "host")])
    if be.get("by_kind"):
        lines += ["By batch kind (total iteration; device and host medians beside):", ""]
        lines += _group_table(be["by_kind"])
    if be.get("by_size"):
        lines += ["By batch size (tokens per iteration):", ""]
        lines += _group_table(be["by_size"])
    rows = []
    for m, label in _LATENCY_NAMES.items():
        for s in ("p50", "p90", "p99"):
            c = rl[m][s]
            rows.append([f"{label} {s.upper()} (ms)", _ms(c["measured"]), _ms(c["predicted"]), _pct(c["error"])])
    for k, label, scale in (("requests_per_s", "throughput (req/s)", 1.0),
                            ("output_tokens_per_s", "output tokens/s", 1.0), ("makespan_s", "makespan (s)", 1.0)):
        c = rl["throughput"][k]
        f = (lambda v: "-" if v is None else f"{v * scale:.3f}")
        rows.append([label, f(c["measured"]), f(c["predicted"]), _pct(c["error"])])
    lines += ["Request level:", ""]
    lines += _table(["metric", "measured (engine)", "predicted (simulator)", "error"], rows)
    lines += [f"Run folders: `{name}/engine/` (measured) and `{name}/simulator/` (predicted), each with summary.json, "
              "requests.csv, batches.csv and, unless --no-timeline, timeline.json (open in https://ui.perfetto.dev); "
              f"every engine batch with its measured and predicted times: `{name}/batch_errors.csv`.", ""]
    lines += [f"![{name} {p[:-4]}]({name}/{p})" for p in RUN_PLOTS] + [""]
    return lines


def _prefix_sentence(pc: dict[str, Any] | None) -> str:
    if not pc:
        return ""
    t = pc["hit_rate_tokens"]
    return (f" Prefix cache: {_apct(t['measured'])} of prompt tokens hit measured, {_apct(t['predicted'])} "
            f"predicted ({_points(t['difference'])}).")


def write_report(result: "ValidationResult", out: str | Path) -> tuple[Path, Path]:
    """Write every run folder, batch_errors.csv, the plots, report.json and report.md into ``out``."""
    from sim.outputs.timeline import write_timeline
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for r in result.runs:
        folder = out / r.name
        write_run(folder / "engine", r.engine.summary, r.engine.requests, r.engine.batches)
        write_run(folder / "simulator", r.simulated.summary, r.simulated.requests, r.simulated.batches)
        r.batches.to_csv(folder / "batch_errors.csv", index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
        if result.config.timeline:
            write_timeline(folder / "engine")
            write_timeline(folder / "simulator")
        if result.config.plots:
            write_run_plots(r, folder)
    rep = report_dict(result)
    if result.ops is not None:
        result.ops.to_csv(out / "op_check.csv", index=False, float_format=FLOAT_FORMAT, lineterminator="\n")
    if result.config.plots:
        from sim.outputs.plots import save_figure
        save_figure(batch_scatter_figure(result.all_batches, "per-batch time, all runs"), out / "batch_scatter.png")
    write_json(out / "report.json", rep)
    md = out / "report.md"
    md.write_text(report_markdown(clean_json(rep)) + "\n")
    return md, out / "report.json"
