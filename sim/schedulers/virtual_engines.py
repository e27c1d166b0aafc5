"""vLLM v0 with pipeline parallelism: one scheduler per virtual engine, each with its share of the KV cache.

vLLM v0 (0.6.x: ``Scheduler.__init__`` in vllm/core/scheduler.py, ``LLMEngine._add_processed_request`` in
vllm/engine/llm_engine.py) builds ``pipeline_parallel_size`` schedulers, each over ``num_gpu_blocks // pp``
blocks with its own queues and the same max_num_seqs and max_num_batched_tokens. A new request goes to the
one with the fewest unfinished requests (the first of equals) and stays there; each virtual engine's loop
schedules its next step only when its last one has finished, so it has at most one micro-batch in flight.
``VirtualEngines`` presents the Scheduler interface to a replica, so the cluster loop is the same.
"""

from __future__ import annotations

from array import array
from dataclasses import fields

from sim.batch import Batch
from sim.gap_log import GapLog
from sim.request import Request
from sim.schedulers.base import Scheduler, SchedulerConfig


def num_virtual_engines(policy: type[Scheduler], pp: int) -> int:
    """Schedulers per replica: ``pp`` for a policy that runs one per virtual engine (vLLM v0), else one."""
    return pp if getattr(policy, "pp_virtual_engines", False) else 1


class _Blocks:
    """The virtual engines' block managers seen as one: capacity, use, prefix-cache figures (read-only)."""

    def __init__(self, owner: VirtualEngines) -> None:
        self._owner = owner
        first = owner.engines[0].bm
        self.block_size, self.caching = first.block_size, first.caching

    def _sum(self, attr: str) -> int:
        return sum(getattr(e.bm, attr) for e in self._owner.engines)

    num_blocks = property(lambda self: self._sum("num_blocks"))
    num_used = property(lambda self: self._sum("num_used"))
    num_free = property(lambda self: self._sum("num_free"))
    num_cached_free = property(lambda self: self._sum("num_cached_free"))

    def prefix_hit(self, request: Request) -> int:
        """Cached prompt tokens in the virtual engine ``request`` would be pinned to now."""
        return self._owner.pick().bm.prefix_hit(request)

    @property
    def stats(self):
        """Prefix-cache counters summed over the virtual engines."""
        parts = [e.bm.stats for e in self._owner.engines]
        total = type(parts[0])()
        for f in fields(total):
            setattr(total, f.name, sum(getattr(p, f.name) for p in parts))
        return total



def _same_on_every_engine(name: str) -> property:
    """A flag the replica sets once and every virtual engine follows (read from the first)."""
    def set_all(self, value) -> None:
        for e in self.engines:
            setattr(e, name, value)
    return property(lambda self: getattr(self.engines[0], name), set_all)

class VirtualEngines:
    """A replica's schedulers, one per virtual engine, behind the one-scheduler interface the replica drives."""

    def __init__(self, engines: list[Scheduler]) -> None:
        if not engines:
            raise ValueError("VirtualEngines needs at least one scheduler")
        self.engines = engines
        first = engines[0]
        self.name: str = first.name
        self.config: SchedulerConfig = first.config
        self.token_budget = first.token_budget
        self.chunks_prefills = first.chunks_prefills
        self.bm = _Blocks(self)
        self._next_batch_id = 0
        self._owner: dict[int, Scheduler] = {}      # batch in flight -> its virtual engine
        self._pinned: dict[Request, Scheduler] = {}  # disaggregated serving: requests held or reserved
        self.cached_free_log = array("q")  # per scheduled batch, with prefix caching: cached free blocks
        self.gap_log = GapLog()

    # ---- state the simulator sets or reads on every scheduler ---------------------------------------
    @property
    def gap_log(self) -> GapLog:
        return self._gap_log

    @gap_log.setter
    def gap_log(self, log: GapLog) -> None:  # one log for all: the replica's gaps, whichever engine ran them
        self._gap_log = log
        for e in self.engines:
            e.gap_log = log

    keep_token_times = _same_on_every_engine("keep_token_times")
    hold_finished = _same_on_every_engine("hold_finished")

    @property
    def fold_every_tokens(self) -> int:
        return sum(e.fold_every_tokens for e in self.engines)

    @fold_every_tokens.setter
    def fold_every_tokens(self, n: int) -> None:
        for e in self.engines:
            e.fold_every_tokens = max(1, n // len(self.engines))

    num_preemptions = property(lambda self: sum(e.num_preemptions for e in self.engines))
    num_incoming = property(lambda self: sum(e.num_incoming for e in self.engines))
    waiting = property(lambda self: [r for e in self.engines for r in e.waiting])
    running = property(lambda self: [r for e in self.engines for r in e.running])

    # ---- the Scheduler interface ------------------------------------------------------------------
    def pick(self) -> Scheduler:
        """The virtual engine with the fewest unfinished requests, the first of equals (vLLM's min-cost choice)."""
        return min(self.engines, key=lambda e: len(e.waiting) + len(e.running) + e.num_incoming)

    def add_request(self, request: Request) -> None:
        """Pin ``request`` to the least loaded virtual engine; it stays there."""
        e = self.pick()
        e.add_request(request)
        if e.hold_finished:
            self._pinned[request] = e

    def has_unfinished(self) -> bool:
        """Whether any engine still has a request waiting or running."""
        return any(e.has_unfinished() for e in self.engines)

    def schedule(self, now: float = 0.0) -> Batch | None:
        """The next micro-batch of the first virtual engine with none in flight that has one, or None."""
        busy = list(self._owner.values())
        for e in self.engines:
            if e in busy:
                continue
            e._next_batch_id = self._next_batch_id  # ids unique within the replica: its logs are keyed by them
            batch = e.schedule(now)
            if batch is None:
                continue
            self._next_batch_id += 1
            self._owner[batch.batch_id] = e
            batch.kv_blocks_used = self.bm.num_used  # the replica's whole cache, as a shared scheduler reports it
            if self.bm.caching:
                self.cached_free_log.append(self.bm.num_cached_free)
            return batch
        return None

    def on_batch_done(self, batch: Batch, now: float = 0.0) -> list[Request]:
        """Hand the finished micro-batch to the virtual engine that formed it."""
        return self._owner.pop(batch.batch_id).on_batch_done(batch, now)

    def enable_speculation(self, spec) -> None:
        """As each engine's policy (vLLM v0 refuses it)."""
        for e in self.engines:
            e.enable_speculation(spec)

    def flush_tokens(self) -> None:
        """Fold every engine's finished requests into the shared gap log."""
        for e in self.engines:
            e.flush_tokens()

    def max_iteration_tokens(self, request: Request) -> int | None:
        """As each engine's policy (they are all the same one)."""
        return self.engines[0].max_iteration_tokens(request)

    # ---- disaggregated serving --------------------------------------------------------------------
    def release(self, request: Request) -> None:
        """Free a finished request's blocks held for its KV transfer, in the engine that holds them."""
        self._pinned.pop(request).release(request)

    def reserve(self, request: Request) -> bool:
        """Blocks for a request whose KV will arrive, in the least loaded engine (pinned there if they fit)."""
        e = self.pick()
        if not e.reserve(request):
            return False
        self._pinned[request] = e
        return True

    def receive(self, request: Request) -> None:
        """The reserved request's KV has arrived: its engine decodes it from the next step on."""
        self._pinned.pop(request).receive(request)
