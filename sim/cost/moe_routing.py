"""How a batch's tokens spread over the experts of a sparse MLP: the quantities that set its cost.

With top-k routing each token picks ``k`` distinct experts. A layer's expert weights are read
once per expert that at least one token picked, so for ``T`` tokens the work is set by the
expected number of distinct experts touched, ``sum_i 1 - (1 - q_i)^T`` where ``q_i`` is the
chance a token picks expert ``i`` (``k / E`` for uniform routing). ``skew`` > 0 makes
popularity Zipf-like (expert ``i`` in proportion to ``(i + 1)^-skew``, ``q_i = k p_i`` capped
at 1): fewer experts are touched, and under expert parallelism the GPU holding the popular ones
gets more tokens. The expectation depends only on the ``q_i`` (tokens route independently), so
it holds for any top-k rule with these marginals.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def pick_probabilities(num_experts: int, top_k: int, skew: float = 0.0) -> np.ndarray:
    """Chance that one token routes to each expert; sums to ``top_k``, none above 1 (water-filled)."""
    if not (np.isfinite(skew) and skew >= 0):
        raise ValueError(f"router skew must be a finite number >= 0, got {skew}")
    pop = np.arange(1, num_experts + 1, dtype=np.float64) ** -skew
    q = top_k * pop / pop.sum()
    while (q > 1.0 + 1e-12).any():  # an expert cannot be picked twice by one token: cap it, spread the excess
        over = q >= 1.0
        excess = (q[over] - 1.0).sum()
        q[over] = 1.0
        rest = ~over
        q[rest] += excess * q[rest] / q[rest].sum()
    return q


def expected_distinct_experts(tokens: float, num_experts: int, top_k: int, skew: float = 0.0) -> float:
    """Expected number of experts at least one of ``tokens`` tokens routes to."""
    if tokens <= 0:
        return 0.0
    q = pick_probabilities(num_experts, top_k, skew)
    return float((1.0 - (1.0 - q) ** tokens).sum())


@dataclass(frozen=True)
class ExpertLoad:
    """One GPU's share of a sparse MLP for a batch: experts it runs and token-expert pairs it computes."""

    experts: float   # distinct experts touched among those it holds
    pairs: float     # token-expert assignments routed to them


def busiest_gpu_load(tokens: float, num_experts: int, top_k: int, ep: int, skew: float = 0.0) -> ExpertLoad:
    """The load of the most loaded GPU when experts are placed contiguously over ``ep`` GPUs (it sets the time)."""
    if tokens <= 0:
        return ExpertLoad(0.0, 0.0)
    q = pick_probabilities(num_experts, top_k, skew)
    touched = 1.0 - (1.0 - q) ** tokens
    groups = np.array_split(np.arange(num_experts), ep)
    loads = [ExpertLoad(float(touched[g].sum()), float(tokens * q[g].sum())) for g in groups]
    return max(loads, key=lambda x: (x.pairs, x.experts))
