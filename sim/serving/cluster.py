"""The simpy model of a deployment: arrivals, a router over replicas, each replica a scheduler feeding pipeline stages.

A replica's scheduler keeps up to ``pp`` micro-batches in flight. Forming a
batch costs host time (CPU scheduling and input preparation); then each stage
takes the batch in FIFO order, runs its share of the layers for the cost
model's time and hands it on. When the last stage finishes, the scheduler
advances the requests. A stage that waits for work while the replica still
has a micro-batch in flight is in a pipeline bubble. Runs of decode-only
iterations are advanced in one step where that changes nothing
(``sim.serving.stretch``).
"""

from __future__ import annotations

import gc
import math
from collections import deque
from collections.abc import Callable
from itertools import pairwise
from operator import attrgetter
from typing import TYPE_CHECKING

from sim.batch import Batch
from sim.cost.interface import CostModel
from sim.request import Request
from sim.schedulers.base import Scheduler
from sim.serving import stretch
from sim.serving.recorder import Recorder

if TYPE_CHECKING:  # simpy is imported when a simulation runs: tables and CLIs work without it
    import simpy

class Replica:
    """One model instance (TP x PP GPUs) with its own scheduler and KV cache."""

    #: advance decode-only stretches in one step where allowed (``sim.serving.stretch``; False: iteration by
    #: iteration, the reference the tests compare against)
    decode_stretches = True
    #: when the next request reaches the deployment (set by ``run_cluster`` when it replays a trace; None: unknown,
    #: and no stretches)
    next_arrival: Callable[[], float] | None = None
    #: the arrival times up to a time of the requests not yet handed over (set with ``next_arrival``)
    arrivals_until: Callable[[float], list[float]] | None = None
    #: replicas in the deployment (stretches run on a single replica, or on ``independent`` ones)
    num_replicas = 1
    #: this replica's arrivals are fixed in advance (a replayed trace, round-robin) and nothing reads its state
    #: during the run (no per-request callback, no router that looks): its stretches may run while other replicas
    #: run, their rows put in time order when the tables are built (``Recorder.time_order``)
    independent = False
    #: the router reads this replica's KV cache when a request arrives (``cache_aware``): a serial-loop stretch
    #: then stops before the step during which a request arrives, not after it
    arrival_reads_cache = False

    def __init__(self, env: simpy.Environment, index: int, scheduler: Scheduler, cost: CostModel,
                 pp: int, recorder: Recorder, on_done: Callable[[Replica, list[Request]], None]) -> None:
        self.env, self.index, self.scheduler, self.cost, self.pp = env, index, scheduler, cost, pp
        self.recorder, self.on_done = recorder, on_done
        self.outstanding = 0  # requests routed here and not finished (for the router)
        self.last_done = 0.0  # when the last micro-batch finished (idle gaps price a cold first iteration)
        self.in_flight = 0
        self._wakeup = env.event()
        self._stage_inbox: list[deque] = [deque() for _ in range(pp)]
        self._stage_ready = [env.event() for _ in range(pp)]
        self._scheduled: dict[int, tuple[float, float]] = {}  # batch id -> (scheduling start, host time)
        env.process(self._scheduling_loop())
        if pp > 1:
            for s in range(pp):
                env.process(self._stage_loop(s))

    def submit(self, request: Request) -> None:
        request.replica = self.index
        self.outstanding += 1
        self._enqueue(request)
        self._wake()

    def _enqueue(self, request: Request) -> None:
        """Hand an arrived request to the scheduler (the async loop holds it until its next decision)."""
        self.scheduler.add_request(request)

    def _wake(self) -> None:
        if not self._wakeup.triggered:
            self._wakeup.succeed()

    def _hand_to_stage(self, stage: int, batch: Batch, ready_at: float) -> None:
        self._stage_inbox[stage].append((batch, ready_at))
        ev = self._stage_ready[stage]
        if not ev.triggered:
            ev.succeed()

    def _scheduling_loop(self):
        """Form micro-batches while fewer than ``pp`` are in flight; the host (CPU) prepares one at a time.

        With a single stage the micro-batch runs inline (one simpy event per iteration): the same
        timing as handing it to a stage process, at a third of the event cost.
        """
        env, sched, cost = self.env, self.scheduler, self.cost
        host_free_at = 0.0
        cold: tuple[float, float, float] | None = None
        stretches: bool | None = None  # decided at the first decode batch (the deployment is complete by then)
        while True:
            if self.in_flight < self.pp:
                if env.now < host_free_at:  # still preparing the previous micro-batch
                    yield env.timeout(host_free_at - env.now)
                    continue
                batch = sched.schedule(env.now)
                if batch is not None:
                    host = cost.host_time(batch)
                    wake = 0.0
                    if cold is not None:  # the first iteration after idling
                        _late, extra_host, wake = cold
                        host += extra_host + (wake if self.pp > 1 else 0.0)  # PP: the stages start later
                        cold = None
                    self.in_flight += 1
                    start = env.now
                    host_free_at = start + host
                    if self.pp > 1:
                        self._scheduled[batch.batch_id] = (start, host)
                        self._hand_to_stage(0, batch, host_free_at)
                        continue
                    c = cost.stage_cost(batch, 0)
                    if wake:  # the cold iteration's device part
                        c = c._replace(time=c.time + wake)
                    yield env.timeout(host + c.time)
                    self._stage_done(0, batch, host_free_at, c, (start, host))
                    if stretches is not False:
                        if stretches is None:
                            stretches = stretch.stretch_capable(self, self.num_replicas)
                        done = stretch.run_stretch(self, batch, env.now) if stretches else None
                        if done is not None:
                            host_free_at = done[1]
                            for d in done[2]:
                                yield env.timeout(d)
                    continue
            self._wakeup = env.event()
            yield self._wakeup
            if self.in_flight == 0 and env.now > self.last_done:  # woken from idle: late, and cold
                cold = cost.wake_time(env.now - self.last_done)
                if cold[0] > 0:
                    yield env.timeout(cold[0])

    def _stage_loop(self, stage: int):
        """Run micro-batches in arrival order (pipeline parallelism only)."""
        env, cost = self.env, self.cost
        inbox = self._stage_inbox[stage]
        while True:
            if not inbox:
                self._stage_ready[stage] = env.event()
                yield self._stage_ready[stage]
                continue
            batch, ready_at = inbox.popleft()
            c = cost.stage_cost(batch, stage)
            start = max(env.now, ready_at)
            yield env.timeout(start - env.now + c.time)
            self._stage_done(stage, batch, start, c)

    def _stage_done(self, stage: int, batch: Batch, start: float, c,
                    scheduled: tuple[float, float] | None = None) -> None:
        """Record a stage execution; pass the batch on, or after the last stage hand results to the scheduler.

        ``scheduled``: (scheduling start, host time) of a single-stage micro-batch; else kept in ``_scheduled``.
        """
        now = self.env.now
        self.recorder.stage_rows.extend((self.index, stage, batch.batch_id, start, now, batch.num_prefill_tokens,
                                         batch.num_decode_tokens, batch.size, len(batch.prefill_items),
                                         batch.kv_blocks_used, c.flops, c.bytes))
        if stage < self.pp - 1:
            self._hand_to_stage(stage + 1, batch, now)
            return
        finished = self.scheduler.on_batch_done(batch, now)
        sched_start, host = scheduled or self._scheduled.pop(batch.batch_id)
        self.recorder.microbatch_rows.extend((self.index, batch.batch_id, sched_start, host, now))
        self.in_flight -= 1
        self.last_done = now
        self.outstanding -= len(finished)
        if finished:
            self.on_done(self, finished)
        self._wake()


