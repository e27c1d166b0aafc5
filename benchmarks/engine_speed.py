"""Engine speed: iteration times of prefill and decode next to their weight-read and compute floors.

Cases: prefill of 512, 2048 and 4096 tokens (one request, empty cache) and decode of
batch 1, 32 and 128 at a context of 1024 tokens. For each: median wall time per
iteration (with device synchronisation), device time (CUDA events on GPU), host time,
the memory-bandwidth floor (weight bytes / bandwidth) and the compute floor (FLOPs /
peak), and the achieved share of a measured matmul peak (a large GEMM in the engine's
dtype). Floors use the GPU catalogue (``--gpu``, or detected from the CUDA device name);
on the CPU pass ``--mem-bw`` / ``--peak-tflops`` or the floors are skipped. Targets on a
GPU: decode at batch 1 within 1.3x of the weight-read floor; prefill of 4096 tokens at
60% or more of the measured matmul peak.

    python benchmarks/engine_speed.py --model tiny --device cpu        # seconds
    python benchmarks/engine_speed.py --model llama-2-7b --device cuda  # bf16, random weights
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from engine.device import detect_gpu, device_name, parse_dtype, resolve_device
from engine.runner import ModelRunner
from sim.batch import Batch, BatchItem
from sim.catalog.models import get_model
from sim.cli.args import int_list
from sim.cost.roofline import RooflineCostModel
from sim.kv.block_manager import BlockManager, blocks_for
from sim.request import Request


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> float:
    """FLOP/s of a ``size`` x ``size`` x ``size`` GEMM in ``dtype`` (best of ``repeats``)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):
        _sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        if i:  # the first call is a warm-up
            best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def prefill_batch(runner: ModelRunner, bm: BlockManager, tokens: int) -> Batch:
    """One request's whole prompt of ``tokens`` over an empty cache."""
    r = Request(f"prefill-{tokens}", 0.0, tokens, 2)
    bm.grow(r, tokens)
    return Batch([BatchItem(r, tokens, 0)])


def decode_batch(runner: ModelRunner, bm: BlockManager, size: int, context: int) -> Batch:
    """``size`` requests decoding their next token over ``context`` cached tokens (cache contents are arbitrary)."""
    items = []
    for i in range(size):
        r = Request(f"decode-{size}-{i}", 0.0, context, 1 << 20)
        r.num_computed, r.num_generated = context, 1
        bm.grow(r, context + 1)
        runner.token_ids(r).append(0)  # the "sampled" token this decode processes
        items.append(BatchItem(r, 1, context))
    return Batch(items)


