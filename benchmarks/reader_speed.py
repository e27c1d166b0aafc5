"""Speed of two hot paths that tests once timed (a busy machine failed them; figures belong here, not in tests):
reading a 100,000-line JSONL trace (target: under 2 s on 2 cores) and the roofline's price of one decode
iteration of 128 requests at 1,000 tokens of context on Llama-2-7B / A100 (target: under 15 us a call).

    python benchmarks/reader_speed.py [--repeats 5]

Prints the fastest and the median of the repeats (the fastest is the least disturbed by other work).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from sim.batch import Batch, BatchItem
from sim.cost.roofline import RooflineCostModel
from sim.request import Request, TraceRequest
from sim.workload.trace import read_trace, write_trace


def _timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        write_trace(path, (TraceRequest(str(i), i * 0.01, 100 + i % 50, 1 + i % 7) for i in range(100_000)))
        reads = _timed(lambda: read_trace(path), args.repeats)
    print(f"read 100,000 JSONL lines: fastest {min(reads):.2f} s, median {statistics.median(reads):.2f} s "
          f"(target < 2 s)")
    cm = RooflineCostModel("llama-2-7b", "a100-80gb")
    items = []
    for i in range(128):
        r = Request(str(i), 0.0, 999, 100)  # a decode over 1,000 cached tokens (prompt + its first output)
        r.num_generated, r.num_computed = 2, 1000
        items.append(BatchItem(r, 1, 1000))
    batch = Batch(items)
    cm.stage_cost(batch, 0)
    n = 2000
    calls = [t / n for t in _timed(lambda: [cm.stage_cost(batch, 0) for _ in range(n)], args.repeats)]
    print(f"roofline stage_cost, 128 decodes at 1,000 tokens: fastest {min(calls) * 1e6:.1f} us, median "
          f"{statistics.median(calls) * 1e6:.1f} us a call (target < 15 us)")


if __name__ == "__main__":
    main()
