"""Turn trace lines into simulatable requests, skipping (or refusing) those that can never be served."""

from __future__ import annotations

from dataclasses import dataclass

from sim.catalog.models import ModelSpec
from sim.kv.block_manager import BlockManager
from sim.request import Request, TraceRequest


class WorkloadError(ValueError):
    """A request that cannot be served, raised instead of skipping it under ``strict``."""


@dataclass(frozen=True)
class SkippedRequest:
    request_id: str
    line: int | None
    field: str
    code: str  # short category: prompt_exceeds_context, total_exceeds_context, kv_capacity, token_budget
    reason: str

    def where(self, source: str) -> str:
        loc = f"{source}:{self.line}" if self.line is not None else source
        rid = repr(self.request_id)  # bounded (a trace's id may be megabytes), generously: a SHA-512 id stays whole
        rid = rid if len(rid) <= 200 else rid[:197] + "..."
        return f"{loc}: request {rid}: field '{self.field}': {self.reason}"


def _why_unservable(tr: TraceRequest, model: ModelSpec, bm: BlockManager,
                    token_budget: int | None, chunks_prefills: bool) -> tuple[str, str, str] | None:
    """(field, code, reason) when ``tr`` can never complete in this deployment, else None."""
    total = tr.prompt_tokens + tr.output_tokens
    if tr.prompt_tokens > model.max_context:
        return "prompt_tokens", "prompt_exceeds_context", f"prompt of {tr.prompt_tokens} tokens exceeds {model.name}'s maximum context of {model.max_context}"
    if total > model.max_context:
        return "output_tokens", "total_exceeds_context", (f"prompt + output = {total} tokens exceeds {model.name}'s maximum context of "
                                 f"{model.max_context}")
    if not bm.fits_ever(total):
        usable = bm.num_blocks - bm.watermark_blocks
        return "prompt_tokens", "kv_capacity", (f"needs {bm.blocks_for(total)} KV blocks of {bm.block_size} tokens, but the cache "
                                 f"can ever give one request only {usable} (capacity {bm.num_blocks} minus watermark)")
    if not chunks_prefills and token_budget is not None and total - 1 > token_budget:
        return "prompt_tokens", "token_budget", (f"a whole (re-)prefill of up to {total - 1} tokens exceeds the per-iteration token "
                                 f"budget of {token_budget} of a scheduler that does not chunk prompts")
    return None


def prepare_requests(trace: list[TraceRequest], *, model: ModelSpec, block_manager: BlockManager,
                     token_budget: int | None, chunks_prefills: bool, strict: bool = False,
                     source: str = "<trace>") -> tuple[list[Request], list[SkippedRequest]]:
    """Requests in arrival order plus those skipped with the reason; ``strict`` raises on the first instead."""
    accepted: list[Request] = []
    skipped: list[SkippedRequest] = []
    for i, tr in enumerate(trace):
        why = _why_unservable(tr, model, block_manager, token_budget, chunks_prefills)
        if why is None:
            accepted.append(Request.from_trace(tr, i))
            continue
        s = SkippedRequest(tr.request_id, tr.line, *why)
        if strict:
            raise WorkloadError(s.where(source) + " (run without --strict to skip such requests)")
        skipped.append(s)
    return accepted, skipped


#: a first arrival later than this (about 11.6 days) is an absolute clock (epoch seconds), not a trace offset
ABSOLUTE_CLOCK_S = 1e6


def rebase_arrivals(requests: list[Request]) -> float:
    """Shift arrivals (sorted) to start at 0 when they are an absolute clock; returns the origin subtracted (else 0).

    At epoch magnitudes (1.7e9 s, or 1.7e15 in microsecond-based importers' raw units) a float64 keeps
    microseconds or worse, so latencies computed on it would round to zero; the origin goes into summary.json.
    """
    if not requests or requests[0].arrival_time <= ABSOLUTE_CLOCK_S:
        return 0.0
    origin = requests[0].arrival_time
    for r in requests:
        r.arrival_time -= origin
    return origin
