"""Stretches: the iterations that repeat one batch shape, advanced in one simpy step.

Between events that change what a replica runs, consecutive iterations carry the same requests: every running
decode, each one token further, and (policies that chunk prompts) the next chunk of the one prompt under way. After
any batch finishes, ``run_stretch`` works out the iterations that follow exactly as the engine loop would run them
(each one's host and device time from the cost model, in the same floating-point order), grows KV blocks where a
decode crosses a block boundary (and a chunk's, where the policy allocates per chunk), records every iteration's
batches.csv row and every token's time, and lands the clock exactly on the last one's end (``hops``): the
replica waits once instead of once per iteration. Same batches, same times, same outputs (tests compare).

A stretch runs through the step that produces a request's last token (the scheduler finishes those requests in
batch order; where the prefix cache notes that step's blocks, the whole step goes through its ``_advance``, so
frees and shared blocks interleave as in ``on_batch_done``). Where nothing waits (FasterTransformer: whatever waits,
until its batch is empty) and no decode's blocks are noted for the prefix cache, it goes on past such steps with
the remaining decodes (``stretch_times.pieces``: each run of steps priced with its own batch; the finished
requests' blocks freed as their step ends, before the next step's grow); otherwise, where no request arrives
before the next decision, the next stretch follows in the same call. It stops before the step:

- with a chunked prompt's last chunk where a request waits or reaches the scheduler by its decision (the budget it
  leaves may admit one), or in the other cases of ``_last_chunk``; else that step runs (it samples a token);
- decided at or after a request reaches the scheduler (serial loop: its arrival, so a step decided before it runs
  through it; the async loop: the step decided as the one before starts; with a router that reads the cache on
  arrival, ``cache_aware``, a serial step ending at or after it), except where nothing that arrives can change
  the batch: FasterTransformer admits only into an empty batch (``WAITING_BLIND``); decodes and a chunk that fill
  the token budget of a policy that admits from what they leave (``Scheduler.budget_full``; not vLLM v0, whose
  prompts go first); a first waiting request that cannot be admitted next to the decodes
  (``Scheduler.waiting_head_blocked``: the batch cap or the KV cache holds it back and stays so while decodes only
  grow, later arrivals queue behind it; with prefix caching only for a request declaring no reuse, never
  preempted);
- whose blocks (decodes crossing a block boundary, a chunk's) are more than are free (the policy would preempt).

It never starts unless every running request is decoding (or one prompt is being chunked: Sarathi-Serve's under
way anywhere, vLLM V1's last in the queue), nothing waits (but as above), nothing is in flight, and there is no
speculative decoding (``Scheduler.stretch_plan``), and only on a single-stage replica whose arrivals are known in
advance (``Replica.next_arrival``): a single replica, or round-robin replicas that nothing reads across during the
run (``Replica.independent``: each stretches apart, on its own arrivals; the tables are put in time order when
built, and a run where two replicas' rows end at the same time, whose order simpy's events decide, runs again
without stretches, as does at once a trace over 1% of whose requests arrive together), priced by a cost model
that reads only a batch's aggregates (``PRICED_BY_AGGREGATES``), for the five policies whose next batch is then
the same requests' (``STRETCH_POLICIES``). Where a finished request's KV is held for a transfer
(``hold_finished``: a disaggregated deployment's prefill pool) it stops before a last token rather than running
through it.
"""

from __future__ import annotations

import math
from typing import Any

from sim.batch import Batch
from sim.request import Request, Status
from sim.schedulers import SCHEDULERS, Scheduler
from sim.serving import stretch_blocks
from sim.serving.stretch_times import pieces as _pieces
from sim.serving.stretch_times import step_times

Replica = Any  # sim.serving.cluster.Replica (which imports this module)

#: policies whose next batch, with nothing waiting and nothing finishing, is again every running request's decode
STRETCH_POLICIES = frozenset(SCHEDULERS[n] for n in ("faster_transformer", "orca", "vllm", "sarathi", "vllm_v1"))
#: policies whose batch, while any request runs, is every running request's decode whatever waits (FasterTransformer
#: admits only into an empty batch): arrivals and a waiting queue do not stop their stretches (without prefix
#: caching, where a router's lookup of an arriving request could read the cache mid-stretch)
WAITING_BLIND = frozenset({SCHEDULERS["faster_transformer"]})
_SCHEDULE, _ON_BATCH_DONE = Scheduler.schedule, Scheduler.on_batch_done


