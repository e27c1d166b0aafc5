"""Decode-only stretches: the iterations that repeat one decode batch, advanced in one simpy step.

Between events that change what a replica runs, consecutive decode-only iterations carry the same
requests, each one token further. After such a batch finishes, ``run_stretch`` works out the iterations
that follow exactly as the serial engine loop would run them (each one's host and device time from the
cost model, in the same floating-point order), grows KV blocks where a decode crosses a block boundary,
records every iteration's batches.csv row and every token's time, and returns when the last one ends: the
replica waits once instead of once per iteration. Same batches, same times, same outputs (tests compare).

A stretch stops before the iteration in which (the step then runs through the scheduler as usual):

- a request would produce its last token (its blocks are freed, the batch changes);
- a request arrives at or before that iteration's end (the next decision may admit it); not for FasterTransformer,
  which admits only into an empty batch (``WAITING_BLIND``), nor, without prefix caching, while the first waiting
  request cannot be admitted (``Scheduler.waiting_head_blocked``: the batch cap or the KV cache holds it back, and
  stays so as decodes only take blocks; arrivals queue behind it);
- the decodes crossing a block boundary need more blocks than are free (the policy would preempt).

It never starts unless the batch just done decoded every running request and nothing else, nothing waits (but
as above), nothing is in flight and there is no speculative decoding
(``Scheduler.decode_stretch_steps``), and only on
a single-stage, single-replica deployment whose arrivals are known in advance (``Replica.next_arrival``;
several replicas would interleave their batches.csv rows differently), priced by a cost model that reads
only a batch's aggregates (``PRICED_BY_AGGREGATES``), for the five policies whose next decode batch is the
same requests' (``STRETCH_POLICIES``): every one of them forms "all running decodes" when nothing waits.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from itertools import chain, repeat
from typing import Any

from sim.batch import Batch, BatchItem
from sim.cost.roofline import RooflineCostModel
from sim.schedulers import SCHEDULERS, Scheduler

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
    return (replica.decode_stretches and replica.pp == 1 and replicas == 1 and replica.next_arrival is not None
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
    starts and stops before a step decided at or after the next arrival."""
    sched = replica.scheduler
    caching = sched.bm.caching
    # arrivals cannot change the next batches: FasterTransformer admits only into an empty batch; a first waiting
    # request that cannot be admitted keeps the rest behind it (with caching its hits could change); a chunk that
    # fills the budget leaves none to admit with. Unless a router reads the cache as a request arrives.
    blind = not replica.arrival_reads_cache and (type(sched) in WAITING_BLIND or (
        not caching and sched.waiting_head_blocked()))
    limit, partial, chunk = sched.stretch_plan(batch, blind, chunk_stretch=not caching)
    if limit <= 0:
        return None
    if blind or (not replica.arrival_reads_cache
                 and sched.budget_full(len(sched.running) - (partial is not None), chunk)):
        horizon = math.inf
    elif horizon is None:
        horizon = replica.next_arrival()
    serial = decided_at is None
    if horizon <= (now if serial else decided_at):
        return None
    # serial loop: a step decided before the next arrival cannot see it, so the stretch may run through the step
    # during which it arrives, unless the router reads the KV cache on arrival (it would see the stretch's end)
    strict = serial and replica.arrival_reads_cache
    reqs = [r for r in sched.running if r is not partial] if partial is not None else sched.running
    bm, bs = sched.bm, sched.bm.block_size
    base = [r.num_computed for r in reqs]
    n = len(reqs)
    context = sum(base)  # the keys the last batch's decodes read (as its ``decode_context``): each one's computed
    size, prefills = (n + 1, 1) if partial is not None else (n, 0)
    # 1. each step's times as the engine loop computes them, up to the horizon
    decided_l: list[float] = []
    start_l: list[float] = []
    end_l: list[float] = []
    delay_l: list[float] = []
    price_l: list[tuple] = []
    host_l: list[float] = []
    t = now
    for host, price in _prices(replica.cost, reqs, base, context, limit, partial, chunk):
        if serial:  # serial: decided as it starts, the host time first, then the device's
            if t >= horizon:
                break
            decided, start = t, t + host
            delay = host + price[0]
            end = t + delay
            if strict and end >= horizon:
                break
        else:  # async: decided as the previous step started; on the device after it and after its host work
            decided = decided_at
            if decided >= horizon:
                break
            start = max(t, decided + host)  # the async loop's own expression
            delay = (start - t) + price[0]
            end = t + delay
            decided_at = start
        decided_l.append(decided)
        start_l.append(start)
        end_l.append(end)
        delay_l.append(delay)
        price_l.append(price)
        host_l.append(host)
        t = end
    # 2. blocks, step by step: decodes crossing a block boundary (and a chunk) grow, in running order; stop before a
    # step short of blocks; with prefix caching, each block that fills is shared as its step ends
    crossing: dict[int, list] = {}  # step -> (position, request) of decodes needing a block
    filled: dict[int, list] = {}    # step -> (position, request) whose block fills
    k = len(end_l)
    caching = bm.caching
    for i, (r, c) in enumerate(zip(reqs, base)):  # (a step per request beyond the stretch is never pushed)
        step = len(r.block_table) * bs - c + 1
        if step <= k:
            crossing.setdefault(step, []).append((i, r))
        if caching and bm.notes_computed(r):  # (unchanged during a stretch: nothing registers or frees blocks)
            step = bs - c % bs
            if step <= k:
                filled.setdefault(step, []).append((i, r))
    used_l: list[int] = []
    cached_l: list[int] = []
    used = bm.num_used
    chunk_from = partial.num_computed if partial is not None else 0
    for step in range(1, k + 1):
        due = crossing.pop(step, None)
        if due or partial is not None:
            if due and len(due) > 1:
                due.sort(key=_first)
            grows = [(r, base[i] + step) for i, r in due] if due else []
            if partial is not None:  # the chunk's blocks after the decodes' (a policy that allocates per chunk)
                grows.append((partial, chunk_from + step * chunk))
            if not sched.stretch_grow(grows):
                k = step - 1
                break
            used = bm.num_used
            if due and step + bs <= k:
                crossing.setdefault(step + bs, []).extend(due)
        used_l.append(used)
        if caching:
            cached_l.append(bm.num_cached_free)
            done = filled.pop(step, None)
            if done:
                done.sort(key=_first)
                for i, r in done:
                    r.num_computed = base[i] + step
                    bm.on_computed(r)
                if step + bs <= k:
                    filled.setdefault(step + bs, []).extend(done)
    if not k:
        return None
    # 3. the records: a batches.csv row and a micro-batch row per step, every decode's token
    first = sched.take_batch_ids(k, cached_l if caching else None)
    index = replica.index
    times = end_l[:k] if k < len(end_l) else end_l
    replica.recorder.stage_rows.extend(chain.from_iterable(
        (index, 0, bid, start, end, chunk, n, size, prefills, used, price[1], price[2])
        for bid, start, end, used, price in zip(range(first, first + k), start_l, times, used_l, price_l)))
    replica.recorder.microbatch_rows.extend(chain.from_iterable(
        (index, bid, decided, host, end)
        for bid, decided, host, end in zip(range(first, first + k), decided_l, host_l, times)))
    for r, c in zip(reqs, base):
        r.num_computed = c + k
        r.num_generated += k
        r.token_times.extend(times)
    if partial is not None:
        partial.num_computed = chunk_from + k * chunk
    t = times[-1]
    replica.last_done = t
    return t, start_l[k - 1], hops(now, times, delay_l[:k])


