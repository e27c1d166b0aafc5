"""Perfetto timelines: a run folder (summary.json, requests.csv, batches.csv) as Chrome trace event JSON.

Built from the run folder alone, so simulator and engine runs get the same
picture. Layout (times in microseconds of simulated or measured time):

- one process per replica ("replica R");
- in it one track per pipeline stage ("stage S") with a complete slice ("X"
  event) per batch execution named prefill, decode or mixed, with args
  batch_id, prefill_tokens, decode_tokens, batch_size, prefill_items and
  source ("predicted" or "measured"); a gap between slices is
  a bubble or idle time;
- a counter track "KV blocks" (used and free blocks at stage-0 batch starts, where they change);
- request tracks ("requests K"): requests packed into lanes, each a slice
  "request ID" from arrival to completion with nested "queued", "prefill"
  and "decode" slices (first scheduled, first token, completion). With
  preemptions a request's prefill and decode phases are approximate (the
  run folder keeps only these four times).

Request slices are capped (``max_requests``, the first requests by arrival;
default 1000) to keep the file small. Batches are all kept unless ``window``
(start, end seconds) cuts the timeline to the slices that overlap it or the run holds more than
``DEFAULT_MAX_BATCH_SLICES`` (then it stops where they are reached, and says so); a slice takes ~200 bytes.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sim.cli.errors import entry_point
from sim.outputs.run_folder import naming, read_run

DEFAULT_MAX_REQUESTS = 1000
#: batch slices kept by default (about 200 bytes each: ~10 MB); past it the timeline stops at the time the cap is
#: reached and says so (issue 32: 500 requests at PP8 made 150,000 slices, 33 MB). ``--window`` shows later times.
DEFAULT_MAX_BATCH_SLICES = 50_000
_REQUEST_TID0 = 1000
_SOURCES = ("predicted", "measured")


def timing_source(summary: dict) -> str:
    """'measured' for engine runs, 'predicted' for simulated ones.

    A summary may say so itself (``summary["timing"]``); otherwise a cost model
    named like the engine ("engine", "measured") means measured.
    """
    explicit = summary.get("timing")
    if explicit in _SOURCES:
        return explicit
    name = str((summary.get("cost_model") or {}).get("name", "")).lower()
    return "measured" if name in ("engine", "measured") or name.startswith("engine") else "predicted"


def batch_kind(prefill_tokens: np.ndarray, decode_tokens: np.ndarray) -> np.ndarray:
    """'prefill', 'decode' or 'mixed' per batch row."""
    pre = np.asarray(prefill_tokens) > 0
    dec = np.asarray(decode_tokens) > 0
    return np.where(pre & dec, "mixed", np.where(pre, "prefill", "decode"))


def _us(seconds: float) -> float:
    return round(seconds * 1e6, 3)


def _meta(name: str, pid: int, tid: int | None, value: Any) -> dict:
    """A metadata event: process_name/thread_name (a label) or process_sort_index/thread_sort_index (a rank)."""
    ev = {"name": name, "ph": "M", "pid": pid, "args": {"sort_index" if name.endswith("sort_index") else "name": value}}
    if tid is not None:
        ev["tid"] = tid
    return ev


def _lanes(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Greedy interval packing: the lowest free lane for each interval, in the given (arrival) order."""
    free: list[int] = []
    busy: list[tuple[float, int]] = []
    lanes = np.empty(starts.size, dtype=np.int64)
    count = 0
    for i, (s, e) in enumerate(zip(starts.tolist(), ends.tolist())):
        while busy and busy[0][0] <= s:
            heapq.heappush(free, heapq.heappop(busy)[1])
        if free:
            lane = heapq.heappop(free)
        else:
            lane, count = count, count + 1
        lanes[i] = lane
        heapq.heappush(busy, (e, lane))
    return lanes


def _batch_events(batches: pd.DataFrame, summary: dict) -> list[dict]:
    source = timing_source(summary)
    has_source = "source" in batches.columns
    kinds = batch_kind(batches["num_prefill_tokens"].to_numpy(), batches["num_decode_tokens"].to_numpy())
    events = []
    cols = [batches[c].to_numpy() for c in ("replica", "stage", "batch_id", "start", "end", "num_prefill_tokens",
                                            "num_decode_tokens", "batch_size", "num_prefill_items")]
    srcs = batches["source"].astype(str).to_numpy() if has_source else None
    for i, (rep, st, bid, t0, t1, pre, dec, size, items) in enumerate(zip(*(c.tolist() for c in cols))):
        events.append({
            "name": str(kinds[i]), "cat": "batch", "ph": "X", "pid": int(rep) + 1, "tid": int(st) + 1,
            "ts": _us(t0), "dur": _us(t1 - t0),
            "args": {"batch_id": int(bid), "prefill_tokens": int(pre), "decode_tokens": int(dec),
                     "batch_size": int(size), "prefill_items": int(items), "source": srcs[i] if srcs is not None else source},
        })
    return events


