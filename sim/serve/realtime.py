"""A simulated deployment paced in real time: the simulator's own replicas, router, scheduler and cost model, stepped
by an asyncio task so that simulated time ``t`` happens at wall time ``start + t / speedup``.

The simpy model is the one ``servesim simulate`` runs (``sim.serving.cluster``: serial or async engine loop, pipeline
stages, router); only the clock differs. An HTTP request arriving at wall time ``w`` arrives in the simulation at
``(w - start) x speedup`` (plus the modelled frontend's inbound time, as ``simulate`` adds it); the driver processes
every simulated event whose time has come, hands each new output token to its request's queue, and sleeps until the
next event or the next arrival. So the simulated times of a served run equal what ``simulate`` predicts for the same
arrivals (``record`` writes them as a trace), and the client sees them late only by this process's own delays.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sim.cost.interface import CostModel
from sim.kv.block_manager import BlockManager
from sim.request import Request, Status, TraceRequest
from sim.schedulers import scheduler_class
from sim.serving.async_loop import AsyncReplica
from sim.serving.cluster import Replica, Router
from sim.serving.frontend import Frontend
from sim.serving.recorder import Recorder
from sim.serving.simulator import SimConfig
from sim.workload.servable import prepare_requests

#: simpy events processed before the driver lets the HTTP side run (a lagging server still answers /health)
STEPS_PER_SLICE = 20_000
#: stage rows kept for nothing: the logs are emptied past this many values (a server runs unbounded)
RECORDER_LIMIT = 1 << 20


class Unservable(ValueError):
    """A request this deployment can never serve (prompt or total over the context, KV capacity, token budget)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(eq=False)
class Served:
    """One HTTP request's simulated life: its sim ``Request``, a queue of events for the handler, and its figures.

    Queue items: ``("token", sim_time)`` per output token, then ``("done", "length")`` or ``("done", "abort")``.
    Times are simulated seconds since the server started; ``arrival`` is when the client's request reached the
    frontend (the engine sees it ``inbound`` later)."""

    request: Request
    arrival: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    emitted: int = 0
    finish: str | None = None
    cancelled: bool = False  # the client went away: the request stops at its next token (``cancel``)