def _prices(cost: Any, reqs: list, base: list[int], context: int, limit: int, partial: Any, chunk: int
            ) -> Iterator[tuple[float, tuple]]:
    """Each step's host time and (device time, FLOPs, bytes), lazily: the roofline prices decode-only steps a window
    at a time in one call (``RooflineCostModel.decode_run``, the same floats); other models and chunks per step."""
    n = len(reqs)
    light = Batch.__new__(Batch)  # one batch re-priced per step: only its aggregates (and the chunk's context) change
    light.entries, light._items, light.prefill_items = [(r, 1, c) for r, c in zip(reqs, base)], None, []
    light.num_prefill_tokens, light.num_decode_tokens, light.decode_context = 0, n, context
    if partial is not None:
        light.entries.append((partial, chunk, partial.num_computed))
        light.num_prefill_tokens = chunk
    elif type(cost) is RooflineCostModel:
        host = cost.host_time(light)
        done, window = 0, 16
        while done < limit:
            m = min(window, limit - done)
            yield from zip(repeat(host), cost.decode_run(n, context + n * (done + 1), m))
            done += m
            window *= 2
        return
    ctx, cached = context, partial.num_computed if partial is not None else 0
    for _ in range(limit):
        ctx += n
        light.decode_context = ctx
        if partial is not None:
            light.prefill_items = [BatchItem(partial, chunk, cached)]
            cached += chunk
        yield cost.host_time(light), cost.stage_cost(light, 0)


def _first(entry: tuple) -> int:
    return entry[0]
