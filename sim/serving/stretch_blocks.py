"""A stretch's KV blocks (``sim.serving.stretch``): which steps grow which decodes' tables (and a chunk's), taken as
the policy would take them one step at a time, and the requests that finish on the way.
"""

from __future__ import annotations

from typing import Any

from sim.request import Request
from sim.schedulers import Scheduler


def blocks(sched: Scheduler, reqs: list, base: list[int], k: int, partial: Any, chunk: int, last_token: int,
            events: tuple | None = None, finish_at: dict[int, list[int]] | None = None, left: list[int] | None = None,
            ends: list[float] | None = None, finished: list[Request] | None = None, fills: bool = True
            ) -> tuple[int, list[int], list[int] | None]:
    """Grow blocks for up to ``k`` steps as the policy would (decodes crossing a block boundary in running order,
    then a chunk's); (steps that got their blocks, blocks in use after each one's growth, with prefix caching each
    one's cached free blocks, else None; blocks that fill at step ``last_token`` are left to ``stretch_finish``).
    ``finish_at``: step -> positions of the decodes whose last token it makes (``left``: each one's steps to it),
    finished (onto ``finished``, their blocks freed) as it ends at ``ends[step - 1]``, in batch order, before the
    next step's blocks.
    Only the steps where something changes are visited (``events``: ``block_events`` over k steps or more, if found;
    ``fills``: whether any of ``reqs`` may have blocks noted for the prefix cache)."""
    bm = sched.bm
    caching = bm.caching
    finish_at = finish_at or {}
    grows_at, fills_at, chunk_at = events or block_events(bm, reqs, base, k, partial, chunk, caching and fills, left)
    notes_partial = partial is not None and caching and bm.notes_computed(partial)
    if notes_partial:  # its chunk's blocks are noted as each step ends (``on_computed``)
        steps = range(1, k + 1)
    else:  # (``events`` may run past k)
        steps = sorted(s for s in grows_at.keys() | fills_at.keys() | chunk_at.keys() | finish_at.keys() if s <= k)
    chunk_from = partial.num_computed if partial is not None else 0
    used_l: list[int] = []
    cached_l: list[int] | None = [] if caching else None
    used = bm.num_used
    cached = bm.num_cached_free if caching else 0
    # decodes only, every table a list: the blocks up to the next finish are taken at once (``take_blocks``, in the
    # order the steps would take them) and handed out step by step
    bulk = not (notes_partial or chunk_at or fills_at) and bm.appends_blocks(reqs)
    if bulk:
        grow_steps = sorted(s for s in grows_at if s <= k)
        fins = sorted(s for s in finish_at if s <= k)
    taken: list[int] = []
    at = fresh = gi = seg_cached = 0
    short = k + 1  # the first step short of blocks
    prev = 0
    for step in steps:
        if step > prev + 1:  # nothing changed in between
            used_l += [used] * (step - prev - 1)
            if caching:
                cached_l += [cached] * (step - prev - 1)
        due = grows_at.get(step)
        tokens = chunk_at.get(step)
        if bulk and due:
            if at == len(taken) and step < short:  # a new run of steps, up to the next finish
                seg_cached = cached
                taken, fresh, short, gi = _take_run(bm, grows_at, grow_steps, gi, fins, k)
                at = 0
            if step == short:
                return step - 1, used_l, cached_l
            for i in due:
                reqs[i].block_table.append(taken[at])
                at += 1
            used += len(due)
            if caching and at > fresh:  # (the blocks that were cached come after the others)
                cached = seg_cached - (at - fresh)
        elif due or tokens:
            if not sched.stretch_grow([reqs[i] for i in due] if due else [], (partial, tokens) if tokens else None):
                return step - 1, used_l, cached_l
            used = bm.num_used
        used_l.append(used)
        if caching:
            cached_l.append(cached if bulk else bm.num_cached_free)
            if step != last_token:  # (at a last token they are noted with the finishing, ``stretch_finish``)
                for i in fills_at.get(step, ()):
                    r = reqs[i]
                    r.num_computed = base[i] + step
                    bm.on_computed(r)
                if notes_partial:  # last in the batch: after the decodes
                    partial.num_computed = chunk_from + step * chunk
                    bm.on_computed(partial)
        done = finish_at.get(step)
        if done:
            known = ends[:step]
            for i in done:
                r = reqs[i]
                r.num_computed = base[i] + step
                r.num_generated += step
                r.token_times.extend(known)
            sched.stretch_finish_each([reqs[i] for i in done], ends[step - 1], finished)
            used = bm.num_used
        if caching and (done or not bulk):
            cached = bm.num_cached_free
        prev = step
    if k > prev:
        used_l += [used] * (k - prev)
        if caching:
            cached_l += [cached] * (k - prev)
    return k, used_l, cached_l


