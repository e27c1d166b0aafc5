"""Shared mechanics of every scheduler policy: queues, admission, KV growth, recompute preemption.

A policy only decides *which* items form the next batch (``_form_batch``).
Everything else, including the bookkeeping after a batch finishes, lives
here once. No clock, no simpy, no torch: the simulator and the real engine
drive the same objects and pass the current time in as data.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from array import array
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from sim.batch import Batch, BatchItem
from sim.gap_log import GapLog
from sim.kv.block_manager import BlockManager
from sim.request import Request, Status
from sim.schedulers.stretching import StretchSteps

#: token times of finished requests folded into the gap log together (32 bytes each while they wait): 64 Ki, so that
#: a fold's NumPy temporaries (512 KiB each) stay in cache; at 1 Mi tokens a fold's 8 MiB temporaries cost 10-30% of
#: a 10,000-request run on the 2-core VM, much of it in page faults (measured, issue 34)
FOLD_EVERY_TOKENS = 1 << 16
#: --kv-reservation: the maximum length (the originals), or each request's own length (a what-if oracle)
KV_RESERVATIONS = ("max-model-len", "oracle")


@dataclass(frozen=True)
class SchedulerConfig:
    """Knobs shared by the policies; each policy documents which ones it reads."""

    max_batch_size: int = 128          # max requests running at once (vLLM's max_num_seqs)
    token_budget: int | None = None    # max tokens per iteration (Sarathi budget, vLLM max_num_batched_tokens)
    chunk_align: int = 0               # Sarathi: round chunked batches down to this tile multiple (0: off)
    max_model_len: int | None = None   # the model's context length (vLLM's --max-model-len); None: not known
    #: what Orca and FasterTransformer reserve per request at admission: "max-model-len" (as Sarathi-Serve's
    #: OrcaBlockSpaceManager), or "oracle", a what-if that knows each request's own prompt + output length
    kv_reservation: str = "max-model-len"

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.kv_reservation not in KV_RESERVATIONS:
            raise ValueError(f"kv_reservation must be one of {', '.join(KV_RESERVATIONS)}, got {self.kv_reservation!r}")
        if self.max_model_len is not None and self.max_model_len < 1:
            raise ValueError(f"max_model_len must be >= 1, got {self.max_model_len}")
        if self.token_budget is not None and self.token_budget < 1:
            raise ValueError(f"token_budget must be >= 1, got {self.token_budget}")
        if self.chunk_align < 0:
            raise ValueError(f"chunk_align must be >= 0, got {self.chunk_align}")


class Scheduler(StretchSteps, ABC):
    """Iteration-level scheduler: ``add_request``, ``schedule(now)``, ``on_batch_done(batch, now)``."""

    name: str = "abstract"
    #: whether a prompt may be split over several iterations
    chunks_prefills: bool = False
    #: whether admission reserves the request's maximum length (Orca, FasterTransformer)
    reserves_max_length: bool = False
    #: waiting requests are admitted only with the token budget the running requests leave (Orca, Sarathi-Serve,
    #: vLLM v1; vLLM v0 schedules prompts first): a budget the running ones fill admits no one
    admits_after_decodes: bool = True
    #: default per-iteration token budget when the user gives none (None: unlimited)
    default_token_budget: int | None = None
    #: automatic prefix caching when the user says neither way (vLLM v1 turns it on; the v0-era policies did not)
    default_prefix_caching: bool = False
    #: admission keeps the v0 block manager's watermark of free blocks (vLLM v1's KV cache manager has none)
    uses_watermark: bool = True
    #: the engine loop schedules step N+1 while step N runs (vLLM V1's async scheduling; sim.serving.async_loop)
    default_async_scheduling: bool = False

    #: requests running at once when the user gives no max_num_seqs: each policy sets its original's default
    #: (128 is Sarathi-Serve's, BaseSchedulerConfig.max_num_seqs in sarathi/config/config.py)
    default_max_num_seqs: int = 128
    #: whether this policy can run speculative decoding (``enable_speculation``; vllm_v1 only, as vLLM V1)
    supports_speculation: bool = False
    #: speculative decoding is on: decodes may emit several tokens a step (decode stretches must stay off)
    speculative: bool = False
    #: its runtime state (sim.spec.state.SpecDecoding) when on
    spec = None

    @classmethod
    def default_budget(cls, max_model_len: int) -> int | None:
        """The budget this policy runs with when none is given, for a model of ``max_model_len`` tokens."""
        return cls.default_token_budget

    @classmethod
    def batch_defaults(cls, max_model_len: int, gpu_memory_bytes: float | None = None, gpu_name: str = "",
                       usage_context: str = "api-server") -> tuple[int | None, int]:
        """(token budget, max running requests) when the user gives neither, on a GPU of this memory and name
        (None: unknown) serving as an API server or offline; the v0-era policies ignore the GPU and the usage."""
        return cls.default_budget(max_model_len), cls.default_max_num_seqs

    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.bm = block_manager
        self.token_budget = config.token_budget if config.token_budget is not None else self.default_token_budget
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions = 0
        self._next_batch_id = 0
        self._in_flight: dict[int, Batch] = {}  # micro-batches scheduled and not yet done (pipeline parallelism)
        self.gap_log = GapLog()  # every token gap of its finished requests (after flush_tokens)
        self._to_fold: list[Request] = []
        self._to_fold_tokens = 0
        self.fold_every_tokens = FOLD_EVERY_TOKENS  # the simulator splits this among replicas
        #: False: a finished request's token times are folded into gap_log and dropped (memory per request,
        #: not per token: large simulations); True keeps them (engine, validation, tests)
        self.keep_token_times = True
        self.cached_free_log = array("q")  # per scheduled batch, with prefix caching: cached free blocks
        #: disaggregated serving: a prefill replica keeps a finished request's blocks until its KV has moved
        #: (``release``); a decode replica takes requests whose KV arrives from elsewhere (``reserve``, ``receive``)
        self.hold_finished = False
        self.num_incoming = 0
        self.last_batch_done = (-1, 0)  # (the batch ``on_batch_done`` advanced last, how many requests it finished)

    # ---- interface used by the simulator and the engine -------------------------------------
    def add_request(self, request: Request) -> None:
        """A request arrives: it joins the back of the waiting queue."""
        request.status = Status.WAITING
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting) or bool(self.running)

    # ---- disaggregated serving: KV computed on one replica, decoded on another -----------------------------
    def release(self, request: Request) -> None:
        """Free a finished request's blocks held for its KV transfer (``hold_finished``)."""
        self.bm.free(request)

    def reserve(self, request: Request) -> bool:
        """Blocks for a request whose prompt's KV will arrive from a prefill replica; False if they do not fit now.

        Admission as for a new request: the batch cap (counting requests still in transfer), the watermark (or
        the maximum length, for policies that reserve it).
        """
        if len(self.running) + self.num_incoming >= self.config.max_batch_size:
            return False
        n = self._admit_tokens(request)  # Orca reserves the maximum length, without the watermark
        if not self.bm.can_admit(n, use_watermark=self.uses_watermark and not self.reserves_max_length):
            return False
        self.bm.grow(request, n)
        self.num_incoming += 1
        return True

    def receive(self, request: Request) -> None:
        """The reserved request's KV has arrived: it decodes from the next iteration on."""
        self.num_incoming -= 1
        request.status = Status.RUNNING
        self.running.append(request)

    def schedule(self, now: float = 0.0) -> Batch | None:
        """Form the next batch (allocating KV blocks), or None when nothing can run now."""
        decodes, prefills = self._form_batch()
        if not decodes and not prefills:
            return None
        batch = Batch(decodes + prefills, self._next_batch_id, self.bm.num_used, num_decodes=len(decodes))
        if self.bm.caching:  # cache occupancy over time: unreferenced blocks still holding a prefix
            self.cached_free_log.append(self.bm.num_cached_free)
        for r, _new, _cached in batch.prefill_items:  # a decode was necessarily scheduled before
            if r.first_scheduled_time is None:  # never before arrival (float rounding of the arrival wait)
                r.first_scheduled_time = max(r.arrival_time, now)
        self._next_batch_id += 1
        self._in_flight[batch.batch_id] = batch
        return batch

    def enable_speculation(self, spec) -> None:
        """Run speculative decoding with ``spec`` (a sim.spec.state.SpecDecoding); refused by policies without it."""
        if not self.supports_speculation:
            raise ValueError(f"speculative decoding is modelled for vLLM V1 only: use --scheduler vllm_v1 "
                             f"(not {self.name})")
        self.spec, self.speculative = spec, True

    def on_batch_done(self, batch: Batch, now: float = 0.0) -> list[Request]:
        """Advance every item's request; sample a token where its known tokens are all computed. With speculative
        decoding a verified item emits its token plus the drafts accepted, all at ``now`` (a burst); the rejected
        positions are not computed (their slots are overwritten next step; vLLM keeps the blocks with the request)."""
        del self._in_flight[batch.batch_id]
        finished: list[Request] = []
        self._advance(batch.entries, now, finished, batch.batch_id)
        if finished:
            self.running = [r for r in self.running if r.status is not Status.FINISHED]
        self.last_batch_done = (batch.batch_id, len(finished))
        return finished

    def _advance(self, entries: list, now: float, finished: list[Request], batch_id: int = -1) -> None:
        """``on_batch_done``'s work on each (request, new, cached) of ``entries``, in order (a decode stretch's last
        step too): the tokens computed, a block that fills shared, a token sampled, a request that is done finished."""
        caching, bs = self.bm.caching, self.bm.block_size
        spec, bm = self.spec, self.bm
        for req, new, _cached in entries:
            if spec is not None and req in spec.proposed:
                accepted = spec.verify(req, batch_id)
                req.num_computed += 1 + accepted
                if caching:
                    bm.on_computed(req)
                req.num_generated += 1 + accepted
                req.token_times.extend([now] * (1 + accepted))
                if req.num_generated >= req.output_tokens:
                    spec.finished(req)
                    self._finish(req, now, finished)
                continue
            c = req.num_computed + new
            req.num_computed = c
            if caching and (new > 1 or not c % bs):  # a block filled: share it
                bm.on_computed(req)
            g = req.num_generated
            if c == req.prompt_tokens + g:
                g += 1
                req.num_generated = g
                req.token_times.append(now)
                if g == 1:
                    req.first_token_time = now
                if g >= req.output_tokens:
                    if spec is not None:
                        spec.finished(req)
                    self._finish(req, now, finished)

    def _finish(self, req: Request, now: float, finished: list[Request]) -> None:
        """``req`` produced its last token at ``now``: its blocks go (unless held for a KV transfer)."""
        req.status = Status.FINISHED
        req.completion_time = now
        if not self.hold_finished:
            self.bm.free(req)
        self._fold_tokens(req)
        finished.append(req)

    def _fold_tokens(self, req: Request) -> None:
        """Queue a finished request for ``flush_tokens`` (folded many at a time: numpy per request cost the
        simulator 20% on 64 replicas)."""
        n = len(req.token_times)
        if n > 1:
            self._to_fold.append(req)
            self._to_fold_tokens += n
            if self._to_fold_tokens >= self.fold_every_tokens:
                self.flush_tokens()
        elif not self.keep_token_times:
            req.token_times = None

    def flush_tokens(self) -> None:
        """Fold the queued finished requests: their gaps into ``gap_log``, each one's largest gap onto it, their
        token times dropped unless kept. Called before anything reads ``gap_log`` or ``tbt_max``."""
        reqs, self._to_fold, self._to_fold_tokens = self._to_fold, [], 0
        if not reqs:
            return
        tops = self.gap_log.add_token_times([r.token_times for r in reqs])
        for r, top in zip(reqs, tops):
            r.tbt_max = top
            if not self.keep_token_times:
                r.token_times = None

    # ---- what a policy implements -------------------------------------------------------------
    @abstractmethod
    def _form_batch(self) -> tuple[list[BatchItem], list[BatchItem]]:
        """The policy: which requests run next and how many tokens each, as (decode items, prefill items)."""

    # ---- shared mechanics for policies ---------------------------------------------------------
    def _schedulable_running(self) -> deque[Request]:
        """Running requests not already part of a micro-batch in flight, in admission order."""
        if not self._in_flight:
            return deque(self.running)
        busy = {r for b in self._in_flight.values() for r, _new, _cached in b.entries}
        return deque(r for r in self.running if r not in busy)

    def _admit_tokens(self, request: Request) -> int:
        """Tokens whose blocks admission must find: the whole known sequence, or (Orca, FasterTransformer) the
        maximum length: max_model_len, else (the oracle, or no context length given) the request's own."""
        if not self.reserves_max_length:
            return request.num_known
        cfg = self.config
        if cfg.kv_reservation == "oracle" or cfg.max_model_len is None:
            return request.max_tokens
        return cfg.max_model_len

    def _can_admit(self, request: Request, num_tokens: int | None = None) -> bool:
        """Batch-size cap and KV admission (watermark for paged policies, none for reservations)."""
        if len(self.running) + self.num_incoming >= self.config.max_batch_size:
            return False
        n = self._admit_tokens(request) if num_tokens is None else num_tokens
        return self.bm.can_admit(n, use_watermark=self.uses_watermark and not self.reserves_max_length,
                               request=request)

    def _admit(self, request: Request, num_tokens: int | None = None) -> None:
        """Move the head of the waiting queue to running, allocating its blocks (reusing a cached prefix: its
        tokens count as computed, so ``num_pending`` and ``num_computed`` already reflect the hit)."""
        popped = self.waiting.popleft()
        assert popped is request
        self.bm.admit(request, self._admit_tokens(request) if num_tokens is None else num_tokens)
        request.status = Status.RUNNING
        self.running.append(request)

    def _admit_whole_prompts(self, tokens: int) -> list[BatchItem]:
        """Admit waiting requests FCFS, each with its whole (re-)prefill, while the token budget
        (counting ``tokens`` already in the batch), the batch cap and KV admission allow; stop at the first misfit."""
        items: list[BatchItem] = []
        budget = self.token_budget
        while self.waiting:
            r = self.waiting[0]
            # a preempted request re-prefills its prompt plus the tokens it generated, less a cached prefix
            n = r.num_known - self.bm.prefix_hit(r)
            if budget is not None and tokens + n > budget:
                break
            if not self._can_admit(r):
                break
            self._admit(r)
            items.append(BatchItem(r, n, r.num_computed))
            tokens += n
        return items

    def _tokens_in_flight(self) -> dict[Request, int]:
        """Tokens of each request scheduled in a micro-batch still in flight (pipeline parallelism)."""
        ahead: dict[Request, int] = {}
        for b in self._in_flight.values():
            for r, new, _cached in b.entries:
                ahead[r] = ahead.get(r, 0) + new
        return ahead

    def _grow_or_preempt(self, request: Request, num_tokens: int, victims: deque[Request],
                         in_flight: dict[Request, int] | None = None) -> bool:
        """Give ``request`` blocks for ``num_tokens``, preempting ``victims`` newest first; False if it was
        preempted itself, or (a request with tokens ``in_flight``, never preempted mid-pipeline) if it waits."""
        bm = self.bm
        if len(request.block_table) * bm.block_size >= num_tokens:
            return True  # fast path: most decodes stay inside their last block
        while not bm.can_grow(request, num_tokens):
            victim = self._pop_victim(victims, in_flight) if in_flight else (victims.pop() if victims else None)
            if victim is not None:
                self._preempt(victim)
            elif in_flight and request in in_flight:
                return False
            else:
                self._preempt(request)
                return False
        bm.grow(request, num_tokens)
        return True

    @staticmethod
    def _pop_victim(victims: deque[Request], in_flight: dict[Request, int]) -> Request | None:
        """The newest of ``victims`` with nothing in flight, removed from it (None if every one has)."""
        for i in range(len(victims) - 1, -1, -1):
            if victims[i] not in in_flight:
                r = victims[i]
                del victims[i]
                return r
        return None

    def _plain_decodes(self, run: Iterable[Request], stop: bool = False) -> tuple[list, list[Request]] | None:
        """A running pass's fast path: a one-token item (a plain ``(request, 1, cached)`` tuple: see ``Batch``) for
        each decoding request of ``run``, in order, then a block for each of them crossing a block boundary, in
        order, where there are enough for all (so no preemption happens); (the items, the requests of ``run`` not
        decoding), or None, taking nothing, where blocks run short. ``stop``: end at the first one not decoding."""
        bs = self.bm.block_size
        items: list = []
        others: list[Request] = []
        crossing: list[Request] = []
        add = items.append
        for r in run:
            c = r.num_computed
            g = r.num_generated
            if g and c + 1 == r.prompt_tokens + g:
                add((r, 1, c))
                if len(r.block_table) * bs <= c:
                    crossing.append(r)
            elif stop:
                break
            else:
                others.append(r)
        if len(crossing) > self.bm.num_free:
            return None
        grow = self.bm.grow
        for r in crossing:
            grow(r, r.num_computed + 1)
        return items, others

    def _decode_pass(self, queue: deque[Request], budget: int | None) -> tuple[list, list[Request]]:
        """One-token decode items for the decoding requests of ``queue`` (at most ``budget``), in order.

        Blocks are grown where a decode crosses a block boundary; when they run out, requests are
        preempted from the tail of ``queue``, newest first. Returns the items (plain
        ``(request, 1, cached)`` tuples on the fast path: see ``Batch``) and the requests of ``queue``
        that are not decoding (prefills under way), in order. ``queue`` is consumed.
        """
        if budget is None or budget >= len(queue):
            fast = self._plain_decodes(queue)
            if fast is not None:
                queue.clear()
                return fast
        items: list = []
        others = []
        left = len(queue) if budget is None else budget
        while queue and left > 0:
            r = queue.popleft()
            if not r.is_decoding:
                others.append(r)
            elif self._grow_or_preempt(r, r.num_computed + 1, queue):
                items.append(BatchItem(r, 1, r.num_computed))
                left -= 1
        others.extend(r for r in queue if not r.is_decoding)
        queue.clear()
        return items, others

    def _preempt(self, request: Request) -> None:
        """Preemption by recompute: free the blocks, back to the front of the waiting queue."""
        self.bm.free(request)
        request.reset_for_recompute()
        self.running.remove(request)
        self.waiting.appendleft(request)
        self.num_preemptions += 1

    def _chunk(self, remaining: int, budget_left: int, batch_tokens: int) -> int:
        """Prefill chunk size: min(remaining, budget left), optionally aligned so the batch is a tile multiple."""
        c = min(remaining, budget_left)
        align = self.config.chunk_align
        if align and c < remaining:
            aligned = (batch_tokens + c) // align * align - batch_tokens
            if aligned > 0:
                c = aligned
        return c

    def max_iteration_tokens(self, request: Request) -> int | None:
        """Most tokens this request will ever need in one iteration, or None if the policy chunks it."""
        if self.chunks_prefills:
            return None
        return request.max_tokens - 1
