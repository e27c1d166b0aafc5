"""What an engine iteration costs after the engine sat idle: the cold-start extra of host and forward time.

An iteration that follows an idle gap runs slower than one in a busy loop (caches and TLBs refilled,
the CPU leaving a power state; on a shared machine other tenants evicted our working set), and the
engine wakes from its sleep late. On the 2-core development VM a 256-token prefill of the tiny model
takes +0.6 ms host and +1.2 ms forward after 100 ms idle, about doubling it, and ``time.sleep``
oversleeps by 0.1-0.3 ms, so a real-time replay at low load pays both on nearly every prefill. The
bench sleeps (as the engine's replay loop does) for each gap, runs a prefill or a decode iteration
through a scheduler and the runner, and records the median extras over the same iteration run back
to back; the profile's ``wake`` table holds them and the cost models price them on the first
iteration after idling (the latency delays its scheduling).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sim.catalog.models import ModelSpec
from sim.kv.block_manager import BlockManager

IDLE_GAPS_S: tuple[float, ...] = (0.002, 0.01, 0.03, 0.1, 0.3)


def measure_wake(model: ModelSpec, device: Any, dtype: Any, backend: str, block_size: int, *,
                 gaps: tuple[float, ...] = IDLE_GAPS_S, repeats: int = 8, seed: int = 0,
                 scheduler: str = "sarathi") -> dict[str, Any]:
    """The ``wake`` block of profile.json, per idle gap: the median oversleep (the engine wakes late), and the
    median extra host part (schedule, input preparation, output processing) and forward time of the first
    iteration after the gap, over the same iteration run back to back (mean of a prefill and a decode)."""
    from calibration.host_bench import timed_iteration
    from engine.runner import ModelRunner
    from sim.request import Request
    from sim.schedulers import SchedulerConfig, make_scheduler

    chunk = min(256, model.max_context // 2)
    decodes, context = 8, min(256, model.max_context // 2)
    need = -(-chunk // block_size) * (repeats * (len(gaps) + 2)) + decodes * -(-(context + 64) // block_size) + 8
    runner = ModelRunner(model, device=device, dtype=dtype, kv_blocks=need, block_size=block_size, backend=backend,
                         seed=seed, cuda_graphs=False)
    sched = make_scheduler(scheduler, SchedulerConfig(max_batch_size=64, token_budget=max(512, chunk)),
                           BlockManager(runner.num_blocks, runner.block_size, 0.0))
    clock, counter = time.perf_counter, [0]

    def iteration() -> tuple[float, float]:
        return timed_iteration(sched, runner)

    def prefill() -> tuple[float, float]:  # a new request whose one output token finishes it
        counter[0] += 1
        sched.add_request(Request(f"wake{counter[0]}", 0.0, chunk, 1, index=counter[0]))
        return iteration()

    running = [Request(f"wake-d{i}", 0.0, context, 1 << 20, index=i) for i in range(decodes)]
    for r in running:
        sched.add_request(r)
    while any(r.num_generated == 0 for r in running):  # prefill the decodes once
        iteration()
    shapes = {"prefill": prefill, "decode": iteration}
    late: list[list[float]] = [[] for _ in gaps]
    extra_host: list[list[float]] = [[] for _ in gaps]
    extra_dev: list[list[float]] = [[] for _ in gaps]
    for run in shapes.values():
        for _ in range(3):
            run()
        hot = np.median(np.array([run() for _ in range(repeats)]), axis=0)
        for i, gap in enumerate(gaps):
            cold = []
            for _ in range(repeats):
                t0 = clock()
                time.sleep(gap)
                late[i].append(clock() - t0 - gap)
                cold.append(run())
            h, f = np.median(np.array(cold), axis=0)
            extra_host[i].append(max(0.0, float(h - hot[0])))
            extra_dev[i].append(max(0.0, float(f - hot[1])))
    for r in running:
        runner.release(r)
    return {"idle_s": list(gaps),
            "latency_s": [round(float(np.median(x)), 9) for x in late],
            "host_extra_s": [round(float(np.mean(x)), 9) for x in extra_host],
            "device_extra_s": [round(float(np.mean(x)), 9) for x in extra_dev],
            "shapes": [f"prefill of {chunk} tokens (a new request), decode of {decodes} requests at {context} keys"],
            "method": f"median of {repeats} iterations (schedule, execute, on_batch_done; forward apart) after "
                      f"sleeping each gap, less the median of {repeats} run back to back; mean of the two shapes; "
                      f"latency: median oversleep of time.sleep"}


def add_to_profile(path: str) -> dict[str, Any]:
    """Measure the wake table and the prefill host slope (``calibration.host_bench``) on this machine for an
    existing profile and write them into its profile.json."""
    import datetime as _dt

    from calibration.device_info import resolve_device, resolve_dtype
    from calibration.host_bench import measure_prefill_host
    from calibration.profile_writer import write_meta
    from sim.cost.profile_format import profile_model, read_profile

    prof = read_profile(path)
    device = resolve_device(prof.meta["device"].get("type", "auto"))
    dtype, backend = resolve_dtype(prof.meta["dtype"], device), prof.meta.get("attention_backend", "auto")
    block_size = int(prof.meta.get("block_size", 16))
    stamp = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
             "command": f"python -m calibration.wake_bench {path}"}
    wake = measure_wake(profile_model(prof), device, dtype, backend, block_size) | stamp
    host_model = (prof.meta.get("host_overhead") or {}).get("model", "tiny")
    prefill = measure_prefill_host(host_model, device, dtype, backend, block_size) | stamp
    write_meta(prof.path, dict(prof.meta, wake=wake, host_prefill=prefill))
    return {"wake": wake, "host_prefill": prefill}


if __name__ == "__main__":
    import sys

    import torch

    torch.set_num_threads(1)
    for folder in sys.argv[1:] or ["calibration/profiles/tiny-cpu"]:
        print(folder, add_to_profile(folder))