_outstanding = attrgetter("outstanding")


class Router:
    """Assigns each arriving request to a replica: round-robin, least outstanding requests, or cache-aware.

    ``cache_aware`` (with prefix caching) sends a request where it costs least: the prompt tokens it would
    still have to prefill after that replica's cached prefix, plus ``cache_weight`` tokens per request
    already outstanding there (the balance against queue length; ties go to the lowest index).
    """

    POLICIES = ("round_robin", "least_outstanding", "cache_aware")

    def __init__(self, replicas: list[Replica], policy: str = "round_robin", cache_weight: float = 1024.0) -> None:
        if policy not in self.POLICIES:
            raise ValueError(f"unknown router {policy!r}; choose one of {', '.join(self.POLICIES)}")
        self.replicas = replicas
        self.policy = policy
        self.cache_weight = cache_weight
        self._next = 0

    def route(self, request: Request) -> Replica:
        if self.policy == "round_robin":
            r = self.replicas[self._next]
            self._next = (self._next + 1) % len(self.replicas)
            return r
        if self.policy == "cache_aware":
            w = self.cache_weight
            return min(self.replicas, key=lambda rep: (request.prompt_tokens - rep.scheduler.bm.prefix_hit(request)
                                                       + w * rep.outstanding))
        return min(self.replicas, key=_outstanding)  # the first (lowest index) of the least loaded