#: cost models whose host and stage prices read only a batch's sizes, token counts and total decode context (by
#: name: importing the kernels model here would load scipy into every run)
PRICED_BY_AGGREGATES = frozenset({"sim.cost.constant.ConstantCostModel", "sim.cost.roofline.RooflineCostModel",
                                  "sim.cost.kernels.model.KernelCostModel"})


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def stretch_capable(replica: Replica, replicas: int) -> bool:
    """Whether this replica may run stretches at all (see the module docstring); checked once per run."""
    sched = replica.scheduler
    return (replica.decode_stretches and replica.pp == 1 and (replicas == 1 or replica.independent)
            and replica.next_arrival is not None
            and _name(type(replica.cost)) in PRICED_BY_AGGREGATES and type(sched) in STRETCH_POLICIES
            and "schedule" not in vars(sched) and "on_batch_done" not in vars(sched)  # nobody listens per batch
            and type(sched).schedule is _SCHEDULE and type(sched).on_batch_done is _ON_BATCH_DONE
            and Scheduler.schedule is _SCHEDULE and Scheduler.on_batch_done is _ON_BATCH_DONE)


def exact_delay(now: float, end: float) -> float:
    """A delay ``d`` as close to ``end - now`` as floats allow, preferring ``now + d == end`` (what simpy adds)."""
    d = end - now
    while now + d < end:
        d = math.nextafter(d, math.inf)
    while now + d > end:
        d = math.nextafter(d, -math.inf)
    return d


def hops(now: float, ends: list[float], delays: list[float]) -> list[float]:
    """Timeouts that bring the clock from ``now`` to exactly ``ends[-1]``: one where some delay lands on it, else
    one onto the latest step end that can be landed on, then each later step's own delay (the loop's expression,
    so exact). A sum can miss a value when ``now``'s low bits sit half-way and rounding goes to even."""
    for j in range(len(ends) - 1, -1, -1):
        d = exact_delay(now, ends[j])
        if now + d == ends[j]:
            return [d, *delays[j + 1:]]
    return delays


def run_stretch(replica: Replica, batch: Batch, now: float, decided_at: float | None = None,
                horizon: float | None = None) -> tuple[float, float, list[float]] | None:
    """Advance the iterations that follow ``batch`` (just done at ``now``) while each is every running request's
    decode (plus, where one prompt is being chunked, its next chunk: ``Scheduler.stretch_plan``); returns (the last
    one's end, its host-done time: serial loop; its device start: async loop; the timeouts that reach that end
    exactly: ``hops``), or None when none follows. Rows, block growth and token times are all recorded.

    ``decided_at``: the async loop (``sim.serving.async_loop``), where the next step was decided at this time (the
    device start of ``batch``) and each step's host time overlaps the previous step; a stretch then stops before a
    step decided at or after ``horizon`` (a request reaching the scheduler). The serial loop decides as a step
    starts and stops before a step decided at or after the next arrival.

    A stretch that ends with finished requests or a prompt's last chunk is followed by the next one at once (the
    batch after it is again every running decode) where no request arrives before that next decision."""
    serial, origin = decided_at is None, now
    ends: list[float] = []
    delays: list[float] = []
    last = None
    while True:
        done = _stretch(replica, batch, now, decided_at, horizon)
        if done is None:
            break
        now, last_start, times, steps, ending = done
        ends += times
        delays += steps
        last = now, last_start
        if not ending or replica.next_arrival() <= (now if serial else last_start):
            break  # (a request that arrived by the next decision is not in the queue yet: the loop's turn)
        batch, decided_at = None, (None if serial else last_start)
    if last is None:
        return None
    if serial and _meets_an_arrival(replica, ends):  # a timeout per step, as the loop's own
        return last[0], last[1], delays
    return last[0], last[1], hops(origin, ends, delays)


