"""Prefill attention's compute efficiency against the keys a query sees, fitted to measured FlashAttention kernels.

FlashAttention's forward pass runs at a fraction of the tensor-core peak that rises with the sequence
length: every query row pays work that does not scale with the keys it sees (loading its Q tile,
the online-softmax rescale of its output accumulator, writing O, the half-empty diagonal tile of a
causal mask), which long key runs amortise. Modelled as

    seconds = (pairs + rows x half_keys) x FLOPs per pair / (peak x peak_efficiency)

i.e. an efficiency ``peak_efficiency x k / (k + half_keys)`` at ``k`` mean keys per query row.
A flat 70% (the roofline's default) prices A100 attention 1.2-1.3x too fast at 8-16K tokens and
2.5x too fast at 1K; the two fitted numbers reproduce AIConfigurator's measured tables to 4-6%
(median, benchmarks/long_prefill.py, results/long_prefill.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: rows of a context-attention table used to fit: batch 1, bf16, head size 128, at least this many query
#: heads (one tensor-parallel shard of a 7B-180B model holds 14-64) and this many tokens (compute-bound)
FIT_MIN_HEADS = 16
FIT_MIN_TOKENS = 1024


@dataclass(frozen=True)
class AttentionFit:
    """Fitted prefill-attention efficiency of one GPU family: ``peak_efficiency x k / (k + half_keys)``."""

    peak_efficiency: float
    half_keys: float
    source: str

    def efficiency(self, mean_keys: float) -> float:
        """Fraction of the dense peak at ``mean_keys`` keys per query row (causal prefill of L: about L / 2)."""
        return self.peak_efficiency * mean_keys / (mean_keys + self.half_keys)


_AIC = "AIConfigurator (aiconfigurator-core 0.12.0) {} context_attention_perf.parquet, batch 1, bf16, head size 128, "\
       f">= {FIT_MIN_HEADS} query heads, >= {FIT_MIN_TOKENS} tokens ({{}}; fit_attention in sim/cost/attention_fit.py)"

#: fits per AIConfigurator system (a GPU's ``kernel_db``); a GPU without one keeps the roofline's flat efficiency.
#: Re-derived from the tables by tests/sim/cost/test_attention_fit.py when the kernels extra is installed.
FITS: dict[str, AttentionFit] = {
    "a100_sxm": AttentionFit(0.610, 493.0, _AIC.format("a100_sxm/vllm/0.14.0", "vllm_flash_attn, FlashAttention-2")),
    "h100_sxm": AttentionFit(0.734, 962.0, _AIC.format("h100_sxm/vllm/0.24.0", "vllm_flash_attn_fa3, FlashAttention-3")),
    "h200_sxm": AttentionFit(0.727, 926.0, _AIC.format("h200_sxm/vllm/0.24.0", "vllm_flash_attn_fa3, FlashAttention-3")),
}


def attention_fit(kernel_db: str) -> AttentionFit | None:
    """The fit of a GPU whose kernel tables are ``kernel_db`` (its catalogue field), or None."""
    return FITS.get(kernel_db)


def fit_attention(tokens: np.ndarray, q_heads: np.ndarray, seconds: np.ndarray, head_dim: int,
                  peak_flops: float) -> tuple[float, float]:
    """(peak_efficiency, half_keys) from full causal prefills of ``tokens`` with ``q_heads`` heads taking ``seconds``.

    Linear least squares in relative error of seconds = a x pairs x heads + b x tokens x heads (FLOPs per
    pair and head 4 x head_dim: QK^T and PV); peak_efficiency = FLOPs per pair / (peak x a), half_keys = b / a.
    """
    L, qh, y = (np.asarray(v, dtype=float) for v in (tokens, q_heads, seconds))
    per_pair = 4.0 * head_dim / peak_flops
    a = np.stack([per_pair * qh * L * (L + 1) / 2, per_pair * qh * L], axis=1) / y[:, None]
    (ca, cb), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return float(1.0 / ca), float(cb / ca)
