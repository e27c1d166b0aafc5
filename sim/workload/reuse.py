"""Synthetic workloads with prompt reuse: multi-turn conversations, a shared system prompt.

Both write the reuse as ``prefix_group`` / ``prefix_len`` fields (``sim.kv.prefix_keys``), so the
prefix cache can replay it:

- ``make_sessions``: consecutive requests become the turns of conversations; each turn resends
  the previous turns (their prompts and outputs) before its own new message, and arrives a think
  time (exponential, mean ``think_time_s``) after the previous turn arrived;
- ``add_system_prompt``: a fraction of the conversations (or of the requests, without sessions)
  start with the same ``length``-token system prompt, prepended to every one of their prompts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sim.kv.prefix_keys import GROUP, GROUP_LEN, HASH_BLOCK_SIZE, HASH_IDS, MOONCAKE_BLOCK_SIZE
from sim.request import TraceRequest

SYSTEM_GROUP = "system"
SESSION = "session"  # extra field: the conversation a request belongs to


def fit_reuse(extra: dict[str, Any], tokens: int) -> dict[str, Any]:
    """``extra`` with its reuse fields cut to a request now ``tokens`` long (prompt and output), as a trace reader
    requires: prefix_len ends past it lowered to it, hash_ids past its last block dropped. The cache's keys, which
    stop before the last token, are unchanged; ``extra`` itself is returned when nothing is cut."""
    out = extra
    ends = extra.get(GROUP_LEN)
    if isinstance(ends, list) and any(isinstance(e, int) and e > tokens for e in ends):
        out = {**out, GROUP_LEN: [min(e, tokens) if isinstance(e, int) else e for e in ends]}
    elif isinstance(ends, int) and not isinstance(ends, bool) and ends > tokens:
        out = {**out, GROUP_LEN: tokens}
    ids, size = extra.get(HASH_IDS), extra.get(HASH_BLOCK_SIZE, MOONCAKE_BLOCK_SIZE)
    if isinstance(ids, list) and isinstance(size, int) and size >= 1 and len(ids) > -(-tokens // size):
        out = {**out, HASH_IDS: ids[:-(-tokens // size)]}
    return out


def _with(tr: TraceRequest, **changes) -> TraceRequest:
    fields = {"request_id": tr.request_id, "arrival_time": tr.arrival_time, "prompt_tokens": tr.prompt_tokens,
              "output_tokens": tr.output_tokens, "extra": dict(tr.extra), "line": tr.line, **changes}
    return TraceRequest(**fields)


def make_sessions(trace: list[TraceRequest], turns: int, think_time_s: float,
                  rng: np.random.Generator) -> list[TraceRequest]:
    """Turn consecutive runs of ``turns`` requests into conversations; each turn's prompt resends the context.

    A turn keeps its own new-message length (its prompt in ``trace``) and output length; its prompt
    becomes the previous turn's prompt and output plus that message. The first turn of a session
    arrives when its request did; each next one ``think_time_s`` (exponential mean) after the previous.
    """
    if turns < 1 or think_time_s < 0:
        raise ValueError(f"sessions: expected turns >= 1 and a think time >= 0, got {turns}, {think_time_s}")
    out: list[TraceRequest] = []
    for first in range(0, len(trace), turns):
        sid = first // turns
        context, t = 0, trace[first].arrival_time
        for j, tr in enumerate(trace[first:first + turns]):
            if j and think_time_s:
                t += float(rng.exponential(think_time_s))
            through = context + tr.prompt_tokens + tr.output_tokens
            # every token this turn holds (earlier turns, its message, its answer) is the conversation's, which
            # every later turn resends: one prefix group up to the end of its answer
            extra = {**tr.extra, SESSION: sid, GROUP: [f"session-{sid}"], GROUP_LEN: [through]}
            out.append(_with(tr, arrival_time=round(t, 6), prompt_tokens=context + tr.prompt_tokens, extra=extra))
            context = through
    out.sort(key=lambda r: r.arrival_time)
    return out


def add_system_prompt(trace: list[TraceRequest], length: int, fraction: float,
                      rng: np.random.Generator) -> list[TraceRequest]:
    """A ``fraction`` of the conversations (each request without sessions) get a ``length``-token system prompt.

    It is prepended to every prompt of a chosen conversation and becomes the leading prefix group.
    """
    if length < 1 or not 0 < fraction <= 1:
        raise ValueError(f"system prompt: expected a length >= 1 and a fraction in (0, 1], got {length}, {fraction}")
    owners = sorted({tr.extra.get(SESSION, ("request", i)) for i, tr in enumerate(trace)}, key=str)
    chosen = {o for o, c in zip(owners, (rng.random(len(owners)) < fraction).tolist()) if c}
    out = []
    for i, tr in enumerate(trace):
        if tr.extra.get(SESSION, ("request", i)) not in chosen:
            out.append(tr)
            continue
        groups, ends = tr.extra.get(GROUP, []), tr.extra.get(GROUP_LEN, [])
        extra = {**tr.extra, GROUP: [SYSTEM_GROUP, *groups], GROUP_LEN: [length, *(e + length for e in ends)]}
        out.append(_with(tr, prompt_tokens=tr.prompt_tokens + length, extra=extra))
    return out
