"""A decode stretch's step times (``sim.serving.stretch``): each step priced and timed as the engine loop would.

A stretch's steps come in runs with the same requests (``pieces``: requests drop out as they finish); each run is
priced a window at a time (``decode_run`` of the roofline and kernels models) or per step, and its steps are timed
in the serial or the async loop's float expressions, up to the step that an arrival would change.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Generator, Iterator
from itertools import accumulate, repeat
from operator import le
from typing import Any

from sim.batch import Batch, BatchItem


def pieces(reqs: list, base: list[int], left: list[int], stops: list[int], seen: list[tuple]) -> Iterator[tuple]:
    """The stretch's runs of steps with the same requests, lazily (a stretch seldom reaches its last), each also
    appended to ``seen``: (the last step of each, its requests, their computed tokens before the stretch, the sum
    of those), each run's requests those with steps ``left`` past the one before."""
    alive, prev = range(len(reqs)), 0
    for stop in stops:
        if prev:
            alive = [i for i in alive if left[i] > prev]
            b = [base[i] for i in alive]
            piece = (stop, [reqs[i] for i in alive], b, sum(b))
        else:
            piece = (stop, reqs, base, sum(base))
        seen.append(piece)
        yield piece
        prev = stop


def step_times(cost: Any, pieces: Iterator[tuple], limit: int, partial: Any, chunk: int, now: float,
               decided_at: float | None, horizon: float, strict: bool, tail: int = 0,
               tail_horizon: float = math.inf) -> tuple[list, ...]:
    """Each step's (decided, start, end, delay, host time, (device time, FLOPs, bytes)) lists, in the engine loop's
    float expressions, up to the horizon: serial (``decided_at`` None), a step is decided as it starts and the
    stretch stops before one decided at or after ``horizon`` (``strict``: one ending at or after it); async, a step
    is decided as the previous one starts and overlaps its host time with it. ``pieces``: what ``pieces``
    yields, up to step ``limit``; ``tail``: the chunk of a chunk stretch's last step, if not ``chunk`` (that step
    is decided before ``tail_horizon`` or not run, nor priced)."""
    decided_l: list[float] = []
    start_l: list[float] = []
    end_l: list[float] = []
    delay_l: list[float] = []
    host_l: list[float] = []
    price_l: list[tuple] = []
    t = now
    if decided_at is None and partial is None and hasattr(cost, "decode_run"):  # a window at a time
        if horizon == math.inf:  # every step runs: every run priced in one call
            host_l, price_l = _every_step(cost, pieces)
            delay_l = [h + p[0] for h, p in zip(host_l, price_l)]
            ends = list(accumulate(delay_l, initial=t))
            return ends[:-1], [x + h for x, h in zip(ends, host_l)], ends[1:], delay_l, host_l, price_l
        done, window = 0, 2  # two steps, then about as many as their time says reach the horizon, then doubling
        for stop, alive, abase, total in pieces:
            n = len(alive)
            host = cost.host_time(light_batch(alive, abase, total + n * done))
            while done < stop:
                m = min(window, stop - done)
                prices = cost.decode_run(n, total + n * (done + 1), m)
                delays = [host + p[0] for p in prices]
                ends = list(accumulate(delays, initial=t))  # ends[j]: step j's decision (j < m), step j's end (j > 0)
                cut = bisect_left(ends, horizon, 1, m + 1) - 1 if strict else bisect_left(ends, horizon, 0, m)
                decided_l += ends[:cut]
                start_l += [x + host for x in ends[:cut]]
                end_l += ends[1:cut + 1]
                delay_l += delays[:cut]
                price_l += prices[:cut]
                host_l += [host] * cut
                if cut < m:
                    return decided_l, start_l, end_l, delay_l, host_l, price_l
                t = ends[m]
                done += m
                window = window * 2 if done > 2 else max(1, int((horizon - t) / delays[-1]) + 2)
        return decided_l, start_l, end_l, delay_l, host_l, price_l
    window = limit  # steps priced in one call (no horizon: every step runs)
    if horizon < math.inf:  # async: the step just done took about now - decided_at, so about this many fit
        window = 16 if decided_at is None or now <= decided_at else \
            max(1, min(limit, int((horizon - decided_at) / (now - decided_at)) + 2))
    out = decided_l, start_l, end_l, delay_l, host_l, price_l
    if decided_at is not None and partial is None and hasattr(cost, "decode_run"):  # async decodes: in blocks
        if horizon == math.inf:  # every step runs: priced at once
            hosts, prices_l = _every_step(cost, pieces)
            _async_steps(hosts, prices_l, t, decided_at, horizon, out)
            return out
        done = 0
        if decided_at >= horizon:
            return out
        for stop, alive, abase, total in pieces:  # the windows ``_prices`` prices, each once a step in it runs
            n = len(alive)
            host = cost.host_time(light_batch(alive, abase, total + n * done))
            while done < stop:
                m = min(window, stop - done)
                t, decided_at = _async_steps([host] * m, cost.decode_run(n, total + n * (done + 1), m), t, decided_at,
                                             horizon, out)
                if t is None or decided_at >= horizon:
                    return out
                done += m
                window *= 2
        return out
    prices = _prices(cost, pieces, partial, chunk, window, horizon == math.inf, tail)
    for j in range(limit):  # a step is priced only once it is decided before the horizon (as the loop prices it)
        if (t if decided_at is None else decided_at) >= (tail_horizon if tail and j == limit - 1 else horizon):
            break
        host, price = next(prices)
        if decided_at is None:  # serial: decided as it starts, the host time first, then the device's
            decided, start = t, t + host
            delay = host + price[0]
            end = t + delay
            if strict and end >= horizon:
                break
        else:  # async: decided as the previous step started; on the device after it and after its host work
            decided = decided_at
            start = max(t, decided + host)  # the async loop's own expression
            delay = (start - t) + price[0]
            end = t + delay
            decided_at = start
        decided_l.append(decided)
        start_l.append(start)
        end_l.append(end)
        delay_l.append(delay)
        host_l.append(host)
        price_l.append(price)
        t = end
    return decided_l, start_l, end_l, delay_l, host_l, price_l


