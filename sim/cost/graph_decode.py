"""Decode-only iterations priced as the engine runs them on a GPU: whole forward passes replayed from CUDA graphs.

Calibration times them (profile rows ``forward_graph``, by sequences and context; ``decode_path`` =
``cuda_graphs`` in profile.json). A graph replays the padded static shape with no launch gaps, so summing
eager op timings plus a fitted launch overhead over-prices it; the table prices it directly. Only for the
profiled device at TP 1 and one stage (the shapes the engine captures), never transferred to another GPU.
"""

from __future__ import annotations

from typing import Any

from sim.batch import Batch
from sim.cost.tables import Grid2D

SOURCE = "profile-graph"


class GraphDecodeTable:
    """Seconds of a decode-only forward pass (with sampling) of ``n`` sequences whose longest context is ``c``."""

    def __init__(self, rows: Any, shape: Any) -> None:
        self.grid = Grid2D(rows["seqs"].to_numpy(), rows["context"].to_numpy(), rows["median_s"].to_numpy(), shape)

    @classmethod
    def from_profile(cls, profile: Any, src: Any, *, tp: int, pp: int, transfer: bool) -> GraphDecodeTable | None:
        """The table of a profile measured through CUDA graphs, for a deployment the engine would graph."""
        if tp != 1 or pp != 1 or transfer or profile.meta.get("decode_path") != "cuda_graphs":
            return None
        rows = profile.table[profile.table["op"] == "forward_graph"]
        if rows.empty:
            return None

        def shape(seqs: float, context: float) -> float:  # roofline of the same whole forward pass
            return src.unit_time("forward", int(seqs), int(seqs), int(context), "decode")
        return cls(rows, shape)

    def time(self, batch: Batch) -> float | None:
        """Seconds of ``batch`` through the graph path, or None when it is not a decode-only batch."""
        if batch.prefill_items or not batch.items:
            return None
        longest = max(it.num_cached_tokens for it in batch.items)  # the static path pads every row to it
        return self.grid(len(batch.items), longest)