def _take_run(bm: Any, grows_at: dict[int, list[int]], grow_steps: list[int], gi: int, fins: list[int], k: int
              ) -> tuple[list[int], int, int, int]:
    """The blocks of the decodes' growth from step ``grow_steps[gi]`` to the next finish (``fins``) or step k, taken
    at once (nothing is freed before that finish): (the blocks in order, how many of them were never cached, the
    first step short of blocks or k + 1, the index in ``grow_steps`` past the run)."""
    first = grow_steps[gi]
    end = next((f for f in fins if f >= first), k)
    free, need, short, hi = bm.num_free, 0, k + 1, gi
    for hi in range(gi, len(grow_steps)):
        step = grow_steps[hi]
        if step > end:
            break
        n = len(grows_at[step])
        if need + n > free:
            short = step
            break
        need += n
    else:
        hi = len(grow_steps)
    taken, fresh = bm.take_blocks(need)
    return taken, fresh, short, hi


def block_events(bm: Any, reqs: list, base: list[int], k: int, partial: Any, chunk: int, fills: bool,
            left: list[int] | None = None) -> tuple[dict[int, list[int]], dict[int, list[int]], dict[int, int]]:
    """Over steps 1..k: (step -> positions of decodes needing a block then, in running order; step -> positions
    whose block fills then, with ``fills`` (prefix caching shares it); step -> the chunked prompt's tokens then,
    where it needs more blocks). ``left``: each decode's steps to its last token (none after it)."""
    bs = bm.block_size
    grows_at: dict[int, list[int]] = {}
    fills_at: dict[int, list[int]] = {}
    firsts = [len(r.block_table) * bs - c + 1 for r, c in zip(reqs, base)]  # each one's first step needing a block
    for i in [i for i, first in enumerate(firsts) if first <= k]:
        for step in range(firsts[i], (min(k, left[i]) if left else k) + 1, bs):
            grows_at.setdefault(step, []).append(i)
    if fills:
        notes = bm.notes_computed
        for i, (r, c) in enumerate(zip(reqs, base)):
            if notes(r):  # (unchanged during a stretch: nothing registers or frees blocks)
                for step in range(bs - c % bs, k + 1, bs):
                    fills_at.setdefault(step, []).append(i)
    chunk_at: dict[int, int] = {}
    if partial is not None:
        held = len(partial.block_table) * bs
        for step in range(1, k + 1):
            tokens = min(partial.num_computed + step * chunk, partial.num_known)  # (the last chunk: the rest)
            if tokens > held:
                chunk_at[step] = tokens
                held = -(-tokens // bs) * bs
    return grows_at, fills_at, chunk_at


def steps_with_blocks(bm: Any, k: int, partial: Any, events: tuple) -> int:
    """How many of the next k steps ``blocks`` will find blocks for (``stretch_grow``'s test; each step's
    allocation takes exactly what it needs from ``num_free``, and nothing frees blocks during a stretch), given
    ``events`` over them: a chunk stretch is priced only that far, since the kernels model counts each chunk's
    price as it first prices it."""
    grows_at, _, chunk_at = events
    free, bs, held = bm.num_free, bm.block_size, len(partial.block_table)
    for step in sorted(grows_at.keys() | chunk_at.keys()):
        need = len(grows_at.get(step, ()))
        tokens = chunk_at.get(step)
        if tokens:
            need += -(-tokens // bs) - held
            held = -(-tokens // bs)
        if need > free:
            return step - 1
        free -= need
    return k