def _kv_events(batches: pd.DataFrame, blocks: int | None) -> list[dict]:
    """Counter samples of used (and free) KV blocks at stage-0 batch starts, only where the value changes."""
    first = batches[batches["stage"] == 0].sort_values(["replica", "start"], kind="stable")
    out = []
    last: dict[int, int] = {}
    for rep, t, used in zip(first["replica"].tolist(), first["start"].tolist(), first["kv_blocks_used"].tolist()):
        if last.get(rep) == used:
            continue
        last[rep] = used
        args = {"used": int(used)}
        if blocks:
            args["free"] = int(blocks) - int(used)
        out.append({"name": "KV blocks", "ph": "C", "pid": int(rep) + 1, "ts": _us(t), "args": args})
    return out


def _request_events(requests: pd.DataFrame, max_requests: int | None) -> tuple[list[dict], dict[int, int]]:
    """Request slices (capped) and the number of lanes used per replica."""
    df = requests.dropna(subset=["arrival_time", "completion_time"])
    df = df.sort_values("arrival_time", kind="stable")
    if max_requests is not None:
        df = df.iloc[:max_requests]
    events: list[dict] = []
    lanes_per_replica: dict[int, int] = {}
    for rep, g in df.groupby("replica", sort=True):
        pid = int(rep) + 1
        lanes = _lanes(g["arrival_time"].to_numpy(float), g["completion_time"].to_numpy(float))
        lanes_per_replica[int(rep)] = int(lanes.max()) + 1 if lanes.size else 0
        rows = zip(lanes.tolist(), g["request_id"].astype(str).tolist(), g["arrival_time"].tolist(),
                   g["first_scheduled_time"].tolist(), g["first_token_time"].tolist(), g["completion_time"].tolist(),
                   g["prompt_tokens"].tolist(), g["output_tokens"].tolist(), g["num_preemptions"].tolist())
        for lane, rid, arr, sched, first, done, prompt, output, pre in rows:
            tid = _REQUEST_TID0 + lane
            args = {"request_id": rid, "prompt_tokens": int(prompt), "output_tokens": int(output),
                    "preemptions": int(pre)}
            events.append({"name": f"request {rid}", "cat": "request", "ph": "X", "pid": pid, "tid": tid,
                           "ts": _us(arr), "dur": _us(done - arr), "args": args})
            for name, a, b in (("queued", arr, sched), ("prefill", sched, first), ("decode", first, done)):
                if not (math.isnan(a) or math.isnan(b)) and b > a:
                    events.append({"name": name, "cat": "request", "ph": "X", "pid": pid, "tid": tid,
                                   "ts": _us(a), "dur": _us(b - a), "args": {"request_id": rid}})
    return events, lanes_per_replica