def run_cluster(requests: list[Request], schedulers: list[Scheduler], cost: CostModel, pp: int,
                router_policy: str = "round_robin",
                on_finish: Callable[[Request], None] | None = None, cache_weight: float = 1024.0,
                replica_cls: type[Replica] | None = None, arrivals: Callable | None = None,
                progress: Callable[[int], None] | None = None, independent_replicas: bool = True) -> Recorder:
    """Replay ``requests`` (sorted by arrival) through one replica per scheduler; returns the logs.

    ``replica_cls``: the engine loop (``Replica``'s serial one by default; ``sim.serving.async_loop``'s).
    ``arrivals(env, requests, submit)``: the arrival process, which runs the simulation (default
    :func:`replay_arrivals`; ``sim.serving.closed_loop``'s sends as clients free up). ``on_finish``: called
    with each finished request as it finishes; ``progress``: with how many finished (in no particular order,
    so several round-robin replicas may still advance stretches apart: ``Replica.independent``, unless
    ``independent_replicas`` is False; then check ``Recorder.ambiguous`` once the tables are built)."""
    import simpy

    env = simpy.Environment()
    rec = Recorder()

    def done(replica: Replica, finished: list[Request]) -> None:
        if on_finish is not None:
            for r in finished:
                on_finish(r)
        if progress is not None:
            progress(len(finished))

    replicas = [(replica_cls or Replica)(env, i, s, cost, pp, rec, done) for i, s in enumerate(schedulers)]
    router = Router(replicas, router_policy, cache_weight)
    if arrivals is None:  # a replayed trace: the next arrival is known (decode stretches stop before it)
        arrivals = ReplayArrivals()
        # round-robin fixes each replica's arrivals in advance; a callback per finished request would see them
        # out of time order (several replicas' stretches advance apart), a router that looks would see it early.
        # Requests arriving together (a burst) start idle replicas' steps together: rows that end together follow
        # in simpy's event order, which stretches do not keep (``Recorder.ambiguous``: the run is done again), so
        # where over 1% of arrivals coincide (not a trace's clock resolution), none runs apart
        independent = (len(replicas) > 1 and independent_replicas and router_policy == "round_robin"
                       and on_finish is None
                       and sum(a.arrival_time == b.arrival_time for a, b in pairwise(requests))
                       <= len(requests) // 100)
        rec.time_order = independent
        for rep in replicas:
            rep.num_replicas, rep.independent = len(replicas), independent
            rep.next_arrival, rep.arrivals_until = arrivals.view(rep.index, len(replicas) if independent else 1)
            rep.arrival_reads_cache = router_policy == "cache_aware"

    (arrivals or replay_arrivals)(env, requests, lambda r: router.route(r).submit(r))
    return rec


class ReplayArrivals:
    """``replay_arrivals`` that can tell a replica when its next request arrives (``view``)."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.submitted = 0

    def view(self, index: int, every: int) -> tuple[Callable[[], float], Callable[[float], list[float]]]:
        """(the next arrival time, infinity after the last; the arrival times up to a time) of the requests not yet
        handed over that a replica gets when every ``every``-th one from ``index`` goes to it (round-robin over
        ``every`` replicas; 1: every request)."""
        own: list[float] = []

        def first() -> int:  # its first request not yet handed over (``own`` built once the run has begun)
            if not own:
                own.extend(r.arrival_time for r in self.requests[index::every])
                own.append(math.inf)
            return (self.submitted - index + every - 1) // every

        def next_time() -> float:
            return own[first()]

        def times_until(t: float) -> list[float]:
            j, out = first(), []
            while own[j] <= t:
                out.append(own[j])
                j += 1
            return out
        return next_time, times_until

    def __call__(self, env: simpy.Environment, requests: list[Request], submit: Callable[[Request], None]) -> None:
        self.requests = requests
        replay_arrivals(env, requests, submit, self)


def replay_arrivals(env: simpy.Environment, requests: list[Request], submit: Callable[[Request], None],
                    tracker: ReplayArrivals | None = None) -> None:
    """Hand each request (sorted by arrival) to ``submit`` at its arrival time and run the simulation to the end;
    ``tracker.submitted`` counts the requests handed over."""
    def arrivals():
        for r in requests:
            delay = r.arrival_time - env.now
            if delay > 0:
                yield env.timeout(delay)
            submit(r)
            if tracker is not None:
                tracker.submitted += 1

    env.process(arrivals())
    # The run allocates millions of short-lived tuples and no reference cycles worth collecting mid-run;
    # pausing the cyclic collector makes it ~10% faster at 100k requests (what it misses is collected after).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        env.run()
    finally:
        if was_enabled:
            gc.enable()
