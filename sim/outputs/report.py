"""`servesim report`: compare run folders side by side as Markdown with PNGs and one self-contained HTML page.

The report holds a table of summary metrics (one column per run) and overlaid
CDFs (TTFT, TBT, end-to-end latency, scheduling delay). With ``run_plots`` each
run's own plots (``sim.outputs.plots.write_plots``, with ``prefix_cache.png`` for runs
with prefix caching) are added in a section per run. Runs without prefix caching show "-"
in its hit-rate row.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sim.outputs.run_folder import naming

if TYPE_CHECKING:  # matplotlib is imported only when a report is written, not when the CLI starts
    from matplotlib.figure import Figure

    from sim.outputs.plots import Run

# (row label, path into summary.json, format)
_MS = ("ms", 1e3)
METRICS: tuple[tuple[str, tuple[str, ...], Any], ...] = (
    ("scheduler", ("config", "scheduler"), str),
    ("model", ("config", "model"), str),
    ("GPU", ("config", "gpu"), str),
    ("TP x PP x replicas", (), "parallel"),
    ("token budget", ("config", "token_budget"), str),
    ("cost model", ("cost_model", "name"), str),
    ("requests completed", ("requests", "completed"), "d"),
    ("requests skipped", ("requests", "skipped"), "d"),
    ("TTFT P50 (ms)", ("latency_s", "ttft", "p50"), _MS),
    ("TTFT P90 (ms)", ("latency_s", "ttft", "p90"), _MS),
    ("TTFT P99 (ms)", ("latency_s", "ttft", "p99"), _MS),
    ("TBT P50 (ms)", ("latency_s", "tbt", "p50"), _MS),
    ("TBT P99 (ms)", ("latency_s", "tbt", "p99"), _MS),
    ("TBT max (ms)", ("latency_s", "tbt", "max"), _MS),
    ("TPOT P50 (ms)", ("latency_s", "tpot", "p50"), _MS),
    ("TPOT P99 (ms)", ("latency_s", "tpot", "p99"), _MS),
    ("E2E P50 (s)", ("latency_s", "e2e", "p50"), ".3f"),
    ("E2E P99 (s)", ("latency_s", "e2e", "p99"), ".3f"),
    ("scheduling delay P50 (s)", ("latency_s", "scheduling_delay", "p50"), ".3f"),
    ("scheduling delay P99 (s)", ("latency_s", "scheduling_delay", "p99"), ".3f"),
    ("throughput (req/s)", ("throughput", "requests_per_s"), ".3f"),
    ("goodput (req/s)", ("goodput", "requests_per_s"), ".3f"),
    ("requests meeting the goodput SLO", ("goodput", "fraction"), ".1%"),
    ("saturated (queue growing)", ("saturation", "saturated"), "yesno"),
    ("offered rate (req/s)", ("saturation", "offered_rps"), ".3f"),
    ("output tokens/s", ("throughput", "output_tokens_per_s"), ".1f"),
    ("makespan (s)", ("throughput", "makespan_s"), ".1f"),
    ("KV mean utilisation", ("kv_cache", "mean_utilization"), ".1%"),
    ("KV max utilisation", ("kv_cache", "max_utilization"), ".1%"),
    ("preemptions", ("kv_cache", "preemptions"), "d"),
    ("prefix hit rate (tokens)", ("prefix_cache", "hit_rate_tokens"), ".1%"),
    ("iterations", ("batches", "iterations"), "d"),
    ("mean batch size", ("batches", "mean_size"), ".1f"),
    ("mean tokens per iteration", ("batches", "mean_tokens"), ".1f"),
    ("mean bubble fraction", ("pipeline", "mean_bubble_fraction"), ".1%"),
    ("MFU", ("utilization", "mfu"), ".1%"),
    ("memory bandwidth utilisation", ("utilization", "memory_bandwidth_utilization"), ".1%"),
)

# (file, caption): overlaid CDFs of every report
COMPARISON_PLOTS = (("ttft_cdf.png", "TTFT"), ("tbt_cdf.png", "time between tokens"),
                    ("e2e_cdf.png", "end-to-end latency"), ("scheduling_delay_cdf.png", "scheduling delay"))

# file: (requests.csv column, axis quantity, title, unit); TTFT in ms like TBT
_CDF_PLOTS = {"ttft_cdf.png": ("ttft", "time to first token", "TTFT", "ms"),
              "e2e_cdf.png": ("e2e", "end-to-end latency", "end-to-end latency", "s"),
              "scheduling_delay_cdf.png": ("scheduling_delay", "scheduling delay", "scheduling delay", "s")}


def _comparison_figure(name: str, runs: Sequence[Run]) -> Figure:
    """One overlaid-CDF figure of the report (TBT has its own, from summary.json's gap quantiles)."""
    from sim.outputs.plots import cdf_figure, tbt_figure
    if name == "tbt_cdf.png":
        return tbt_figure(runs)
    column, quantity, title, unit = _CDF_PLOTS[name]
    return cdf_figure(runs, column, quantity, title, unit)


def _get(summary: dict, path: tuple[str, ...]) -> Any:
    v: Any = summary
    for k in path:
        if not isinstance(v, dict) or k not in v:
            return None
        v = v[k]
    return v


def _default_budget(summary: dict) -> str:
    """The token budget a run used when none was given: its scheduler's default (recorded by the run)."""
    cfg = summary.get("config", {})
    if "effective_token_budget" in cfg:
        budget = cfg["effective_token_budget"]
    else:  # a run folder from before the effective budget was recorded
        try:
            from sim.schedulers import scheduler_class
            budget = scheduler_class(cfg.get("scheduler")).default_token_budget
        except (KeyError, ValueError, TypeError, AttributeError):
            return "-"
    return "unlimited (default)" if budget is None else f"{budget} (default)"


def _pools_cell(cfg: dict, path: tuple[str, ...], fmt: Any) -> str | None:
    """A deployment cell of a disaggregated run: 'prefill / decode' (None for cells that are not per pool)."""
    pools = [cfg.get("prefill") or {}, cfg.get("decode") or {}]
    if fmt == "parallel":
        return " / ".join(f"{p.get('replicas', '-')}x TP{p.get('tp', '-')} PP{p.get('pp', '-')}" for p in pools)
    if path[:1] == ("config",) and len(path) == 2:
        return " / ".join(str(p.get(path[1], "-")) for p in pools)
    return None


def metric_cell(summary: dict, path: tuple[str, ...], fmt: Any) -> str:
    """One formatted table cell ("-" when the metric is absent)."""
    cfg = summary.get("config", {})
    if cfg.get("mode") == "disaggregated":  # prefill / decode pools side by side
        cell = _pools_cell(cfg, path, fmt)
        if cell is not None:
            return cell
    if fmt == "parallel":
        c = summary.get("config", {})
        return f"{c.get('tp', '-')} x {c.get('pp', '-')} x {c.get('replicas', '-')}"
    v = _get(summary, path)
    if v is None and path == ("config", "token_budget"):
        return _default_budget(summary)
    if v is None:
        return "-"
    if fmt is str:
        return str(v)
    if isinstance(fmt, tuple):
        return f"{v * fmt[1]:.1f}"
    if fmt == "yesno":
        return "yes" if v else "no"
    return format(v, fmt)


def metrics_table(runs: Sequence[Run]) -> list[list[str]]:
    """Rows of [metric, value per run]; the first row is the header."""
    rows = [["metric"] + [r.label for r in runs]]
    for label, path, fmt in METRICS:
        rows.append([label] + [metric_cell(r.summary, path, fmt) for r in runs])
    return rows


def _unique_labels(dirs: Sequence[Path], labels: Sequence[str] | None) -> list[str]:
    if labels:
        if len(labels) != len(dirs):
            raise ValueError(f"got {len(labels)} labels for {len(dirs)} run folders")
        return list(labels)
    names = [d.resolve().name for d in dirs]
    return [n if names.count(n) == 1 else f"{n} ({i + 1})" for i, n in enumerate(names)]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown(title: str, runs: Sequence[Run], table: list[list[str]], images: list[tuple[str, str]],
              per_run: dict[str, list[str]]) -> str:
    lines = [f"# {title}", "", "Runs:", ""]
    for r in runs:
        lines.append(f"- **{_md_escape(r.label)}**: {_md_escape(str(r.summary.get('source')))}")
    lines += ["", "| " + " | ".join(_md_escape(c) for c in table[0]) + " |",
              "|" + "---|" + "---:|" * (len(table[0]) - 1)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table[1:]]
    lines += [""]
    for name, caption in images:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    for label, files in per_run.items():
        lines += [f"## {label}", ""] + [f"![{Path(f).stem}]({f})" for f in files] + [""]
    return "\n".join(lines)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _html(title: str, runs: Sequence[Run], table: list[list[str]], images: list[tuple[str, str]],
          per_run: dict[str, list[str]], out: Path) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(c)}</th>" for c in table[0])
    body = "\n".join("<tr>" + f"<td>{esc(row[0])}</td>" + "".join(f'<td class="n">{esc(c)}</td>' for c in row[1:])
                     + "</tr>" for row in table[1:])
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(title)}</title>",
        ("<style>body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:3px 8px}td.n{text-align:right}th{background:#eee}"
         "img{max-width:100%;display:block;margin:1em 0}</style></head><body>"),
        f"<h1>{esc(title)}</h1>", "<ul>",
        *(f"<li><b>{esc(r.label)}</b>: {esc(str(r.summary.get('source')))}</li>" for r in runs),
        "</ul>", f"<table><thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>",
    ]
    for name, caption in images:
        parts += [f"<h2>{esc(caption)}</h2>", _img(out / name, caption)]
    for label, files in per_run.items():
        parts += [f"<h2>{esc(label)}</h2>"] + [_img(out / f, Path(f).stem) for f in files]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, labels: Sequence[str] | None = None,
                 title: str = "servesim run comparison", run_plots: bool = False) -> tuple[Path, Path]:
    """Write report.md (with PNGs beside it) and the self-contained report.html; returns both paths."""
    from sim.outputs.plots import load_run, save_figure, write_plots
    if not run_dirs:
        raise ValueError("give at least one run folder")
    dirs = [Path(d) for d in run_dirs]
    runs = [load_run(d, label) for d, label in zip(dirs, _unique_labels(dirs, labels))]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = []
    for name, caption in COMPARISON_PLOTS:
        save_figure(_comparison_figure(name, runs), out / name)
        images.append((name, caption))
    per_run: dict[str, list[str]] = {}
    if run_plots:
        for i, (d, run) in enumerate(zip(dirs, runs)):
            sub = f"run{i + 1}"
            per_run[run.label] = [f"{sub}/{f.name}" for f in write_plots(d, out / sub, label=run.label)]
    table = metrics_table(runs)
    md = out / "report.md"
    with naming(md):
        md.write_text(_markdown(title, runs, table, images, per_run))
    page = out / "report.html"
    with naming(page):
        page.write_text(_html(title, runs, table, images, per_run, out))
    return md, page