class ServedBackend:
    """What the HTTP side needs of a backend, and the mechanics every backend shares: the clock (simulated seconds
    since start, ``speedup`` times the wall clock's), the requests in flight and their token queues, shutdown, the
    per-request record. A backend sets ``model``, ``config``, ``schedulers``, ``num_blocks`` and ``frontend``, and
    implements ``check``, ``submit`` and ``run`` (``RealtimeDeployment``; the real engine's in ``engine/``)."""

    model: Any
    config: Any
    schedulers: list
    num_blocks: int
    frontend: Frontend

    def __init__(self, speedup: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not (math.isfinite(speedup) and speedup > 0):
            raise ValueError(f"speedup must be a finite number > 0, got {speedup}")
        self.speedup, self.clock = speedup, clock
        self._ids = itertools.count()
        self.active: dict[int, Served] = {}
        self.on_token: list[Callable[[Served, float], None]] = []  # (served, sim time) per token: metrics
        self.on_done: list[Callable[[Served], None]] = []
        self.closed = False
        self._kick = asyncio.Event()
        self.start = clock()

    def set_limits(self, config: Any, num_blocks: int) -> None:
        """What ``check`` refuses by: ``config``'s model, policy, budget and KV block manager of ``num_blocks``."""
        self._check_bm = BlockManager(num_blocks, config.block_size, config.watermark)
        self._chunks = scheduler_class(config.scheduler).chunks_prefills
        self._budget = config.effective_token_budget(self.model)

    def check(self, prompt_tokens: int, output_tokens: int) -> None:
        """Raise ``Unservable`` when the deployment can never serve such a request (the reason as simulate's)."""
        tr = TraceRequest("check", 0.0, prompt_tokens, output_tokens)
        _ok, skipped = prepare_requests([tr], model=self.model, block_manager=self._check_bm,
                                        token_budget=self._budget, chunks_prefills=self._chunks)
        if skipped:
            raise Unservable(skipped[0].code, skipped[0].reason)

    def describe(self) -> str:
        """One line for the start message: policy, hardware, KV blocks."""
        c = self.config
        return f"{c.scheduler}, {c.gpu} x{c.tp * c.pp}, {self.num_blocks} KV blocks, speedup {self.speedup:g}"

    def submit(self, prompt_tokens: int, output_tokens: int) -> Served:
        """Take a request arriving now; its tokens come on the returned ``Served``'s queue."""
        raise NotImplementedError

    async def run(self) -> None:
        """Serve until ``shutdown``."""
        raise NotImplementedError

    def _new(self, prompt_tokens: int, output_tokens: int, arrival: float, engine_at: float) -> Served:
        """A checked request, numbered and in flight (``engine_at``: when the engine sees it)."""
        if self.closed:
            raise RuntimeError("the server is shutting down")
        self.check(prompt_tokens, output_tokens)
        n = next(self._ids)
        served = Served(Request(str(n), engine_at, prompt_tokens, output_tokens, index=n), arrival)
        self.active[n] = served
        return served

    # ---- the clock ---------------------------------------------------------------------------------------
    def now(self) -> float:
        """Simulated seconds since the server started."""
        return (self.clock() - self.start) * self.speedup

    def wall(self, sim_time: float) -> float:
        """The ``clock()`` reading at which simulated time ``sim_time`` happens."""
        return self.start + sim_time / self.speedup

    async def sleep_until(self, sim_time: float) -> None:
        """Wait until simulated time ``sim_time`` has come (at once if it has)."""
        delay = self.wall(sim_time) - self.clock()
        if delay > 0:
            await asyncio.sleep(delay)


    def _emit(self) -> None:
        """Queue every output token produced since the last call; finished requests leave ``active``."""
        back = self.frontend.per_output_token_s
        for n, served in list(self.active.items()):
            r = served.request
            k = r.num_generated
            if k > served.emitted:
                times = r.token_times
                for i in range(served.emitted, k):
                    t = times[i] + back
                    served.queue.put_nowait(("token", t))
                    for f in self.on_token:
                        f(served, t)
                served.emitted = k
            if r.status is Status.FINISHED:
                self._close(n, served, "abort" if served.cancelled else "length")

    def cancel(self, served: Served) -> None:
        """The client went away: the request ends at its next output token, as if that were its last (its KV
        blocks freed then by the scheduler's own bookkeeping; a cancelled request still costs its current step)."""
        r = served.request
        if served.finish is None and not served.cancelled:
            served.cancelled = True
            r.output_tokens = min(r.output_tokens, r.num_generated + 1)

    def _close(self, n: int, served: Served, finish: str) -> None:
        del self.active[n]
        served.finish = finish
        served.queue.put_nowait(("done", finish))
        for f in self.on_done:
            f(served)

    def shutdown(self) -> None:
        """Stop the driver and end every request still in flight (``("done", "abort")``); refuse new ones."""
        if self.closed:
            return
        self._emit()
        self.closed = True
        for n, served in list(self.active.items()):
            self._close(n, served, "abort")
        self._kick.set()

    # ---- state for /metrics --------------------------------------------------------------------------------
    def replica_state(self) -> list[dict[str, Any]]:
        """Per replica: requests running and waiting, and the fraction of KV blocks in use."""
        return [{"running": len(s.running), "waiting": len(s.waiting),
                 "kv_usage": s.bm.num_used / s.bm.num_blocks} for s in self.schedulers]

    def completion_time(self, served: Served) -> float:
        """Simulated time the client has the whole answer: the last token's, plus the frontend's completion cost."""
        r = served.request
        return r.token_times[-1] + self.frontend.per_output_token_s + self.frontend.completion_s

    def record(self, served: Served) -> dict[str, Any]:
        """A finished or aborted request as a trace line that ``servesim simulate --trace`` replays (arrival in
        simulated seconds since start), with what the client was served: ``served_ttft_s``, ``served_itl_s`` (every
        token gap) and ``served_e2e_s`` in simulated seconds, ``finish_reason`` and the ``speedup``."""
        r = served.request
        line: dict[str, Any] = {"request_id": str(r.index), "arrival_time": served.arrival,
                                "prompt_tokens": r.prompt_tokens, "output_tokens": r.output_tokens,
                                "finish_reason": served.finish, "speedup": self.speedup}
        times = r.token_times or []
        if served.finish == "length" and times:
            line["served_ttft_s"] = times[0] + self.frontend.per_output_token_s - served.arrival
            line["served_itl_s"] = [b - a for a, b in itertools.pairwise(times)]
            line["served_e2e_s"] = self.completion_time(served) - served.arrival
        return line


class RealtimeDeployment(ServedBackend):
    """A ``SimConfig`` deployment driven in real time; ``submit`` requests, ``run`` the driver, ``shutdown`` it."""

    def __init__(self, config: SimConfig, cost_model: CostModel | None = None, speedup: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import simpy

        from sim.catalog.hardware import get_gpu
        super().__init__(speedup, clock)
        config.check()
        config.check_router()
        self.config = config
        self.model = config.model_spec()
        if cost_model is None:
            from sim.cost.roofline import RooflineCostModel
            cost_model = RooflineCostModel(self.model, get_gpu(config.gpu), **config.roofline_kwargs(self.model))
        self.cost = cost_model
        _memory, self.num_blocks = config.memory(self.model)
        self.frontend = config.effective_frontend()
        self.schedulers = [config.make_scheduler(self.num_blocks) for _ in range(config.replicas)]
        self.env = simpy.Environment()
        self.recorder = Recorder()
        replica_cls = AsyncReplica if config.engine_loop == "async" else Replica
        self.replicas = [replica_cls(self.env, i, s, cost_model, config.pp, self.recorder, self._finished)
                         for i, s in enumerate(self.schedulers)]
        self.router = Router(self.replicas, config.router, config.router_cache_weight)
        self.set_limits(config, self.num_blocks)

    # ---- requests ------------------------------------------------------------------------------------------
    def submit(self, prompt_tokens: int, output_tokens: int) -> Served:
        """A request arriving now: checked, then handed to the router when the modelled frontend is done with it."""
        arrival = max(self.now(), self.env.now)
        engine_at = arrival + float(self.frontend.inbound(prompt_tokens))
        served = self._new(prompt_tokens, output_tokens, arrival, engine_at)
        self.env.process(self._arrive(served.request, engine_at - self.env.now))
        self._kick.set()
        return served

    def _arrive(self, req: Request, delay: float):
        if delay > 0:
            yield self.env.timeout(delay)
        self.router.route(req).submit(req)

    def _finished(self, replica: Replica, finished: list[Request]) -> None:
        """Replica callback: nothing to do here; ``_emit`` reads token counts after each slice."""

    # ---- the driver -----------------------------------------------------------------------------------------
    async def run(self) -> None:
        """Step the simulation as wall time passes until ``shutdown``; each token goes to its request's queue."""
        env = self.env
        while not self.closed:
            if not self.advance(self.now()):  # behind: let the HTTP side run, then catch up
                await asyncio.sleep(0)
                continue
            nxt = env.peek()
            timeout = None if nxt == math.inf else max(0.0, (nxt - self.now()) / self.speedup)
            self._kick.clear()
            try:
                await asyncio.wait_for(self._kick.wait(), timeout)
            except TimeoutError:
                pass

    def advance(self, until: float) -> bool:
        """Process the simulated events due by ``until`` (at most ``STEPS_PER_SLICE``) and queue the tokens they
        produced; False when events due were left for the next call."""
        env = self.env
        steps = 0
        while (nxt := env.peek()) <= until and nxt != math.inf and steps < STEPS_PER_SLICE:
            env.step()
            steps += 1
        self._emit()
        return steps < STEPS_PER_SLICE

    def _emit(self) -> None:
        super()._emit()
        rec = self.recorder
        if len(rec.stage_rows) > RECORDER_LIMIT or len(rec.microbatch_rows) > RECORDER_LIMIT:
            rec.take_tables()  # nothing reads them while serving: keep memory flat
