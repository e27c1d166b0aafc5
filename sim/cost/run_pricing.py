"""Pricing a stretch's steps at once (``sim.serving.stretch``): the roofline's ``stage_cost`` of many batches that
differ only in their contexts, in one call, with the same floats as a batch each.

A mixin of ``sim.cost.roofline.RooflineCostModel`` (whose coefficients and per-op prices it reads).
"""

from __future__ import annotations

from typing import Any

_OpCost = tuple[float, float, float]  # (seconds, flops, bytes)


class RunPricing:
    """``decode_run`` and ``chunk_run``: stage 0's ``stage_cost`` of a stretch's steps without a batch each."""

    _token_part: Any
    layers: list[int]

    def decode_run(self, n: int, context: int, steps: int) -> list[_OpCost]:
        """Stage 0's ``stage_cost`` of ``steps`` batches of ``n`` decodes reading ``context`` keys, then n more a step
        (decode stretches): ``attn_decode_cost``'s arithmetic in its order (the same floats), without a batch each."""
        (t, f, b), L, kl = self._token_part(n, n, 0), self.layers[0], self.kernel_launch_overhead
        pf, pk, bn = self._attn_flops_per_pair, self._attn_bytes_per_key, self._attn_bytes_per_new * n
        fr, br = self._flop_rate, self._byte_rate
        return [(t + L * (max((bn + pk * d) / br, pf * (d + n) / fr) + kl), f + L * (pf * (d + n)),
                 b + L * (bn + pk * d)) for d in range(context - n, context - n + n * steps, n)]

    def chunk_run(self, n: int, context: int, chunk: int, cached: int, steps: int) -> list[_OpCost]:
        """Stage 0's ``stage_cost`` of ``steps`` batches of ``n`` decodes reading ``context`` keys (then n more a
        step) beside a chunk of ``chunk`` prompt tokens over ``cached`` computed ones (then a chunk more a step):
        a chunk stretch's steps, its operations in ``stage_cost``'s order."""
        (t0, f0, b0), L = self._token_part(n + chunk, n + 1, 0), self.layers[0]
        prefill, decode = self.attn_prefill_cost, self.attn_decode_cost
        out = []
        for s in range(steps):
            p = cached + s * chunk
            at, af, ab = prefill(chunk, p, chunk * p + chunk * (chunk + 1) // 2)
            t, f, b = t0 + L * at, f0 + L * af, b0 + L * ab
            if n:
                at, af, ab = decode(n, context + s * n)
                t, f, b = t + L * at, f + L * af, b + L * ab
            out.append((t, f, b))
        return out
