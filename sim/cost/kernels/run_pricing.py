"""Pricing a stretch's steps at once with the kernels model (``sim.serving.stretch``): ``stage_cost`` of many batches
that differ only in their contexts, in one call, with the same floats (and the same per-source counts) as a batch
each.

A mixin of ``sim.cost.kernels.model.KernelCostModel`` (whose token part, attention lookups and roofline it reads).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

# from this many steps a stretch is priced in NumPy arrays: measured here, 45-80 us a call against ~1.6 us a step
# in Python calls, so arrays pay from about 30-50 steps on
VECTOR_STEPS = 40


class KernelRunPricing:
    """``decode_run``, ``decode_runs`` and ``chunk_run``: stage 0's ``stage_cost`` of a stretch's steps."""

    rl: Any
    layers: list[int]
    _decode: Any
    _prefill: Any
    _token_part: Any
    _chunk: Any

    def decode_run(self, n: int, context: int, steps: int) -> list[tuple[float, float, float]]:
        """Stage 0's ``stage_cost`` of ``steps`` batches of ``n`` decodes reading ``context`` keys, then n more a step
        (a decode stretch, ``sim.serving.stretch``), the same floats without a batch each: the token part priced
        once, the attention rows of batch size n found once, FLOPs and bytes with ``RooflineCostModel``'s
        ``attn_decode_cost`` arithmetic; from ``VECTOR_STEPS`` steps on in NumPy arrays (``_runs_in_arrays``)."""
        if n <= 0:
            return [(0.0, 0.0, 0.0)] * steps
        dec, rl = self._decode, self.rl
        if dec is not None and steps >= VECTOR_STEPS:
            return self._runs_in_arrays([(n, context, steps)])
        t, f, b = self._token_part(n, n, 0, True)
        L, pf, bn, bk = self.layers[0], rl._attn_flops_per_pair, rl._attn_bytes_per_new * n, rl._attn_bytes_per_key
        contexts = range(context, context + n * steps, n)
        attn = dec.run(n, contexts) if dec is not None else [rl.attn_decode_cost(n, c)[0] for c in contexts]
        return [(t + L * a, f + L * (pf * c), b + L * (bn + bk * (c - n))) for a, c in zip(attn, contexts)]

    def chunk_run(self, n: int, context: int, chunk: int, cached: int, steps: int
                  ) -> Iterator[tuple[float, float, float]]:
        """Stage 0's ``stage_cost`` of ``steps`` batches of ``n`` decodes reading ``context`` keys (then n more a
        step) beside a chunk of ``chunk`` prompt tokens over ``cached`` computed ones (then a chunk more a step), the
        same floats in ``stage_cost``'s order, lazily: a step's chunk is priced (and its table's source counted,
        ``describe``) only when the stretch takes that step, as the loop would price it."""
        rl, dec, L = self.rl, self._decode, self.layers[0]
        t0, f0, b0 = self._token_part(n + chunk, n + 1, 0, False)
        contexts = range(context, context + n * steps, n or 1)  # (no decodes: none read)
        decode = (dec.run(n, contexts) if dec is not None else [rl.attn_decode_cost(n, c)[0] for c in contexts]
                  ) if n else None
        for s in range(steps):
            p = cached + s * chunk
            sums = (chunk, p, chunk * p + chunk * (chunk + 1) // 2)  # the roofline's ``_prefill_sums``
            if self._prefill is None:
                t = t0 + L * rl.attn_prefill_cost(*sums)[0]
            else:  # ``_prefill_seconds`` of one chunk
                floor, seconds = self._prefill.floor, 0.0
                seconds += self._chunk(chunk, p)[0] - floor
                t = t0 + L * (seconds + floor)
            _, af, ab = rl.attn_prefill_cost(*sums)
            f, b = f0 + L * af, b0 + L * ab
            if n:
                t += L * decode[s]
                _, af, ab = rl.attn_decode_cost(n, contexts[s])
                f += L * af
                b += L * ab
            yield t, f, b

    def decode_runs(self, runs: list[tuple[int, int, int]]) -> list[tuple[float, float, float]]:
        """``decode_run(n, context, steps)`` of each of ``runs`` in turn, concatenated (a stretch's runs of steps,
        requests dropping out as they finish): one NumPy pass from ``VECTOR_STEPS`` steps in all, the same floats."""
        if self._decode is None or sum(r[2] for r in runs) < VECTOR_STEPS or min(r[0] for r in runs) <= 0:
            return [p for n, context, steps in runs for p in self.decode_run(n, context, steps)]
        return self._runs_in_arrays(runs)

    def _runs_in_arrays(self, runs: list[tuple[int, int, int]]) -> list[tuple[float, float, float]]:
        """``decode_runs`` in NumPy arrays (``n`` > 0, a decode table): the same operations element by element (IEEE
        rounding each alike), each run's token part found as ``decode_run`` finds it, in the same order."""
        ns, starts, counts = zip(*runs)
        parts = [self._token_part(n, n, 0, True) for n in ns]
        L, rl = self.layers[0], self.rl
        n_e = np.repeat(np.array(ns, dtype=np.int64), counts)
        first = np.repeat(np.cumsum(counts) - counts, counts)  # each element's run's first element
        ctx = np.repeat(np.array(starts, dtype=np.int64), counts) + n_e * (np.arange(len(n_e)) - first)
        t, f, b = (np.repeat(np.array(col, dtype=float), counts) for col in zip(*parts))
        bn = np.repeat(np.array([rl._attn_bytes_per_new * n for n in ns], dtype=float), counts)
        times = t + L * self._decode.run_many(list(ns), ctx, list(counts))
        flops, nbytes = f + L * (rl._attn_flops_per_pair * ctx), b + L * (bn + rl._attn_bytes_per_key * (ctx - n_e))
        return list(zip(times.tolist(), flops.tolist(), nbytes.tolist()))
