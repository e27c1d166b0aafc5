"""What a run says about its load: is the offered rate sustained (saturation), which knob binds, and goodput.

Saturation: a deployment sustains a rate when its waiting queue (arrived, not yet scheduled) stays bounded;
past its capacity the queue grows for as long as requests keep arriving. The verdict measures the queue's growth
over the second half of the arrivals (the slope of the queue sampled at each arrival): growing faster than
``GROWTH_FRACTION`` of the offered rate (and by at least ``MIN_GROWTH`` requests) is saturation. A closed batch
(every request at once) has no rate to sustain, and a run of fewer than ``MIN_REQUESTS`` is too short to tell.

Goodput, as vLLM's benchmark (``vllm bench serve --goodput``) computes it: the completed requests that meet every
per-request SLO (TTFT, TPOT, end-to-end latency), per second of the run (first arrival to last completion).
DistServe (Zhong et al., OSDI 2024), which vLLM's help cites, named goodput the highest rate at which a target
fraction of requests meet their SLOs; a capacity search's answer is that notion's counterpart.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sim.table import column

#: a queue growing faster than this fraction of the offered rate over the second half of the arrivals is
#: saturation (a stable queue's slope is noise around zero; at 1.5x capacity it grows at a third of the rate).
#: 2%: Mixtral-8x7B EP8 on H100s (issue 32) grows its queue at 3% of the rate at 15.9 req/s, where 3,000 requests
#: show a 2.8-s median scheduling delay; at 14 req/s the slope stays within noise
GROWTH_FRACTION = 0.02
#: ... and by at least this many requests (a handful of queued requests is noise, not a trend)
MIN_GROWTH = 5
#: runs with fewer requests (or no arrival span) get no verdict
MIN_REQUESTS = 20
#: vLLM's goodput keys (milliseconds on its command line) and the requests.csv column each bounds
GOODPUT_KEYS = {"ttft": "ttft", "tpot": "tpot", "e2el": "e2e"}
#: the default per-request SLO of goodput, seconds: the per-request forms of the capacity search's default bounds
#: (Sarathi-Serve's median scheduling delay of 2 s read as TTFT, its P99 TBT of 100 ms read as TPOT)
DEFAULT_GOODPUT = {"ttft": 2.0, "tpot": 0.1}
#: a knob binds when it is at its limit in at least this fraction of the iterations
BINDING_FRACTION = 0.5
#: KV use at or above this fraction of the blocks counts as a full cache (admission keeps a 1% watermark free)
KV_FULL = 0.95


def _waiting(arrivals: np.ndarray, scheduled: np.ndarray, t: float) -> int:
    """Requests arrived by ``t`` and not yet scheduled by ``t`` (both arrays sorted; never scheduled = inf)."""
    return int(np.searchsorted(arrivals, t, side="right") - np.searchsorted(scheduled, t, side="right"))


def _queue_slope(arrivals: np.ndarray, scheduled: np.ndarray, since: float) -> float:
    """Least-squares slope (requests per second) of the waiting queue, sampled at each arrival after ``since``:
    steadier than the difference of two samples, so a slow growth near capacity is told from noise."""
    t = arrivals[arrivals > since]
    if t.size < 2 or t[-1] <= t[0]:
        return 0.0
    q = np.searchsorted(arrivals, t, side="right") - np.searchsorted(scheduled, t, side="right")
    return float(np.polyfit(t - t[0], q.astype(float), 1)[0])


def saturation(req: Any) -> dict[str, Any]:
    """The saturation verdict of a run from requests.csv's columns (arrival, first scheduled, completion times).

    ``saturated`` is True (the queue grows: the offered rate is above what the deployment sustains), False,
    or None (no verdict: a closed batch or too few requests); ``verdict`` says it in one line.
    """
    arrivals = np.sort(column(req, "arrival_time", float))
    n = arrivals.size
    out: dict[str, Any] = {"saturated": None, "offered_rps": None, "served_rps": None, "queue_at_end": None,
                           "queue_growth_rps": None}
    span = float(arrivals[-1] - arrivals[0]) if n else 0.0
    if n < MIN_REQUESTS or span <= 0:
        out["verdict"] = ("no verdict: every request arrives at once (a closed batch, no rate to sustain)"
                          if n >= MIN_REQUESTS else f"no verdict: {n} requests are too few to tell (at least "
                                                    f"{MIN_REQUESTS})")
        return out
    sched = np.sort(np.nan_to_num(column(req, "first_scheduled_time", float), nan=math.inf))
    done = column(req, "completion_time", float)
    t0, t1 = float(arrivals[0]), float(arrivals[-1])
    mid = t0 + span / 2
    offered = (n - 1) / span
    served = float(np.sum(done <= t1)) / span
    q_end = _waiting(arrivals, sched, t1)
    growth = _queue_slope(arrivals, sched, mid)
    saturated = bool(growth > GROWTH_FRACTION * offered and growth * (t1 - mid) >= MIN_GROWTH)
    out.update(saturated=saturated, offered_rps=offered, served_rps=served, queue_at_end=q_end,
               queue_growth_rps=growth)
    if saturated:
        out["verdict"] = (f"SATURATED: offered {offered:.3g} req/s, served {served:.3g} req/s while requests "
                          f"arrived; the waiting queue grew by {growth:.3g} req/s to {q_end} requests at the last "
                          f"arrival and would keep growing: latency here depends on the run's length")
    else:
        out["verdict"] = (f"sustained: offered {offered:.3g} req/s; the waiting queue stayed bounded ({q_end} "
                          f"waiting at the last arrival)")
    return out


def limits(batches: Any, token_budget: int | None, max_num_seqs: int | None,
           num_blocks: int) -> dict[str, Any]:
    """How often each knob was at its limit (fraction of iterations, first stage) and which one binds.

    token_budget: the batch's tokens reached the per-iteration budget; max_num_seqs: the batch held the
    most requests allowed; kv_capacity: the KV cache was at least ``KV_FULL`` used. The binding one is the
    most often full of those full in at least ``BINDING_FRACTION`` of the iterations; none: compute (the
    iterations themselves take the time).
    """
    first = batches[batches["stage"] == 0] if len(batches) else batches
    if not len(first):
        return {"binding": None, "full_fraction": {}}
    tokens = column(first, "num_prefill_tokens") + column(first, "num_decode_tokens")
    full = {"token_budget": float(np.mean(tokens >= token_budget)) if token_budget else 0.0,
            "max_num_seqs": float(np.mean(column(first, "batch_size") >= max_num_seqs)) if max_num_seqs else 0.0,
            "kv_capacity": float(np.mean(column(first, "kv_blocks_used") >= KV_FULL * num_blocks))
            if num_blocks else 0.0}
    return {"binding": binding_knob(full), "full_fraction": full}


def binding_knob(full: dict[str, float]) -> str:
    """The knob most often at its limit, if in at least ``BINDING_FRACTION`` of the iterations; else "compute"."""
    name, frac = max(full.items(), key=lambda kv: kv[1])
    return name if frac >= BINDING_FRACTION else "compute"


def describe_limits(lim: dict[str, Any]) -> str:
    """E.g. 'token budget (full in 92% of iterations; max_num_seqs 0%, KV capacity 3%)'."""
    full = lim.get("full_fraction") or {}
    binding = lim.get("binding")
    if binding is None:
        return "-"
    names = {"token_budget": "token budget", "max_num_seqs": "max_num_seqs", "kv_capacity": "KV capacity"}
    others = ", ".join(f"{names[k]} {v:.0%}" for k, v in full.items() if k != binding)
    if binding == "compute":
        return f"compute (no knob full in most iterations: {others})"
    return f"{names[binding]} (full in {full[binding]:.0%} of iterations; {others})"


def goodput(req: Any, makespan: float | None, bounds: dict[str, float] | None = None) -> dict[str, Any]:
    """Completed requests meeting every bound of ``bounds`` (vLLM's keys ttft, tpot, e2el; seconds), per second.

    A request of one output token has no TPOT and meets a TPOT bound (vLLM counts its TPOT as 0).
    """
    bounds = DEFAULT_GOODPUT if bounds is None else bounds
    done = req[~np.isnan(column(req, "completion_time", float))]
    good = np.ones(len(done), dtype=bool)
    for key, bound in bounds.items():
        values = column(done, GOODPUT_KEYS[key], float)
        good &= np.nan_to_num(values, nan=0.0) <= bound
    n_good = int(good.sum())
    return {"slo_s": dict(bounds), "good_requests": n_good, "completed": len(done),
            "fraction": n_good / len(done) if len(done) else None,
            "requests_per_s": n_good / makespan if makespan else None}


def describe_goodput(g: dict[str, Any]) -> str:
    """One console line: goodput, its fraction and its per-request SLO."""
    slo = ", ".join(f"{k} <= {v * 1e3:g} ms" for k, v in g["slo_s"].items())
    rate = "-" if g["requests_per_s"] is None else f"{g['requests_per_s']:.3f} req/s"
    frac = "-" if g["fraction"] is None else f"{g['fraction']:.1%}"
    return f"goodput: {rate} ({g['good_requests']} of {g['completed']} completed requests, {frac}, meet {slo})"


def add_load_verdict(summary: dict[str, Any], req: Any, batches: Any | None = None,
                     goodput_slo: dict[str, float] | None = None) -> None:
    """summary.json's ``saturation``, ``goodput`` and (given the batches of an aggregated run) ``limits``."""
    summary["saturation"] = saturation(req)
    summary["goodput"] = goodput(req, summary["throughput"]["makespan_s"], goodput_slo)
    cfg = summary.get("config", {})
    if batches is not None and "effective_token_budget" in cfg:
        summary["limits"] = limits(batches, cfg.get("effective_token_budget"), cfg.get("effective_max_num_seqs"),
                                   summary["kv_cache"]["blocks_per_replica"])
