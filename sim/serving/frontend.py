"""The serving frontend between a client and the engine: what an API server adds to the latency a client measures.

A request costs ``request_s`` on arrival (HTTP handling, validation, building the engine request and handing it to
the engine core) plus ``per_prompt_token_s`` per prompt token (tokenization) before the engine sees it; each
output token reaches the client ``per_output_token_s`` after the engine produced it (the hop back, detokenization,
one streamed chunk); the last adds ``completion_s`` (the final chunk, usage, closing the stream). Token gaps are
unchanged: every token of a request is shifted alike. Not modelled: the API server as a queue (its per-token work
serialised over a step's batch, which saturates one process near B x 10 us per step) and tokenizer variants.

The ``vllm`` defaults (vLLM's OpenAI API server, V1, one API-server process, streaming one token per chunk) come
from public measurements; each is uncertain within about 2x (none separates vLLM's terms directly):
- request_s 1.6 ms: about 1.2 ms of request handling outside tokenization in vLLM's offline path (vLLM PR #51349:
  render 0.31 ms, process_for_engine 0.54 ms, add_request 0.36 ms) plus the HTTP layer, fitted with the next term
  to 7 ms to response headers for a ~2.4k-token chat prompt at concurrency 1 (vLLM 0.19.0, 2x MI300X; the
  'CPU-GPU co-design for agentic inference' measurements, andyluo7.github.io, 2026-05-14), and 50 us for the
  ZMQ hop to the engine core (SGLang's equivalent hop measured 0.1-0.2 ms round trip, uw-syfi/vibesys PR #421);
- per_prompt_token_s 1.5 us: Hugging Face fast tokenizers, 1.1-2.2 us per token on one server core (the same
  measurements: 679 tokens 1.18 ms, 10.8k 20.5 ms; a 131k-token prompt's Python-frontend overhead over a Rust one,
  vllm-project/router PR #283, about 1.5 us per token);
- per_output_token_s 60 us: 50 us for the hop back from the engine core plus 10 us of API-server work per streamed
  token (vLLM PR #43469: a Python frontend over a mock engine streamed about 103k tokens/s per API-server process);
- completion_s 0.2 ms: the final chunk and usage JSON (no measurement: about one chunk and a serialisation).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from sim.table import Table, column


@dataclass(frozen=True)
class Frontend:
    """Per-request costs of the serving frontend, in seconds."""

    name: str = "none"
    request_s: float = 0.0
    per_prompt_token_s: float = 0.0
    per_output_token_s: float = 0.0
    completion_s: float = 0.0

    def __post_init__(self) -> None:
        for key in ("request_s", "per_prompt_token_s", "per_output_token_s", "completion_s"):
            value = getattr(self, key)
            if not (math.isfinite(value) and 0 <= value <= 60):
                raise ValueError(f"frontend {key} must be a number of seconds from 0 to 60, got {value!r}")

    @property
    def active(self) -> bool:
        return any((self.request_s, self.per_prompt_token_s, self.per_output_token_s, self.completion_s))

    def inbound(self, prompt_tokens: np.ndarray) -> np.ndarray:
        """Seconds from a request's arrival at the frontend to its arrival at the engine."""
        return self.request_s + self.per_prompt_token_s * prompt_tokens

    def describe(self) -> dict[str, Any]:
        return asdict(self)


PRESETS = {
    "none": Frontend(),
    "vllm": Frontend("vllm", request_s=1.6e-3, per_prompt_token_s=1.5e-6, per_output_token_s=60e-6, completion_s=2e-4),
}


def parse_frontend(spec: str) -> Frontend:
    """``vllm``, ``none``, or ``custom:REQUEST_MS:PROMPT_TOKEN_US:OUTPUT_TOKEN_US:COMPLETION_MS``."""
    if spec in PRESETS:
        return PRESETS[spec]
    parts = spec.split(":")
    if parts[0] != "custom" or len(parts) != 5:
        raise ValueError(f"frontend {spec[:60]!r}: expected vllm, none or "
                         "custom:REQUEST_MS:PROMPT_TOKEN_US:OUTPUT_TOKEN_US:COMPLETION_MS")
    try:
        req_ms, prompt_us, out_us, done_ms = (float(p) for p in parts[1:])
    except ValueError:
        raise ValueError(f"frontend {spec[:60]!r}: the four costs must be numbers") from None
    return Frontend("custom", req_ms * 1e-3, prompt_us * 1e-6, out_us * 1e-6, done_ms * 1e-3)


def client_view(frame: Table, frontend: Frontend, inbound: np.ndarray) -> Table:
    """requests.csv as the client sees it (arrival at the frontend; tokens after the way back), the engine's own
    times kept as ``engine_*`` columns. ``frame``'s times are the engine's; ``inbound`` per row, in its order."""
    engine_arrival = column(frame, "arrival_time")
    back = frontend.per_output_token_s
    arrival = engine_arrival - inbound
    first = column(frame, "first_token_time") + back
    done = column(frame, "completion_time") + back + frontend.completion_s
    ttft, e2e = first - arrival, done - arrival
    n = column(frame, "generated_tokens")
    with np.errstate(divide="ignore", invalid="ignore"):
        tpot = np.where(n > 1, (e2e - ttft) / (n - 1), np.nan)
    out = frame.insert_after("arrival_time", "engine_arrival_time", engine_arrival)
    return out.assign(  # (columns already there keep their place; the engine's own go at the end, in this order)
        arrival_time=arrival, first_token_time=first, completion_time=done,
        **{f"engine_{col}": column(frame, col) for col in ("ttft", "e2e", "tpot", "scheduling_delay")},
        scheduling_delay=column(frame, "scheduling_delay") + inbound, ttft=ttft, e2e=e2e, tpot=tpot)


def to_engine(requests: list, frontend: Frontend) -> None:
    """Move each request's arrival to when it reaches the engine, and keep the list in (engine) arrival order."""
    if not frontend.active:
        return
    for r in requests:
        r.arrival_time += frontend.request_s + frontend.per_prompt_token_s * r.prompt_tokens
    requests.sort(key=lambda r: r.arrival_time)  # stable: a shorter prompt tokenized sooner may overtake


def client_latency(summary: dict[str, Any], client: Any, frontend: Frontend) -> None:
    """``latency_s`` as the client sees it (from ``client``, requests.csv's client view); the engine's own figures
    move to ``latency_engine_s``; ``frontend`` records what priced the difference."""
    from sim.metrics import describe

    summary["frontend"] = frontend.describe()
    if not frontend.active:
        return
    engine = summary["latency_s"]
    summary["latency_engine_s"] = {k: engine[k] for k in ("ttft", "tpot", "e2e", "scheduling_delay")}
    done = client[~np.isnan(column(client, "completion_time", float))]
    summary["latency_s"] = {**engine, **{k: describe(column(done, k)) for k in ("ttft", "e2e", "tpot",
                                                                               "scheduling_delay")}}
