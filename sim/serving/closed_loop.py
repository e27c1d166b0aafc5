"""Closed-loop load: at most N requests in flight, each client sending its next request when its last completes.

The semantics of ``vllm bench serve --max-concurrency N`` (a semaphore of N slots around each request; the
request's clock starts when it takes a slot): request i, in trace order, is sent at the later of its own
arrival time and the moment a client is free (its previous request completed, plus ``think_time_s``). With
every arrival at t=0 (vLLM's default ``--request-rate inf``; our ``--arrival static``) this is N clients
sending back to back; with a rate, the rate paces the sends and N caps them. vLLM bench serve has no think
time: ``think_time_s`` 0 is its behaviour.

Latency counts from the send, as vLLM's client measures it: a request's arrival becomes its send time. A
client is freed when the engine completes its request (a frontend's way back is not waited for).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sim.request import Request

if TYPE_CHECKING:
    import simpy


class ClosedLoop:
    """N clients (``max_concurrency``) with a think time between one request's completion and the next send.

    Give :meth:`arrivals` to ``run_cluster`` as its arrival process and :meth:`on_finish` to its completion
    callback; a real-time loop (the engine's) uses :meth:`next_send`, :meth:`send` and :meth:`release`. One object
    serves one run.
    """

    def __init__(self, max_concurrency: int, think_time_s: float = 0.0) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not (math.isfinite(think_time_s) and think_time_s >= 0):
            raise ValueError(f"think_time_s must be a finite number of seconds >= 0, got {think_time_s}")
        self.max_concurrency, self.think_time_s = max_concurrency, think_time_s
        self._env: simpy.Environment | None = None
        self._free: list[float] = [-math.inf] * max_concurrency  # when each idle client can send next (a heap)
        self._released: Any = None
        self.waited_s = 0.0  # total time requests waited for a client past their own arrival
        self.sent = 0

    def next_send(self, arrival: float) -> float:
        """When a request arriving at ``arrival`` can be sent: once a client is free (inf while none is)."""
        return max(arrival, self._free[0]) if self._free else math.inf

    def send(self, request: Request) -> float:
        """Give ``request`` to the earliest free client: its arrival becomes the send time (returned)."""
        t = max(request.arrival_time, heapq.heappop(self._free))
        self.waited_s += t - request.arrival_time
        self.sent += 1
        request.arrival_time = t  # the request's clock starts when it is sent
        return t

    def release(self, now: float) -> None:
        """A request completed at ``now``: its client can send again after the think time."""
        heapq.heappush(self._free, now + self.think_time_s)

    def on_finish(self, request: Request) -> None:
        """A request completed (in a simulation): its client can send again after the think time."""
        assert self._env is not None
        self.release(self._env.now)
        if self._released is not None and not self._released.triggered:
            self._released.succeed()

    def arrivals(self, env: simpy.Environment, requests: list[Request], submit: Callable[[Request], None]) -> None:
        """``run_cluster``'s arrival process: send ``requests`` (sorted by arrival) as clients free up, to the end."""
        from sim.serving.cluster import replay_arrivals
        self._env = env

        def send():
            for r in requests:
                while not self._free:
                    self._released = env.event()
                    yield self._released
                t = self.next_send(r.arrival_time)
                if t > env.now:
                    yield env.timeout(t - env.now)
                self.send(r)
                submit(r)

        env.process(send())
        replay_arrivals(env, [], submit)  # runs the simulation to the end (its collector settings included)

    def chain(self, on_finish: Callable[[Request], None] | None) -> Callable[[Request], None]:
        """A completion callback that frees the request's client, then calls ``on_finish``."""
        if on_finish is None:
            return self.on_finish

        def both(r: Request) -> None:
            self.on_finish(r)
            on_finish(r)
        return both

    def describe(self) -> dict[str, Any]:
        """summary.json's ``closed_loop``."""
        return {"max_concurrency": self.max_concurrency, "think_time_s": self.think_time_s, "sent": self.sent,
                "mean_wait_for_client_s": self.waited_s / self.sent if self.sent else 0.0}