def time_batch(runner: ModelRunner, batch: Batch, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall, device and host seconds of re-running ``batch`` (idempotent: same slots, same ids)."""
    walls, devs, hosts = [], [], []
    for i in range(warmup + repeats):
        t0 = time.perf_counter()
        runner.execute(batch)
        wall = time.perf_counter() - t0
        if i >= warmup:
            tm = runner.last_timing
            walls.append(wall)
            devs.append(tm["device_s"])
            hosts.append(wall - tm["forward_s"])
    return {"wall_s": statistics.median(walls), "device_s": statistics.median(devs),
            "host_s": statistics.median(hosts)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama-2-7b", help="catalogue model or HF config.json (default: %(default)s)")
    ap.add_argument("--device", default=None, choices=("cpu", "cuda"), help="default: cuda when available")
    ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--backend", default="auto", choices=("auto", "sdpa", "flex", "flash"),
                    help="attention backend (default: %(default)s)")
    ap.add_argument("--no-cuda-graphs", dest="cuda_graphs", action="store_false", default=None,
                    help="decode eagerly instead of replaying CUDA graphs")
    ap.add_argument("--gpu", default=None, help="GPU catalogue entry for the floors (default: detected on cuda)")
    ap.add_argument("--mem-bw", type=float, default=None, metavar="GB/S",
                    help="memory bandwidth for the weight-read floor when no catalogue GPU applies (e.g. cpu)")
    ap.add_argument("--peak-tflops", type=float, default=None, metavar="TF",
                    help="peak FLOP/s (in TFLOP/s) for the compute floor when no catalogue GPU applies "
                         "(default there: the measured matmul peak)")
    ap.add_argument("--prefill", type=int_list, default=[512, 2048, 4096], metavar="N,N",
                    help="prefill lengths (default: 512,2048,4096)")
    ap.add_argument("--decode", type=int_list, default=[1, 32, 128], metavar="B,B",
                    help="decode batch sizes (default: 1,32,128)")
    ap.add_argument("--context", type=int, default=1024, help="decode context in tokens (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=None, help="timed iterations per case (default: 20 cuda, 3 cpu)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations per case (default: %(default)s)")
    ap.add_argument("--gemm-size", type=int, default=None, help="matmul peak size (default: 8192 cuda, 1024 cpu)")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args(argv)

    device = resolve_device(args.device)
    dtype = parse_dtype(args.dtype, device)
    spec = get_model(args.model)
    repeats = args.repeats or (20 if device.type == "cuda" else 3)
    block = 16
    context = args.context
    kv_blocks = (max(blocks_for(n, block) for n in args.prefill)
                 + sum(b * blocks_for(context + 1, block) for b in args.decode))
    runner = ModelRunner(spec, device=device, dtype=dtype, kv_blocks=kv_blocks, block_size=block,
                         backend=args.backend, cuda_graphs=args.cuda_graphs)
    gpu = detect_gpu(device, args.gpu)
    roof = RooflineCostModel(spec, gpu or "a100-80gb", dtype_bytes=runner.kv_cache.data.element_size())
    bandwidth = gpu.mem_bandwidth if gpu else (args.mem_bw * 1e9 if args.mem_bw else None)
    gemm = args.gemm_size or (8192 if device.type == "cuda" else 1024)
    peak_measured = matmul_peak(device, dtype, gemm, 5 if device.type == "cuda" else 2)
    peak = gpu.bf16_flops if gpu else (args.peak_tflops * 1e12 if args.peak_tflops else peak_measured)
    weight_bytes = runner.model.num_bytes
    floor_mem = weight_bytes / bandwidth if bandwidth else None

    print(f"engine speed: {spec.name} ({weight_bytes / 1e9:.2f} GB of weights), {device_name(device)}, "
          f"{str(dtype).removeprefix('torch.')}, attention {runner.backend.name}, "
          f"CUDA graphs {'on' if runner.cuda_graphs and device.type == 'cuda' else 'off'}")
    print(f"matmul peak (measured, {gemm}^3 {str(dtype).removeprefix('torch.')} GEMM): "
          f"{peak_measured / 1e12:.2f} TFLOP/s; compute floor uses "
          f"{'datasheet ' + gpu.name if gpu else ('--peak-tflops' if args.peak_tflops else 'the measured peak')} "
          f"{peak / 1e12:.1f} TFLOP/s; weight-read floor uses "
          + (f"{bandwidth / 1e9:.0f} GB/s" if bandwidth else "nothing (pass --mem-bw or --gpu)"))
    head = (f"{'case':<22}{'wall ms':>10}{'device ms':>11}{'host ms':>9}{'mem floor':>11}{'x floor':>9}"
            f"{'cmp floor':>11}{'TFLOP/s':>9}{'% matmul':>10}")
    print(head)
    results = []
    bm = BlockManager(kv_blocks, block)
    cases = ([("prefill", n, prefill_batch(runner, bm, n)) for n in args.prefill])
    for kind, n, batch in cases:
        results.append(_measure(runner, batch, f"prefill {n}", roof, peak, peak_measured, floor_mem, args, repeats))
        bm.free(batch.items[0].request)
    for b in args.decode:
        batch = decode_batch(runner, bm, b, context)
        results.append(_measure(runner, batch, f"decode b={b} ctx={context}", roof, peak, peak_measured, floor_mem,
                                args, repeats))
        for it in batch.items:
            bm.free(it.request)
            runner.release(it.request)
    print("mem floor: weight bytes / bandwidth; x floor: wall / mem floor; cmp floor: FLOPs / peak; "
          "% matmul: achieved FLOP/s / measured matmul peak")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"model": spec.name, "device": device_name(device), "dtype": str(dtype),
                       "backend": runner.backend.name, "cuda_graphs": bool(runner.cuda_graphs),
                       "matmul_peak_flops": peak_measured, "peak_flops": peak, "mem_bandwidth": bandwidth,
                       "weight_bytes": weight_bytes, "torch": torch.__version__, "cases": results}, fh, indent=2)
    return 0


def _measure(runner, batch, label, roof, peak, peak_measured, floor_mem, args, repeats) -> dict:
    t = time_batch(runner, batch, args.warmup, repeats)
    flops = roof.stage_cost(batch, 0).flops
    floor_cmp = flops / peak
    achieved = flops / t["wall_s"]
    ms = 1e3
    mem = f"{floor_mem * ms:>11.3f}" if floor_mem else f"{'-':>11}"
    ratio = f"{t['wall_s'] / floor_mem:>9.2f}" if floor_mem else f"{'-':>9}"
    print(f"{label:<22}{t['wall_s'] * ms:>10.3f}{t['device_s'] * ms:>11.3f}{t['host_s'] * ms:>9.3f}{mem}{ratio}"
          f"{floor_cmp * ms:>11.3f}{achieved / 1e12:>9.2f}{achieved / peak_measured:>10.1%}")
    sys.stdout.flush()
    return {"case": label, **t, "flops": flops, "mem_floor_s": floor_mem, "compute_floor_s": floor_cmp,
            "achieved_flops": achieved, "fraction_of_matmul_peak": achieved / peak_measured,
            "cuda_graph": bool(runner.last_timing.get("cuda_graph"))}


if __name__ == "__main__":
    sys.exit(main())
