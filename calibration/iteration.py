"""Whole-unit timings on the real engine: decoder layers and forward passes inside ``ModelRunner.execute``.

Ops timed one by one in a hot loop miss what the engine pays between and around them (Python
glue, attention masks built once per forward, cold caches; on a GPU without CUDA graphs, the
launch gaps). This bench runs real iterations of batch shapes from a small grid (prefill-only,
decode-only, mixed) and records, per shape, the mean time of one decoder layer (``layer_forward``,
the model's ``layer_forward`` timed in place) and of the forward pass with sampling
(``forward``, the runner's ``forward_s``). The profiled cost model fits its overhead terms
(``sim.ops.OVERHEAD_OPS``) to these rows.

The rows' shape convention lives with the profile format, in ``sim.cost.unit_rows``. Torch is
imported only by the bench.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sim.catalog.models import ModelSpec
from sim.cost.unit_rows import ITERATION_VARIANTS, unit_batch, unit_items


def unit_shapes(max_context: int, decode_batches: tuple[int, ...], decode_contexts: tuple[int, ...],
                prefill_chunks: tuple[int, ...], mixed: tuple[tuple[int, int], ...]) -> list[tuple[int, int, int, str]]:
    """(tokens, seqs, context, variant) of the grid: decode batch x context, single chunks at no and half context,
    four equal chunks, and (decodes, chunk) mixed batches at a mid context."""
    out: list[tuple[int, int, int, str]] = []
    ctxs = sorted({min(c, max_context) for c in decode_contexts})
    out += [(b, b, c, "decode") for b in decode_batches for c in ctxs]
    for c in prefill_chunks:
        if c <= max_context:
            out.append((c, 1, 0, "prefill"))
        if c <= max_context // 2 and c >= 16:
            out.append((c, 1, max_context // 2, "prefill"))
        if 4 * c <= 2 * max_context and c >= 16:
            out.append((4 * c, 4, 0, "prefill"))
    mid = min(max(ctxs[len(ctxs) // 2], 2), max_context)
    out += [(nd + c, nd + 1, mid, "mixed") for nd, c in mixed if c <= max_context]
    return sorted(set(out), key=lambda s: (ITERATION_VARIANTS.index(s[3]), s[1], s[0], s[2]))


class IterationBench:
    """Runs unit-row batches through a real ``ModelRunner`` and times layers and forward passes.

    ``cuda_graphs`` False (the unit rows): eager, each layer timed in place. True (``forward_graph`` rows):
    decode-only batches replayed from CUDA graphs as the engine runs them; only whole forwards are timed.
    """

    def __init__(self, model: ModelSpec, device: Any, dtype: Any, backend: str, block_size: int,
                 max_blocks: int, seed: int = 0, cuda_graphs: bool = False) -> None:
        import torch

        from engine.runner import ModelRunner

        self.torch = torch
        self.runner = ModelRunner(model, device=device, dtype=dtype, kv_blocks=max_blocks, block_size=block_size,
                                  backend=backend, seed=seed, cuda_graphs=cuda_graphs)
        self.model = self.runner.model
        self.layers = model.num_layers
        self._inner = self.model.layer_forward
        self._events: list[tuple[Any, Any]] = []
        self._layer_s = 0.0
        if not cuda_graphs:  # a graph replays kernels, not Python: nothing to hook
            self.model.layer_forward = self._timed_layer  # instance attribute: the engine's forward calls it
        self._n = 0

    def _timed_layer(self, *args: Any, **kwargs: Any) -> Any:
        torch = self.torch
        if self.runner.device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            out = self._inner(*args, **kwargs)
            b.record()
            self._events.append((a, b))
            return out
        t0 = time.perf_counter()
        out = self._inner(*args, **kwargs)
        self._layer_s += time.perf_counter() - t0
        return out

    def _layers_time(self) -> float:
        if self._events:
            self.torch.cuda.synchronize(self.runner.device)
            t = sum(a.elapsed_time(b) for a, b in self._events) / 1e3
            self._events = []
            return t
        t, self._layer_s = self._layer_s, 0.0
        return t

    def measure(self, tokens: int, seqs: int, context: int, variant: str, warmup: int, repeats: int
                ) -> tuple[list[float], list[float]]:
        """Seconds per repeat: (one decoder layer, mean over layers; forward pass with sampling)."""
        from sim.kv.block_manager import BlockManager

        self._n += 1
        batch = unit_batch(tokens, seqs, context, variant, prefix=f"unit{self._n}-")
        runner = self.runner
        bm = BlockManager(runner.num_blocks, runner.block_size, 0.0)
        for r, new, cached in batch.items:
            bm.grow(r, cached + new)
            toks = runner.token_ids(r)
            toks.extend([0] * max(0, cached + new - len(toks)))
        layer: list[float] = []
        fwd: list[float] = []
        try:
            for i in range(warmup + repeats):
                self._layers_time()
                runner.execute(batch)
                lt = self._layers_time()
                if i >= warmup:
                    layer.append(lt / self.layers)
                    fwd.append(float(runner.last_timing["forward_s"]))
            if runner.graphs is not None and variant == "decode" and not runner.last_timing["cuda_graph"]:
                raise RuntimeError(f"decode batch of {seqs} at context {context} did not replay a CUDA graph")
        finally:
            for r, _n, _c in batch.items:
                runner.release(r)
        return layer, fwd


def blocks_needed(shapes: list[tuple[int, int, int, str]], block_size: int) -> int:
    """KV blocks the largest grid batch holds (the bench's cache size)."""
    need = 0
    for t, s, c, v in shapes:
        need = max(need, sum(-(-(cached + new) // block_size) for new, cached, _ in unit_items(t, s, c, v)))
    return need + 1


def stats(xs: list[float]) -> tuple[float, float, float]:
    """(median, p10, p90) of repeat times."""
    p10, med, p90 = np.percentile(np.asarray(xs, dtype=float), [10, 50, 90])
    return float(med), float(min(p10, med)), float(max(p90, med))


def check_bench_memory(model: ModelSpec, dtype: Any, grid: Any, block_size: int) -> None:
    """Refuse a CPU calibration whose whole-iteration bench (the full model and the largest unit batch's KV
    cache) would not fit in the available memory, before anything is allocated."""
    from engine.device import check_host_memory
    shapes = unit_shapes(model.max_context, grid.unit_decode_batches, grid.unit_decode_contexts,
                         grid.unit_prefill_chunks, grid.unit_mixed)
    check_host_memory(model, dtype, blocks_needed(shapes, block_size), block_size,
                      what=f"calibrating {model.name} (the whole-iteration bench runs the full model)",
                      advice="a smaller --model (tiny, small), --quick (a smaller grid), or a GPU")