def build_timeline(summary: dict, requests: pd.DataFrame, batches: pd.DataFrame, *,
                   max_requests: int | None = DEFAULT_MAX_REQUESTS,
                   window: tuple[float, float] | None = None,
                   max_batch_slices: int | None = DEFAULT_MAX_BATCH_SLICES) -> dict:
    """The Chrome trace event JSON object of a run (see the module doc); ``max_requests=None`` keeps every request,
    ``max_batch_slices=None`` every batch slice (else, without a ``window``, the timeline ends where that many
    have started)."""
    if window is not None:
        t0, t1 = window
        batches = batches[(batches["end"] >= t0) & (batches["start"] <= t1)]
        requests = requests[(requests["completion_time"] >= t0) & (requests["arrival_time"] <= t1)]
    in_run, requests_in_run, cut_at = len(batches), len(requests), None
    if window is None and max_batch_slices is not None and len(batches) > max_batch_slices:
        cut_at = float(np.sort(batches["start"].to_numpy(float))[max_batch_slices - 1])
        batches = batches[batches["start"] <= cut_at].head(max_batch_slices)
        requests = requests[requests["arrival_time"] <= cut_at]
    config = summary.get("config", {})
    blocks = (summary.get("kv_cache") or {}).get("blocks_per_replica")
    replicas = sorted(set(batches["replica"].astype(int).tolist()) |
                      set(requests["replica"].dropna().astype(int).tolist()))
    stages = sorted(set(batches["stage"].astype(int).tolist())) or [0]
    events: list[dict] = []
    req_events, lanes = _request_events(requests, max_requests)
    for rep in replicas:
        pid = rep + 1
        events.append(_meta("process_name", pid, None, f"replica {rep}"))
        events.append(_meta("process_sort_index", pid, None, rep))
        for s in stages:
            events.append(_meta("thread_name", pid, s + 1, f"stage {s}"))
            events.append(_meta("thread_sort_index", pid, s + 1, s))
        for k in range(lanes.get(rep, 0)):
            events.append(_meta("thread_name", pid, _REQUEST_TID0 + k, f"requests {k}"))
            events.append(_meta("thread_sort_index", pid, _REQUEST_TID0 + k, _REQUEST_TID0 + k))
    events += _batch_events(batches, summary)
    events += _kv_events(batches, blocks)
    events += req_events
    shown = sum(1 for e in req_events if e["name"].startswith("request "))
    return {
        "traceEvents": events,
        "displayTimeUnit": "ms",
        "otherData": {
            "generator": "servesim timeline", "source": summary.get("source"), "timing": timing_source(summary),
            "model": config.get("model"), "gpu": config.get("gpu"), "scheduler": config.get("scheduler"),
            "tp": config.get("tp"), "pp": config.get("pp"), "replicas": config.get("replicas"),
            "requests_shown": shown, "requests_in_run": requests_in_run,
            "batch_slices_shown": len(batches), "batch_slices_in_run": in_run, "cut_at_s": cut_at,
        },
    }


def write_timeline(run_dir: str | Path, out: str | Path | None = None, *,
                   max_requests: int | None = DEFAULT_MAX_REQUESTS, window: tuple[float, float] | None = None) -> Path:
    """Write ``timeline.json`` (or ``out``) for the run folder ``run_dir``; returns the path."""
    summary, requests, batches = read_run(run_dir)
    data = build_timeline(summary, requests, batches, max_requests=max_requests, window=window)
    info = data["otherData"]
    if info["cut_at_s"] is not None:
        import sys
        print(f"timeline: the first {info['cut_at_s']:.1f} s ({info['batch_slices_shown']:,} of "
              f"{info['batch_slices_in_run']:,} batch slices, the default cap); python -m sim.outputs.timeline RUN "
              f"--window START:END shows any other span", file=sys.stderr)
    path = Path(out) if out is not None else Path(run_dir) / "timeline.json"
    with naming(path):
        path.write_text(json.dumps(data, separators=(",", ":"), allow_nan=False))
    return path


def _window(text: str) -> tuple[float, float]:
    """START:END in finite seconds with START < END (--window)."""
    import argparse
    try:
        start, end = (float(x) for x in text.split(":"))
    except ValueError:
        start = end = math.nan
    if not (math.isfinite(start) and math.isfinite(end) and start < end):
        raise argparse.ArgumentTypeError(f"expected START:END in seconds with START < END, got {text!r}")
    return start, end


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sim.outputs.timeline RUN_DIR`: write a timeline for any run folder (simulator or engine), under
    servesim's error contract (a missing or incomplete folder is one line and exit status 2)."""
    from sim.cli.errors import CliParser
    from sim.cli.values import MAX_REQUESTS, int_range
    p = CliParser(prog="python -m sim.outputs.timeline",
                  description="Write RUN_DIR/timeline.json (Chrome trace events; open it in "
                              "https://ui.perfetto.dev) from a run folder.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder with summary.json, requests.csv, batches.csv")
    p.add_argument("--out", default=None, metavar="FILE", help="where to write (default: RUN_DIR/timeline.json)")
    p.add_argument("--window", type=_window, default=None, metavar="START:END",
                   help="only batches and requests overlapping [START, END] seconds (default: the whole run)")
    p.add_argument("--max-requests", type=int_range(0, MAX_REQUESTS), default=DEFAULT_MAX_REQUESTS, metavar="N",
                   help="request slices for the first N requests by arrival; 0 for all (default: %(default)s)")
    args = p.parse_args(argv)
    path = write_timeline(args.run_dir, args.out, max_requests=args.max_requests if args.max_requests > 0 else None,
                          window=args.window)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
