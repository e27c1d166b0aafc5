"""The host part of a prefill beyond the decode-batch host table, from profile.json's ``host_prefill`` block.

Calibration times the host table on decode iterations; a prefill also prepares its prompt's ids,
positions and slots (per prompt token), builds a prefill part (once per iteration that has one)
and admits each item (a new request's ids, block allocation, first-token handling).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sim.batch import Batch


@dataclass(frozen=True)
class HostPrefill:
    """Measured extra host seconds of an iteration's prefill items (zero where the profile has no block)."""

    per_token_s: float = 0.0
    fixed_s: float = 0.0
    per_request_s: float = 0.0

    @classmethod
    def from_meta(cls, block: dict[str, Any] | None) -> HostPrefill:
        block = block or {}
        return cls(*(float(block.get(k, 0.0)) for k in ("per_token_s", "fixed_s", "per_request_s")))

    def time(self, batch: Batch) -> float:
        """Extra host seconds of ``batch``: nothing without prefill items."""
        if not batch.prefill_items:
            return 0.0
        return (self.fixed_s + self.per_request_s * len(batch.prefill_items)
                + self.per_token_s * batch.num_prefill_tokens)
