"""How noisy is CPU validation here? The machine's speed over time, and the spread of repeated validations.

Prints two measurements:
1. a fixed 256x256 float32 matmul (one thread) timed every ~25 ms for ``--probe-s`` seconds:
   the share of samples within 10% of the fastest decile and above 1.25x / 1.5x of it
   (a quiet machine has nearly all samples near the floor);
2. ``servesim validate`` of the tiny model (the test suite's trace: 40 requests at 50 req/s)
   with ``--repeats`` engine runs per scheduler: every run's median batch-level error.

    python benchmarks/validate_noise.py --probe-s 20 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def probe_trace(seconds: float) -> list[float]:
    """Median of 10 matmul timings (microseconds), every ~25 ms for ``seconds``."""
    import torch
    torch.set_num_threads(1)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    for _ in range(50):
        a @ b
    out: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ts = []
        for _ in range(10):
            s = time.perf_counter()
            a @ b
            ts.append(time.perf_counter() - s)
        out.append(statistics.median(ts) * 1e6)
        time.sleep(0.02)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--probe-s", type=float, default=20.0, help="seconds of the matmul speed trace")
    ap.add_argument("--repeats", type=int, default=5, help="engine runs per scheduler")
    ap.add_argument("--profile", default=str(ROOT / "calibration" / "profiles" / "tiny-cpu"))
    args = ap.parse_args()

    samples = probe_trace(args.probe_s)
    floor = sorted(samples)[len(samples) // 10]
    near = sum(x <= 1.1 * floor for x in samples) / len(samples)
    slow = sum(x > 1.25 * floor for x in samples) / len(samples)
    slower = sum(x > 1.5 * floor for x in samples) / len(samples)
    print(f"matmul probe: {len(samples)} samples over {args.probe_s:g} s, fastest decile {floor:.0f} us, "
          f"median {statistics.median(samples):.0f} us; within 10% of it {near:.0%}, above 1.25x {slow:.0%}, "
          f"above 1.5x {slower:.0%}")

    from calibration.validate.config import ValidateConfig
    from calibration.validate.run import validate
    from sim.workload.generator import generate_trace
    trace = generate_trace(40, arrival="poisson", qps=50, prompt_len="uniform:16:200", output_len="uniform:8:48",
                           seed=0)
    cfg = ValidateConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", timeline=False, plots=False,
                         op_check=0, warmup=10, repeats=args.repeats)
    t0 = time.perf_counter()
    res = validate(trace, cfg, args.profile)
    print(f"validate, {args.repeats} engine runs per scheduler ({time.perf_counter() - t0:.0f} s):")
    for r in res.runs:
        meds = [x["median_error"] for x in r.repeats]
        within = sum(abs(m) < 0.25 for m in meds)
        print(f"  {r.scheduler:8s} median batch-level error per run: "
              + ", ".join(f"{m:+.1%}" for m in meds)
              + f"; reported (median run) {r.batch_error['total']['median']:+.1%}; {within}/{len(meds)} runs within 25%")


if __name__ == "__main__":
    main()
