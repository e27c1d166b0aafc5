"""A request's life inside a replica: token counters, KV blocks and timestamps.

The counters follow vLLM's convention so that chunked prefill, decode and
recompute preemption are one rule: a request knows ``prompt_tokens +
num_generated`` tokens, ``num_computed`` of them have KV entries, and whenever a
batch item brings ``num_computed`` up to the known count the model samples the
next output token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from sim.kv.prefix_keys import prefix_spec


class Status(str, Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True)
class TraceRequest:
    """One line of a trace: what arrives, not what happens to it."""

    request_id: str
    arrival_time: float
    prompt_tokens: int
    output_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)
    line: int | None = None  # 1-based line in the source file, for messages


@dataclass(eq=False, slots=True)
class Request:
    """Mutable serving state of one request (shared by simulator and engine)."""

    request_id: str
    arrival_time: float
    prompt_tokens: int
    output_tokens: int
    index: int = 0  # position in the trace; stable id for outputs
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose KV entries are in the cache
    num_generated: int = 0  # output tokens sampled so far
    block_table: Sequence[int] = field(default_factory=list)  # a list; with prefix caching, a numpy view
    num_preemptions: int = 0
    replica: int = -1
    first_scheduled_time: float | None = None
    token_times: list[float] | None = field(default_factory=list)  # None once folded (Scheduler.keep_token_times)
    completion_time: float | None = None
    first_token_time: float | None = None
    tbt_max: float | None = None  # largest gap between its output tokens (set when it finishes)
    prefix: tuple | None = None   # the reuse its trace line declares (sim.kv.prefix_keys.prefix_spec)
    prefix_keys: Any = None       # its shareable blocks' keys (sim.kv.key_index.KeyRuns), while a cache needs them
    prefix_lookup: tuple | None = None  # (manager, its eviction count, hit blocks): the last lookup, reused until stale
    num_hashed_blocks: int = 0    # leading blocks already registered in the prefix cache
    block_ids: Any = None         # its block table as a numpy buffer (a caching cache's copy: no list conversions)
    cached_tokens: int = 0        # prompt tokens its first admission found in the prefix cache
    last_blocks: list[int] | None = None  # its block table when last preempted (its own cached blocks are there)
    num_shared_blocks: int = 0    # leading blocks whose keys other requests can share (the rest are its own)
    num_key_blocks: int = 0       # its full blocks at its longest (all have keys: prefix_keys', then its own)

    @classmethod
    def from_trace(cls, tr: TraceRequest, index: int) -> "Request":
        return cls(tr.request_id, tr.arrival_time, tr.prompt_tokens, tr.output_tokens, index=index,
                   prefix=prefix_spec(tr.extra) if tr.extra else None)

    @property
    def num_known(self) -> int:
        """Tokens the model has seen or produced: prompt plus generated output."""
        return self.prompt_tokens + self.num_generated

    @property
    def num_pending(self) -> int:
        """Tokens still to be processed before the next output token is sampled."""
        return self.prompt_tokens + self.num_generated - self.num_computed

    @property
    def is_decoding(self) -> bool:
        """True when exactly one token (the last sampled one) is pending."""
        return self.num_generated > 0 and self.num_computed == self.prompt_tokens + self.num_generated - 1

    @property
    def max_tokens(self) -> int:
        """Longest sequence this request can reach (prompt plus all outputs but the last)."""
        return self.prompt_tokens + self.output_tokens

    @property
    def is_finished(self) -> bool:
        return self.num_generated >= self.output_tokens

    def reset_for_recompute(self) -> None:
        """Preemption by recompute: drop the KV state; prompt and generated tokens are re-prefilled."""
        self.num_computed = 0
        self.num_preemptions += 1
        self.status = Status.WAITING
