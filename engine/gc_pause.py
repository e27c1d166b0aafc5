"""Keeps Python's full garbage collections out of a serving loop, as vLLM does after start-up.

The model, its caches and everything built before serving are long-lived; a generation-2
collection scans all of them (measured here: one 78 ms pause in a 2,400-iteration CPU run of
the tiny model, which became the run's TTFT P99). ``gc.freeze()`` moves them out of the
collector's reach, so only the short-lived objects of each iteration are scanned.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Collect once, freeze every surviving object for the duration, unfreeze afterwards."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
