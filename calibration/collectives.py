"""Communication timings through torch.distributed: TP all-reduce of ``[T, hidden]`` and PP send/recv.

One process per device (spawned for CUDA, forked on a CPU), NCCL on CUDA, gloo on CPU. Each
size is warmed up, then timed ``repeats`` times between barriers; a repeat's time is the
slowest rank's, and rank 0 writes the medians to a JSON file the parent reads back. Rows use
the profile's column names (``tp_all_reduce`` rows are reused for ``tp_all_reduce_mlp``).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Any, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Per-repeat seconds of ``fn()`` (the slowest rank's), between barriers."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        dist.barrier()
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    t = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.cpu().tolist()


def _worker(rank: int, world: int, port: int, device_type: str, tokens: list[int], hidden: int, dtype_name: str,
            warmup: int, repeats: int, send_recv: bool, out: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    backend = "nccl" if device_type == "cuda" else "gloo"
    device = torch.device(device_type, rank) if device_type == "cuda" else torch.device("cpu")
    if device_type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=rank, world_size=world)
    dtype = getattr(torch, dtype_name)
    rows: list[dict[str, Any]] = []
    try:
        for n in tokens:
            x = torch.randn(n, hidden, device=device).to(dtype)
            ts = _timed(lambda: dist.all_reduce(x), device, warmup, repeats)
            rows.append(_row("tp_all_reduce", world, n, ts))
            if send_recv and world >= 2:
                y = torch.randn(2, n, hidden, device=device).to(dtype)  # hidden states and residual

                def p2p() -> None:
                    if rank == 0:
                        dist.send(y, 1)
                    elif rank == 1:
                        dist.recv(y, 0)

                rows.append(_row("pp_send_recv", 0, n, _timed(p2p, device, warmup, repeats)))
        if rank == 0:
            Path(out).write_text(json.dumps(rows))
    finally:
        dist.destroy_process_group()


def _row(op: str, tp: int, n: int, times: list[float]) -> dict[str, Any]:
    a = np.asarray(times)
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return {"op": op, "tp": tp, "tokens": n, "seqs": 0, "context": 0, "variant": "", "median_s": float(med),
            "p10_s": float(min(p10, med)), "p90_s": float(max(p90, med)), "repeats": int(a.size)}


def measure_collectives(world_size: int, tokens: list[int], hidden: int, *, device_type: str = "cuda",
                        dtype: torch.dtype = torch.bfloat16, warmup: int = 3, repeats: int = 10,
                        send_recv: bool = True) -> list[dict[str, Any]]:
    """Profile rows of all-reduce over ``world_size`` devices (and send/recv between two) for each token count."""
    if world_size < 2:
        raise ValueError(f"communication needs at least 2 processes, got {world_size}")
    if device_type == "cuda" and torch.cuda.device_count() < world_size:
        raise ValueError(f"all-reduce over {world_size} GPUs needs {world_size} visible GPUs, "
                         f"found {torch.cuda.device_count()}")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "rows.json")
        # CUDA cannot be forked once initialised; CPU workers fork, which skips re-importing torch
        mp.start_processes(_worker, args=(world_size, _free_port(), device_type, list(tokens), hidden,
                                          str(dtype).removeprefix("torch."), warmup, repeats, send_recv, out),
                           nprocs=world_size, join=True, start_method="spawn" if device_type == "cuda" else "fork")
        rows = json.loads(Path(out).read_text())
    rows += [dict(r, op="tp_all_reduce_mlp") for r in rows if r["op"] == "tp_all_reduce"]
    return rows