def _async_steps(hosts: list[float], prices: list[tuple], t: float, decided: float, horizon: float,
                 out: tuple[list, ...]) -> tuple[float | None, float]:
    """The async loop's steps of one priced window (each step's host time and price) from ``t`` (the device free;
    ``decided``: when the first was decided), appended to ``out`` (``step_times``' lists) with the loop's float
    expressions; (the last one's end, its start), or (None, _) where a step decided at or after ``horizon`` ends
    them. A step whose host work ends by the time the device is free starts then (``start == t``, delay ``0.0 +``
    its device time); the steps after it do too while each host time is at most the device time before it, so such
    a block's ends are one running sum."""
    decided_l, start_l, end_l, delay_l, host_l, price_l = out
    dev = [p[0] for p in prices]
    bound = list(map(le, hosts[1:], dev))  # bound[i]: step i + 1 starts when step i ends, if step i started so
    m, j = len(dev), 0
    while j < m:
        if decided >= horizon:
            return None, decided
        start = max(t, decided + hosts[j])
        if start != t:  # its host work is exposed
            delay = (start - t) + dev[j]
            end = t + delay
            decided_l.append(decided)
            start_l.append(start)
            end_l.append(end)
            delay_l.append(delay)
            host_l.append(hosts[j])
            price_l.append(prices[j])
            decided, t = start, end
            j += 1
            continue
        try:
            e = bound.index(False, j) + 1
        except ValueError:
            e = m
        span = e - j
        ends = list(accumulate(dev[j:e], initial=t))  # ends[q]: step j + q's start (and step j + q - 1's end)
        count = bisect_left(ends, horizon, 0, span - 1) + 1  # step j + q is decided as step j + q - 1 starts
        decided_l.append(decided)
        decided_l += ends[:count - 1]
        start_l += ends[:count]
        end_l += ends[1:count + 1]
        delay_l += dev[j:j + count]  # (0.0 + the device time: itself)
        host_l += hosts[j:j + count]
        price_l += prices[j:j + count]
        if count < span:
            return None, decided
        decided, t = ends[span - 1], ends[span]
        j = e
    return t, decided


