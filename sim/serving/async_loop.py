"""vLLM V1's engine loop with async scheduling, as a replica of the simpy model (one pipeline stage).

With async scheduling (``--async-scheduling``, vLLM's default since 0.14 with executors that support it; read in
vLLM 0.19.0) the engine core schedules step N+1 and prepares its inputs while step N runs on the GPU
(``EngineCore.step_with_batch_queue`` with a batch queue of two; ``AsyncScheduler`` counts each running request's
token of step N as a placeholder). So:

- step N+1 is decided as step N starts on the device, from the requests that had reached the engine core by
  then: a request arriving while step N runs is first scheduled in step N+2 (unless the engine was idle). In
  vLLM the input queue is drained after step N-1's outputs are processed, early in step N, so a request arriving
  in that first moment of N still makes N+1: modelled as N+2, the typical case;
- step N+1's host time (scheduling, input preparation) overlaps step N's device time: hidden when shorter,
  exposed by the difference when longer; step N+1 starts on the device at max(end of N, start of N + host);
- when nothing could be decided during step N (no running request left, no request had arrived), the loop
  decides after step N ends, and its host time is exposed, as in the serial loop.

The decisions themselves are the shared policy's (``Scheduler.schedule`` after step N's outputs are applied):
with fixed output lengths, as benchmarks run, V1's placeholders give the same batch.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from sim.request import Request
from sim.serving import stretch
from sim.serving.cluster import Replica

if TYPE_CHECKING:
    from sim.batch import Batch


class AsyncReplica(Replica):
    """A single-stage replica whose next step is decided while the current one runs (vLLM V1 async scheduling)."""

    def __init__(self, *args, **kwargs) -> None:
        self._held: deque[tuple[float, Request]] = deque()  # reached the engine, not yet seen by its scheduler
        super().__init__(*args, **kwargs)
        if self.pp != 1:
            raise ValueError("async scheduling models one pipeline stage (vLLM V1 runs PP with its batch queue)")

    def _enqueue(self, request: Request) -> None:
        self._held.append((self.env.now, request))

    def _release(self, until: float) -> None:
        """Hand the scheduler every request that reached the engine by ``until``."""
        held, sched = self._held, self.scheduler
        while held and held[0][0] <= until:
            sched.add_request(held.popleft()[1])

    def _decide(self, at: float) -> Batch | None:
        self._release(at)
        return self.scheduler.schedule(at)

    def _scheduling_loop(self):
        """Decide step N+1 as step N starts on the device; run it when both N and its host work are done."""
        env, cost = self.env, self.cost
        cutoff: float | None = None  # the device start of the step that just ran (the next was decided then)
        cold: tuple[float, float, float] | None = None
        stretches: bool | None = None  # decided at the first decode batch (sim.serving.stretch)
        while True:
            batch = self._decide(cutoff) if cutoff is not None else None
            if batch is not None:
                decided, host = cutoff, cost.host_time(batch)
                start = max(env.now, decided + host)
            else:
                batch = self._decide(env.now)
                if batch is None:
                    cutoff = None
                    self._wakeup = env.event()
                    yield self._wakeup
                    if env.now > self.last_done:  # woken from idle: late, and cold
                        cold = cost.wake_time(env.now - self.last_done)
                        if cold[0] > 0:
                            yield env.timeout(cold[0])
                    continue
                decided, host = env.now, cost.host_time(batch)
                start = decided + host
            c = cost.stage_cost(batch, 0)
            if cold is not None:  # the first iteration after idling
                _late, extra_host, wake = cold
                host += extra_host
                start += extra_host
                c = c._replace(time=c.time + wake)
                cold = None
            self.in_flight += 1
            yield env.timeout(start - env.now + c.time)
            cutoff = start
            self._stage_done(0, batch, start, c, (decided, host))
            if stretches is not False:  # advance a stretch of decode-only steps if one follows
                if stretches is None:
                    stretches = stretch.stretch_capable(self, self.num_replicas)
                # requests already held reach the scheduler at the first decision at or after their arrival
                done = stretch.run_stretch(self, batch, env.now, cutoff, self._held[0][0] if self._held else None
                                   ) if stretches else None
                if done is not None:
                    cutoff = done[1]
                    for d in done[2]:
                        yield env.timeout(d)