def _meets_an_arrival(replica: Replica, ends: list[float]) -> bool:
    """Whether a request arrives exactly as one of the stretch's steps ends (serial loop): which of the two the
    simulation handles first, and so whether the next decision sees the request, is simpy's order of their
    timeouts, which the loop's timeout per step sets; a stretch then takes a timeout per step too."""
    upto = replica.arrivals_until
    if upto is None:
        return True
    times = upto(ends[-1])
    return bool(times) and not set(ends).isdisjoint(times)


def _stretch(replica: Replica, batch: Batch | None, now: float, decided_at: float | None, horizon: float | None
             ) -> tuple[float, float, list[float], list[float], bool] | None:
    """One stretch (``run_stretch``): (its end, its last step's host-done time or device start, each step's end and
    delay, whether its last step finished requests or a prompt: another may follow), or None."""
    sched = replica.scheduler
    caching = sched.bm.caching
    # arrivals cannot change the next batches: FasterTransformer admits only into an empty batch; a first waiting
    # request that cannot be admitted keeps the rest behind it; a chunk that fills the budget leaves none to admit
    # with. Unless a router reads the cache as a request arrives.
    blind = not replica.arrival_reads_cache and (type(sched) in WAITING_BLIND or sched.waiting_head_blocked())
    through = not sched.hold_finished  # through a step with last tokens (not when a KV transfer waits for them)
    limit, partial, chunk = sched.stretch_plan(batch, blind, last_token=through)
    if limit <= 0:
        return None
    arrivals = horizon  # (async: when the next request reaches the scheduler)
    full = False  # decodes fill the budget: arrivals cannot change the batch until a request finishes
    if blind or (not replica.arrival_reads_cache
                 and sched.budget_full(len(sched.running) - (partial is not None), chunk)):
        full, horizon = not blind, math.inf
    elif horizon is None:
        horizon = replica.next_arrival()
    serial = decided_at is None
    if horizon <= (now if serial else decided_at):
        return None
    # serial loop: a step decided before the next arrival cannot see it, so the stretch may run through the step
    # during which it arrives, unless the router reads the KV cache on arrival (it would see the stretch's end)
    strict = serial and replica.arrival_reads_cache
    reqs = [r for r in sched.running if r is not partial] if partial is not None else sched.running
    base = [r.num_computed for r in reqs]
    left = [r.output_tokens - r.num_generated for r in reqs]
    # onward through finishes: after a step that finishes requests the batch is again every remaining decode while
    # nothing waits (FasterTransformer: until its batch is empty), nothing arrives (the horizon) and no finishing
    # request's blocks are noted for the prefix cache
    any_noted = caching and any(map(sched.bm.notes_computed, reqs))  # (unchanged until requests finish)
    onward = (through and partial is None and (type(sched) in WAITING_BLIND and blind or not (sched.waiting or full))
              and not any_noted)
    if onward:
        stops = sorted(set(left))
        limit = stops[-1]
    events = None  # a chunk stretch's block events, found once over every step it may take
    tail = 0  # the prompt's last chunk, as the stretch's last step (``_last_chunk``)
    if partial is not None:
        tail = _last_chunk(sched, partial, limit, chunk, left, through, strict)
        limit += tail > 0
        events = stretch_blocks.block_events(sched.bm, reqs, base, limit, partial, chunk, any_noted)
        limit = stretch_blocks.steps_with_blocks(sched.bm, limit, partial, events)
        if limit <= 0:
            return None
        if tail and limit < -(-partial.num_pending // chunk):  # blocks run short before it
            tail = 0
    pieces: list[tuple] = []  # those reached
    runs = _pieces(reqs, base, left, stops if onward else [limit], pieces)
    prefills = int(partial is not None)
    # 1. each step's times as the engine loop computes them, up to the horizon
    # (the last chunk runs only if decided before the next request reaches the scheduler: it leaves budget)
    seen = min(horizon, arrivals if arrivals is not None else replica.next_arrival()) if tail else horizon
    steps = step_times(replica.cost, runs, limit, partial, chunk, now, decided_at, horizon, strict, tail, seen)
    decided_l, start_l, end_l, delay_l, host_l, price_l = steps
    # 2. blocks at the steps where some decode crosses a block boundary (and each chunk's); the stretch stops
    # before a step short of blocks; with prefix caching, blocks that fill are shared as their step ends; requests
    # finish (their blocks freed) as their last step ends
    last = min(left) if through and reqs and not onward else 0  # the last token a single stretch runs to
    chunk_from = partial.num_computed if partial is not None else 0
    finished: list[Request] = []
    finish_at: dict[int, list[int]] = {}  # (the steps priced)
    if onward:
        priced = len(end_l)
        for i in [i for i, d in enumerate(left) if d <= priced]:
            finish_at.setdefault(left[i], []).append(i)
    k, used_l, cached_l = stretch_blocks.blocks(sched, reqs, base, len(end_l), partial, chunk, last, events,
                                                finish_at, left if onward else None, end_l, finished, any_noted)
    if not k:
        return None
    # 3. the records: a batches.csv row and a micro-batch row per step, every decode's token
    first = sched.take_batch_ids(k, cached_l)
    index, lo = replica.index, 0
    sampled = tail and k == limit  # its last step is the prompt's last chunk
    for stop, alive, _, _ in pieces:
        hi = min(stop, k - sampled)
        if hi > lo:
            replica.recorder.add_stretch(index, first + lo, lo, hi, chunk, len(alive), len(alive) + prefills,
                                         prefills, decided_l, start_l, end_l, host_l, used_l, price_l)
        if sampled:  # (a chunk stretch has one run of steps)
            replica.recorder.add_stretch(index, first + k - 1, k - 1, k, tail, len(alive), len(alive) + prefills,
                                         prefills, decided_l, start_l, end_l, host_l, used_l, price_l)
        if hi >= k - sampled:
            break
        lo = hi
    times = end_l[:k] if k < len(end_l) else end_l
    t = times[-1]
    ending = k == last or k in finish_at  # its last step ends some requests: that step is advanced as
    # on_batch_done would, unless no block of that step is noted for the prefix cache (then only the finishing
    # needs the scheduler, in order)
    noted = ending and not onward and caching and (any_noted or (partial is not None
                                                                 and sched.bm.notes_computed(partial)))
    advanced, known = (k - 1, times[:-1]) if noted else (k, times)
    going = zip(reqs, base) if not finished else [(r, c) for r, c in zip(reqs, base) if r.status is not Status.FINISHED]
    for r, c in going:
        r.num_computed = c + advanced
        r.num_generated += advanced
        r.token_times.extend(known)
    if partial is not None:
        partial.num_computed = chunk_from + advanced * chunk
        if sampled:  # its last chunk: a token sampled as on_batch_done samples it (the request goes on)
            partial.num_computed = partial.num_known
            partial.num_generated += 1
            partial.token_times.append(t)
            if partial.num_generated == 1:
                partial.first_token_time = t
    replica.last_done = t
    if ending and not onward:
        finished = sched.stretch_finish(reqs, t, partial, chunk) if noted else sched.stretch_finished(reqs, t)
    elif finished:
        sched.drop_finished()
    if finished:
        replica.outstanding -= len(finished)
        replica.on_done(replica, finished)
    return t, start_l[k - 1], times, delay_l[:k], ending or sampled


def _last_chunk(sched: Scheduler, partial: Request, steps: int, chunk: int, left: list[int], through: bool,
                strict: bool) -> int:
    """The tokens of the prompt's last chunk where a chunk stretch of ``steps`` steps may run it as one more step
    (0 where not): the policy takes the whole rest in one step next to the decodes (``stretch_chunk``), none of
    them makes its last token then or before, nothing waits for the budget it leaves, its token is not its last,
    and its blocks are not noted for the prefix cache (whose order ``on_batch_done`` sets); not where the router
    reads the cache as a request arrives (``strict``). The step runs if it is decided before the next request
    reaches the scheduler (``step_times``' ``tail_horizon``) and its blocks are there (``stretch_blocks.blocks``)."""
    rest, bm = partial.num_pending - steps * chunk, sched.bm
    if (not through or sched.waiting or strict or not 0 < rest <= chunk or (left and min(left) <= steps + 1)
            or partial.num_generated + 1 >= partial.output_tokens or bm.caching and bm.notes_computed(partial)):
        return 0
    return rest if sched.stretch_chunk(partial, len(left), rest) == rest else 0
