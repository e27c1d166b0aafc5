"""The engine's host part per iteration (scheduling, input preparation, output processing), as calibration times it."""

from __future__ import annotations

import time

import torch

from calibration.timing import Timing, time_host
from sim.catalog.models import get_model


def timed_iteration(sched, runner, now: float = 0.0) -> tuple[float, float]:
    """(host seconds, forward seconds) of one scheduled iteration, as ``engine.replay`` books them: the wall time
    of ``schedule``, ``execute`` and ``on_batch_done`` less the runner's ``forward_s``; finished requests released."""
    t0 = time.perf_counter()
    batch = sched.schedule(now)
    runner.execute(batch)
    for r in sched.on_batch_done(batch, now):
        runner.release(r)
    forward = float(runner.last_timing["forward_s"])
    return time.perf_counter() - t0 - forward, forward


class HostBench:
    """Per-iteration host time on the real engine: everything but the forward pass (``schedule``, input
    preparation, output processing, ``on_batch_done``), the engine's ``host_s``."""

    def __init__(self, device: torch.device, dtype: torch.dtype, backend: str, host_model: str, scheduler: str,
                 max_batch: int, block_size: int, repeats: int) -> None:
        from engine.runner import ModelRunner

        self.spec = get_model(host_model)
        self.scheduler = scheduler
        self.repeats = repeats
        self.prompt = 16
        per_req = -(-(self.prompt + repeats + 16) // block_size)
        self.runner = ModelRunner(self.spec, device=device, dtype=dtype, kv_blocks=max_batch * per_req + 16,
                                  block_size=block_size, backend=backend)

    def measure(self, batch_size: int) -> Timing:
        """Decode-only iterations of ``batch_size`` requests: wall time of schedule, execute and on_batch_done,
        less the runner's ``forward_s``."""
        from sim.kv_cache import BlockManager
        from sim.request import Request
        from sim.schedulers import SchedulerConfig, make_scheduler

        runner = self.runner
        sched = make_scheduler(self.scheduler, SchedulerConfig(max_batch_size=batch_size,
                                                               token_budget=max(512, batch_size)),
                               BlockManager(runner.num_blocks, runner.block_size, 0.0))
        reqs = [Request(f"host{batch_size}-{i}", 0.0, self.prompt, 10**9, index=i) for i in range(batch_size)]
        for r in reqs:
            sched.add_request(r)
        while any(r.num_generated == 0 for r in reqs):  # prefill everything first
            b = sched.schedule(0.0)
            if b is None:
                raise RuntimeError(f"host-overhead bench: scheduler {self.scheduler} formed no batch")
            runner.execute(b)
            sched.on_batch_done(b, 0.0)

        def one(i: int) -> float:
            return timed_iteration(sched, runner, float(i))[0]

        try:
            return time_host(one, self.repeats)
        finally:
            for r in reqs:
                runner.release(r)


PREFILL_TOKENS: tuple[int, ...] = (16, 64, 256, 1024)


def measure_prefill_host(model: str, device: torch.device, dtype: torch.dtype, backend: str, block_size: int, *,
                         scheduler: str = "sarathi", tokens: tuple[int, ...] = PREFILL_TOKENS, repeats: int = 10
                         ) -> dict:
    """The host part of prefill iterations (one new request of T prompt tokens, back to back) and its fitted
    per-prompt-token slope: preparing a prompt's ids, positions and block tables grows with its tokens,
    which the decode-batch host table does not see (the ``host_prefill`` block of profile.json)."""
    import numpy as np

    from engine.runner import ModelRunner
    from sim.kv_cache import BlockManager
    from sim.request import Request
    from sim.schedulers import SchedulerConfig, make_scheduler

    spec = get_model(model)
    tokens = tuple(t for t in tokens if t < spec.max_context) or (min(16, spec.max_context - 1),)
    runner = ModelRunner(spec, device=device, dtype=dtype, kv_blocks=-(-max(tokens) // block_size) * 2 + 8,
                         block_size=block_size, backend=backend, cuda_graphs=False)
    sched = make_scheduler(scheduler, SchedulerConfig(max_batch_size=8, token_budget=max(tokens)),
                           BlockManager(runner.num_blocks, runner.block_size, 0.0))
    medians, counter = [], [0]
    for t in tokens:
        times = []
        for i in range(repeats + 2):
            counter[0] += 1
            sched.add_request(Request(f"hostp{counter[0]}", 0.0, t, 1, index=counter[0]))
            host, _ = timed_iteration(sched, runner)
            if i >= 2:  # two warm-up iterations per length
                times.append(host)
        medians.append(float(np.median(times)))
    slope = float(np.polyfit(np.asarray(tokens, dtype=float), np.asarray(medians), 1)[0]) if len(tokens) > 1 else 0.0
    return {"tokens": list(tokens), "host_s": [round(x, 9) for x in medians], "per_token_s": max(0.0, slope),
            "method": f"median of {repeats} back-to-back prefill iterations (one new request) per prompt length; "
                      f"per_token_s: least-squares slope"}
