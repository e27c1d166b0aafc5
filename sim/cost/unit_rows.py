"""Whole-unit rows of a profile (``layer_forward``, ``forward``): which batch each row describes.

Row shape convention (``measurements.csv``; op ``layer_forward`` or ``forward``, tp 0):
variant ``prefill``: ``seqs`` chunks of ``tokens / seqs`` new tokens over ``context`` cached ones;
``decode``: ``seqs`` decodes with ``context`` keys each (their new one included);
``mixed``: ``seqs - 1`` decodes with ``context`` keys each plus one chunk of the remaining tokens
over no cached context. Calibration times these batches on the engine; the profiled cost model
rebuilds them to fit its overhead terms.
"""

from __future__ import annotations

from sim.batch import Batch, synthetic_batch

ITERATION_VARIANTS: tuple[str, ...] = ("prefill", "decode", "mixed")


def unit_items(tokens: int, seqs: int, context: int, variant: str) -> list[tuple[int, int, bool]]:
    """(new tokens, cached tokens, is decode) per item of a unit-timing row (see the module docstring)."""
    if variant == "prefill":
        if seqs < 1 or tokens % seqs:
            raise ValueError(f"prefill unit row: {tokens} tokens do not split into {seqs} equal chunks")
        return [(tokens // seqs, context, False)] * seqs
    if variant == "decode":
        if tokens != seqs or context < 1:
            raise ValueError(f"decode unit row: tokens ({tokens}) must equal seqs ({seqs}) and context be >= 1")
        return [(1, context - 1, True)] * seqs
    if variant == "mixed":
        nd = seqs - 1
        if nd < 1 or tokens - nd < 1 or context < 1:
            raise ValueError(f"mixed unit row: needs >= 1 decode and a chunk of >= 1 token (tokens {tokens}, "
                             f"seqs {seqs}, context {context})")
        return [(1, context - 1, True)] * nd + [(tokens - nd, 0, False)]
    raise ValueError(f"unit row variant must be one of {', '.join(ITERATION_VARIANTS)}, got {variant!r}")


def unit_batch(tokens: int, seqs: int, context: int, variant: str, prefix: str = "u") -> Batch:
    """The batch a unit-timing row describes, on fresh requests (decodes first, as the schedulers build them)."""
    items = unit_items(tokens, seqs, context, variant)
    return synthetic_batch([cached + 1 for _, cached, dec in items if dec],
                           [(new, cached) for new, cached, dec in items if not dec], prefix)
