"""FlexAttention on the engine's parts: compiles over a calibration-like sequence of shapes, and speed against SDPA.

Prints, per shape, the FlexAttention time (compiled on CUDA, the eager reference on a CPU), the reference
SDPA backend's time, the largest difference between the two outputs and the compiles so far. On a CPU the
compile count comes from a counting backend (no kernels generated), as in tests/engine/test_flex_attention.py.

    python benchmarks/flex_check.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from engine.attention import SdpaBackend, build_part
from engine.device import parse_dtype, resolve_device
from engine.flex_attention import FlexBackend

#: (decodes, decode context, prefill chunk, chunk context): decode batches, prefill chunks, mixed batches
SHAPES = [(b, c, 0, 0) for b in (1, 8, 32, 128) for c in (512, 2048)]
SHAPES += [(0, 0, t, c) for t in (128, 512, 2048, 4096) for c in (0, 1024)]
SHAPES += [(32, 1024, 512, 512), (64, 2048, 256, 0)]


def _part(decodes: int, ctx: int, chunk: int, chunk_ctx: int, block: int, num_blocks: int, device):
    seqs, nxt = [], 0
    for new, cached in [(chunk, chunk_ctx)] * bool(chunk) + [(1, ctx)] * decodes:
        nb = -(-(cached + new) // block)
        seqs.append(([b % num_blocks for b in range(nxt, nxt + nb)], cached, new))
        nxt += nb
    return build_part(seqs, 0, block, device)


def _time(fn, device, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, choices=("cpu", "cuda"))
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=None, help="default: 10 on cuda, 1 on cpu")
    args = ap.parse_args(argv)
    device = resolve_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    cpu = device.type == "cpu"
    heads, kv_heads, dim = (4, 2, 16) if cpu else (args.heads, args.kv_heads, args.head_dim)
    repeats = args.repeats or (1 if cpu else 10)
    counter = None
    if cpu:
        from torch._dynamo.testing import CompileCounter
        counter = CompileCounter()
        flex = FlexBackend(device, compile=True, compile_backend=counter)
    else:
        flex = FlexBackend(device)
    block, num_blocks = 16, 4096
    gen = torch.Generator(device=device).manual_seed(0)
    k_cache = torch.randn(num_blocks, block, kv_heads, dim, device=device, dtype=dtype, generator=gen)
    v_cache = torch.randn(num_blocks, block, kv_heads, dim, device=device, dtype=dtype, generator=gen)
    sdpa = SdpaBackend()
    shapes = SHAPES[:6] + SHAPES[8:12] if cpu else SHAPES
    print(f"flex on {device} ({dtype}), {heads} heads / {kv_heads} kv heads x {dim}; "
          f"{'counting compiles (no kernels)' if cpu else 'compiled with inductor'}")
    print(f"{'decodes':>7} {'ctx':>5} {'chunk':>5} {'cctx':>5} {'flex ms':>9} {'sdpa ms':>9} {'max diff':>9} compiles")
    t_start = time.perf_counter()
    for shape in shapes:
        part = _part(*shape, block, num_blocks, device)
        q = torch.randn(part.num_tokens, heads, dim, device=device, dtype=dtype, generator=gen)
        scale = dim ** -0.5
        out = flex.attend(q, k_cache, v_cache, part, scale)
        ref = sdpa.attend(q, k_cache, v_cache, part, scale)
        diff = float((out.float() - ref.float()).abs().max())
        tf = _time(lambda: flex.attend(q, k_cache, v_cache, part, scale), device, repeats)
        ts = _time(lambda: sdpa.attend(q, k_cache, v_cache, part, scale), device, repeats)
        compiles = counter.frame_count if counter else _compiles()
        print(f"{shape[0]:>7} {shape[1]:>5} {shape[2]:>5} {shape[3]:>5} {tf * 1e3:>9.3f} {ts * 1e3:>9.3f} "
              f"{diff:>9.2e} {compiles}")
    print(f"{len(shapes)} shapes in {time.perf_counter() - t_start:.1f} s; compiles: "
          f"{counter.frame_count if counter else _compiles()}")
    return 0


def _compiles() -> int:
    """Frames dynamo compiled so far in this process."""
    from torch._dynamo.utils import counters
    return int(counters["stats"]["unique_graphs"])


if __name__ == "__main__":
    sys.exit(main())
