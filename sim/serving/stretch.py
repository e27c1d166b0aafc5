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
from itertools import repeat
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
    context = sum(base)  # the keys the last batch's decodes read (as its ``decode_context``): each one's computed
    crossing: dict[int, list] = {}  # step -> (position, request, tokens to hold) of decodes needing a block
    filled: dict[int, list] = {}    # step -> (position, request) whose block fills (prefix caching shares it)
    for i, (r, c) in enumerate(zip(reqs, base)):  # (a step per request beyond the limit is never pushed)
        step = len(r.block_table) * bs - c + 1
        if step <= limit:
            crossing.setdefault(step, []).append((i, r))
        if caching and bm.notes_computed(r):  # (unchanged during a stretch: nothing registers or frees blocks)
            step = bs - c % bs
            if step <= limit:
                filled.setdefault(step, []).append((i, r))
    cost, rows, micro, index = replica.cost, replica.recorder.stage_rows, replica.recorder.microbatch_rows, replica.index
    n = len(reqs)
    light = Batch.__new__(Batch)  # one batch re-priced per step: only its aggregates (and the chunk's context) change
    light.entries, light._items, light.prefill_items = [(r, 1, c) for r, c in zip(reqs, base)], None, []
    light.num_prefill_tokens, light.num_decode_tokens, light.decode_context = 0, n, context
    size, prefills, chunked = n, 0, 0
    if partial is not None:
        size, prefills, chunked, done_before = n + 1, 1, partial.num_computed, partial.num_computed
        light.entries.append((partial, chunk, chunked))
        light.num_prefill_tokens = chunk
        prices = _priced_per_step(cost, light, context, n, limit, partial, chunk)
    else:
        prices = _prices(cost, light, context, n, limit)
    times: list[float] = []
    delays: list[float] = []
    t = now
    host_done = now
    for step, (host, (ctime, flops, nbytes)) in enumerate(prices, 1):
        if serial:  # serial: decided as it starts, the host time first, then the device's
            if t >= horizon:
                break
            decided, start = t, t + host
            delay = host + ctime
            end = t + delay
            if strict and end >= horizon:
                break
        else:  # async: decided as the previous step started; on the device after it and after its host work
            decided = decided_at
            if decided >= horizon:
                break
            start = max(t, decided + host)  # the async loop's own expression
            delay = (start - t) + ctime
            end = t + delay
        due = crossing.pop(step, None)
        grows = [(r, base[i] + step) for i, r in sorted(due, key=_first)] if due else []
        if partial is not None:  # the chunk's blocks after the decodes' (a policy that allocates per chunk)
            grows.append((partial, done_before + step * chunk))
        ids = sched.decode_step(grows)
        if ids is None:
            break
        if due:
            nxt = step + bs
            if nxt <= limit:
                crossing.setdefault(nxt, []).extend(due)
        batch_id, used = ids
        host_done = decided_at = start
        rows.extend((index, 0, batch_id, start, end, chunk, n, size, prefills, used, flops, nbytes))
        micro.extend((index, batch_id, decided, host, end))
        times.append(end)
        delays.append(delay)
        if caching:
            done = filled.pop(step, None)
            if done:
                done.sort(key=_first)
                for i, r in done:
                    r.num_computed = base[i] + step
                    bm.on_computed(r)
                nxt = step + bs
                if nxt <= limit:
                    filled.setdefault(nxt, []).extend(done)
        t = end
    k = len(times)
    if not k:
        return None
    for r, c in zip(reqs, base):
        r.num_computed = c + k
        r.num_generated += k
        r.token_times.extend(times)
    if partial is not None:
        partial.num_computed = done_before + k * chunk
    replica.last_done = t
    return t, host_done, hops(now, times, delays)


def _prices(cost: Any, light: Batch, context: int, n: int, limit: int) -> Iterator[tuple[float, tuple]]:
    """Each step's host time and (device time, FLOPs, bytes): the roofline prices the whole stretch in one call
    (``RooflineCostModel.decode_run``, the same floats); other models per step, lazily, as the loop needs them."""
    if type(cost) is RooflineCostModel:
        return zip(repeat(cost.host_time(light)), cost.decode_run(n, context + n, limit))
    return _priced_per_step(cost, light, context, n, limit)


def _priced_per_step(cost: Any, light: Batch, ctx: int, n: int, limit: int, partial: Any = None, chunk: int = 0
                     ) -> Iterator[tuple[float, tuple]]:
    """Per step, lazily: each step's decodes read n more keys; a chunk (``partial``) starts ``chunk`` tokens further."""
    item = None
    for step in range(limit):
        ctx += n
        light.decode_context = ctx
        if partial is not None:
            item = BatchItem(partial, chunk, partial.num_computed + step * chunk)
            light.prefill_items = [item]
        host = cost.host_time(light)
        yield host, cost.stage_cost(light, 0)


def _first(entry: tuple) -> int:
    return entry[0]