def light_batch(reqs: list, base: list[int], context: int) -> Batch:
    """A decode batch of ``reqs`` over ``base`` computed tokens, for pricing (only its aggregates are read)."""
    light = Batch.__new__(Batch)
    light.entries, light._items, light.prefill_items = list(zip(reqs, repeat(1), base)), None, []
    light.num_prefill_tokens, light.num_decode_tokens, light.decode_context = 0, len(reqs), context
    return light


def _every_step(cost: Any, pieces: Iterator[tuple]) -> tuple[list[float], list[tuple]]:
    """Every step's host time and (device time, FLOPs, bytes) of a decode-only stretch that runs them all: every
    run's steps priced in one call (``decode_runs`` where the model has it, else ``decode_run`` per run)."""
    hosts: list[float] = []
    runs: list[tuple[int, int, int]] = []
    done = 0
    for stop, alive, abase, total in pieces:
        n = len(alive)
        hosts += [cost.host_time(light_batch(alive, abase, total + n * done))] * (stop - done)
        runs.append((n, total + n * (done + 1), stop - done))
        done = stop
    many = getattr(cost, "decode_runs", None)
    return hosts, many(runs) if many is not None else [p for run in runs for p in cost.decode_run(*run)]


def _windows(host: float, price: Any, done: int, stop: int, window: int) -> Generator[tuple[float, tuple], None, int]:
    """(host, price) of steps ``done + 1`` to ``stop``, ``window`` steps a call and doubling (``price(d, m)``: the
    ``m`` steps after step ``d``); returns the next window."""
    while done < stop:
        m = min(window, stop - done)
        yield from zip(repeat(host), price(done, m))
        done += m
        window *= 2
    return window


def _prices(cost: Any, pieces: Iterator[tuple], partial: Any, chunk: int, window: int = 16, every: bool = False,
            tail: int = 0) -> Iterator[tuple[float, tuple]]:
    """Each step's host time and (device time, FLOPs, bytes), lazily: decode-only steps a window at a time in one
    call (``decode_run`` of the roofline and kernels models, the same floats as ``stage_cost`` per step; windows of
    ``window`` steps, doubling; ``every``: all steps run, every run priced at once, ``_every_step``); chunk steps
    so too where the model prices them in one call (``chunk_run``: the roofline's; the kernels model's, lazily),
    else per step; the last one with ``tail`` tokens where given (the prompt's last chunk). ``pieces``: ``pieces``
    (a chunk stretch has one)."""
    if every and partial is None and hasattr(cost, "decode_run"):
        yield from zip(*_every_step(cost, pieces))
        return
    done = 0
    for stop, alive, abase, total in pieces:
        n = len(alive)
        light = light_batch(alive, abase, total + n * done)  # re-priced per step: only its aggregates change
        if partial is not None:
            light.entries.append((partial, chunk, partial.num_computed))
            light.num_prefill_tokens = chunk
            if hasattr(cost, "chunk_run"):  # a window at a time too (the host time reads the batch's size)
                light.prefill_items = [BatchItem(partial, chunk, partial.num_computed)]
                host = cost.host_time(light)
                last = stop - (tail > 0)
                window = yield from _windows(host, lambda d, m: cost.chunk_run(
                    n, total + n * (d + 1), chunk, partial.num_computed + d * chunk, m), done, last, window)
                done = last
                if tail:
                    yield host, next(iter(cost.chunk_run(n, total + n * stop, tail,
                                                         partial.num_computed + done * chunk, 1)))
                continue
        elif hasattr(cost, "decode_run"):
            host = cost.host_time(light)
            window = yield from _windows(host, lambda d, m: cost.decode_run(n, total + n * (d + 1), m), done, stop,
                                         window)
            done = stop
            continue
        ctx, cached = total + n * done, partial.num_computed if partial is not None else 0
        for step in range(done + 1, stop + 1):
            ctx += n
            light.decode_context = ctx
            if partial is not None:
                if tail and step == stop:  # the prompt's last chunk
                    light.entries[-1] = (partial, tail, cached)
                    light.num_prefill_tokens = tail
                light.prefill_items = [BatchItem(partial, light.num_prefill_tokens, cached)]
                cached += chunk
            yield cost.host_time(light), cost.stage_cost(light, 0)
        done = stop
