"""Prefix caching's counters and summary.json's ``prefix_cache`` section (from every replica's manager)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class PrefixCacheStats:
    """Counters for the summary: what admissions asked for, what they found, what was evicted."""

    queried_tokens: int = 0   # prompt tokens of every first admission
    hit_tokens: int = 0       # of which found in the cache
    queried_blocks: int = 0   # full prompt blocks of every first admission
    hit_blocks: int = 0
    recompute_hit_tokens: int = 0  # tokens a preempted request found again when re-admitted (its own, mostly)
    evictions: int = 0        # cached blocks given to another use

    def as_dict(self) -> dict:
        """The counters with hit rates (None before any lookup)."""
        d = asdict(self)
        d["hit_rate_tokens"] = self.hit_tokens / self.queried_tokens if self.queried_tokens else None
        d["hit_rate_blocks"] = self.hit_blocks / self.queried_blocks if self.queried_blocks else None
        return d


def cache_summary(managers: list[Any], occupancy: list[list[int]]) -> dict:
    """summary.json's ``prefix_cache``: totals over replicas, each replica's hit rate and evictions, occupancy."""
    total = PrefixCacheStats()
    for m in managers:
        for k, v in asdict(m.stats).items():
            setattr(total, k, getattr(total, k) + v)
    occ = np.concatenate([np.asarray(log, dtype=np.int64) for log in occupancy] or [np.zeros(0, np.int64)])
    return {"enabled": True, **total.as_dict(),
            "cached_free_blocks_mean": float(occ.mean()) if len(occ) else 0.0,
            "cached_free_blocks_max": int(occ.max()) if len(occ) else 0,
            "replicas": [{"hit_rate_tokens": m.stats.as_dict()["hit_rate_tokens"], "evictions": m.stats.evictions}
                         for m in managers]}
