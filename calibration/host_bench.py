"""The engine's host part per iteration (scheduling, input preparation, output processing), as calibration times it."""

from __future__ import annotations

import time

import torch

from calibration.timing import Timing, time_host
from sim.catalog.models import ModelSpec, get_model


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

    def __init__(self, device: torch.device, dtype: torch.dtype, backend: str, host_model: ModelSpec | str,
                 scheduler: str, max_batch: int, block_size: int, repeats: int) -> None:
        from engine.runner import ModelRunner

        self.spec = host_model if isinstance(host_model, ModelSpec) else get_model(host_model)
        self.scheduler = scheduler
        self.repeats = repeats
        self.prompt = 16
        per_req = -(-(self.prompt + repeats + 16) // block_size)
        self.runner = ModelRunner(self.spec, device=device, dtype=dtype, kv_blocks=max_batch * per_req + 16,
                                  block_size=block_size, backend=backend)

    def measure(self, batch_size: int) -> Timing:
        """Decode-only iterations of ``batch_size`` requests: wall time of schedule, execute and on_batch_done,
        less the runner's ``forward_s``."""
        from sim.kv.block_manager import BlockManager
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
NEW_REQUESTS: tuple[int, ...] = (1, 2, 4, 8, 16)


def measure_prefill_host(model: ModelSpec | str, device: torch.device, dtype: torch.dtype, backend: str, block_size: int, *,
                         scheduler: str = "sarathi", tokens: tuple[int, ...] = PREFILL_TOKENS,
                         requests: tuple[int, ...] = NEW_REQUESTS, repeats: int = 10) -> dict:
    """The host part of prefill iterations beyond what the decode-batch host table prices (the ``host_prefill``
    block of profile.json): a per-prompt-token slope (one new request of T tokens: ids, positions, slots grow
    with T), and, from iterations of k new 16-token requests against decode iterations of k requests timed
    alongside, a fixed cost of an iteration with a prefill part plus a per-prefill-item cost (a new request's
    token ids, block allocation, first-token handling)."""
    import numpy as np

    from engine.runner import ModelRunner
    from sim.kv.block_manager import BlockManager
    from sim.request import Request
    from sim.schedulers import SchedulerConfig, make_scheduler

    spec = model if isinstance(model, ModelSpec) else get_model(model)
    tokens = tuple(t for t in tokens if t < spec.max_context) or (min(16, spec.max_context - 1),)
    short = min(16, spec.max_context - 1)
    kv_blocks = max(-(-max(tokens) // block_size) * 2, max(requests) * 2 * -(-(short + 1) // block_size)) + 8
    runner = ModelRunner(spec, device=device, dtype=dtype, kv_blocks=kv_blocks, block_size=block_size,
                         backend=backend, cuda_graphs=False)
    sched = make_scheduler(scheduler, SchedulerConfig(max_batch_size=max(8, max(requests)),
                                                      token_budget=max(max(tokens), short * max(requests))),
                           BlockManager(runner.num_blocks, runner.block_size, 0.0))
    counter = [0]

    def median_host(length: int, k: int) -> float:
        """Median host seconds of iterations prefilling ``k`` new requests of ``length`` tokens (2 warm-ups)."""
        times = []
        for i in range(repeats + 2):
            for _ in range(k):
                counter[0] += 1
                sched.add_request(Request(f"hostp{counter[0]}", 0.0, length, 1, index=counter[0]))
            host, _ = timed_iteration(sched, runner)
            if i >= 2:
                times.append(host)
        return float(np.median(times))

    medians = [median_host(t, 1) for t in tokens]
    slope = float(np.polyfit(np.asarray(tokens, dtype=float), np.asarray(medians), 1)[0]) if len(tokens) > 1 else 0.0
    slope = max(0.0, slope)
    out = {"tokens": list(tokens), "host_s": [round(x, 9) for x in medians], "per_token_s": slope,
           "method": f"median of {repeats} back-to-back prefill iterations per point; per_token_s: least-squares "
                     f"slope over prompt lengths (one new request); fixed_s + per_request_s x k: least-squares "
                     f"line through the host time of k new {short}-token requests, less a decode iteration of k "
                     f"requests (the host table's shape) and their prompt tokens' per-token cost"}
    if len(requests) > 1:
        bench = HostBench(device, dtype, backend, model, scheduler, max(requests), block_size, repeats)
        pre = [median_host(short, k) for k in requests]
        dec = [bench.measure(k).median_s for k in requests]
        extra = [p - d - slope * short * k for p, d, k in zip(pre, dec, requests)]
        per_req, fixed = np.polyfit(np.asarray(requests, dtype=float), np.asarray(extra), 1)
        out.update(requests=list(requests), requests_host_s=[round(x, 9) for x in pre],
                   decode_host_s=[round(x, 9) for x in dec], fixed_s=max(0.0, float(fixed)),
                   per_request_s=max(0.0, float(per_req)))
    return out


def host_model_for(host_model: str | None, model: ModelSpec, device_type: str) -> ModelSpec | str:
    """The model the host-part benches run: ``host_model`` if given; else on a GPU the tiny model (the host
    work does not share the device's caches), on a CPU the profiled model itself, whose forward pass evicts
    the host's working set (measured here: the small model's host part is twice the tiny model's)."""
    if host_model:
        return host_model
    return model if device_type == "cpu" else "tiny"


def host_model_name(model: ModelSpec | str) -> str:
    return model if isinstance(model, str) else model.name
