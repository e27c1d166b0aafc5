"""Value types of the command-line flags: every number is checked at parse time, finite and within bounds.

A flag's value is refused by argparse with one line naming the flag (``argument --cv: expected ...``) when
it is not a number, not finite (nan, inf, 1e999), out of its range, or past a bound above which a run
would hang or exhaust memory. Each bound is a named constant; the flags share the parsers built here.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import Any

from sim.catalog.limits import (  # the bounds a deployment or model file has too, so that flags and files agree
    MAX_BATCH_SIZE,
    MAX_BLOCK_SIZE,
    MAX_CONTEXT,
    MAX_KV_BLOCKS,
    MAX_PARALLEL,
    MAX_REPLICAS,
)

#: largest seed (numpy's and the results files' 64-bit integers)
MAX_SEED = 2**63 - 1
#: requests a command generates or takes from a trace per run (-n)
MAX_REQUESTS = 10_000_000
#: any token count a flag gives (context length, budget, clip, prompt or context of a priced batch)
MAX_TOKENS = MAX_CONTEXT
#: requests one iteration batches (--max-batch) or one priced batch decodes
MAX_BATCH = MAX_BATCH_SIZE
#: GPUs per deployment a plan enumerates (--max-gpus; its 'max' replicas fill them)
MAX_GPUS = 1024
#: worker processes
MAX_JOBS = 512
#: seeds of a capacity search
MAX_SEEDS = 1000
#: seconds of arrivals per capacity point (a point simulates rate x seconds requests)
MAX_DURATION_S = 86_400.0
#: any other time in seconds a flag gives (SLO bounds, calibration budgets, think times)
MAX_SECONDS = 1e9
#: mean arrival rate, requests per second
MAX_QPS = 1e6
#: coefficient of variation of inter-arrival gaps (gamma shape 1/cv^2)
MAX_CV = 100.0
#: entries of a list a flag gives, and index-like counts of a trace transform
MAX_COUNT = 2**31 - 1


# ---- builders -------------------------------------------------------------------------------------------

def int_range(least: int, most: int) -> Callable[[str], int]:
    """A parser of integers in [least, most], refusing anything else with argparse's one-line message."""
    what = f"an integer from {least} to {most}"

    def parse(text: str) -> int:
        try:
            v = int(text) if text.isascii() else None  # int() would read Unicode digits such as '١٢'
        except ValueError:
            v = None
        if v is None or not least <= v <= most:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    parse.__name__ = "integer"
    return parse


def float_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[str], float]:
    """A parser of finite numbers between ``low`` and ``high`` (each bound included unless open)."""
    lo = f"> {low:g}" if low_open else f">= {low:g}"
    hi = f"< {high:g}" if high_open else f"<= {high:g}"
    what = f"a finite number {lo} and {hi}"

    def parse(text: str) -> float:
        try:
            v = float(text) if text.isascii() else math.nan
        except ValueError:
            v = math.nan
        ok = (math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return v
    parse.__name__ = "number"
    return parse


def int_list_in(least: int, most: int) -> Callable[[str], list[int]]:
    """A parser of comma-separated integers in [least, most], in the order given."""
    item = int_range(least, most)

    def parse(text: str) -> list[int]:
        parts = [x for x in text.split(",") if x.strip()]
        if not parts or len(parts) > 10_000:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers from {least} to {most}, got {text!r}")
        try:
            return [item(x) for x in parts]
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers from {least} to {most}, "
                                             f"got {text!r}") from None
    return parse


def float_list_in(low: float, high: float) -> Callable[[str], tuple[float, ...]]:
    """A parser of comma-separated finite numbers in (low, high]."""
    item = float_range(low, high, low_open=True)

    def parse(text: str) -> tuple[float, ...]:
        parts = [x for x in text.split(",") if x.strip()]
        try:
            if not parts or len(parts) > 10_000:
                raise argparse.ArgumentTypeError("")
            return tuple(item(x) for x in parts)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected comma-separated finite numbers > {low:g} and <= {high:g}, "
                                             f"got {text!r}") from None
    return parse


def seconds_or(keywords: dict[str, Any], what: str) -> Callable[[str], Any]:
    """A parser of finite seconds > 0 (at most MAX_SECONDS), or one of ``keywords`` (mapped to its value)."""
    seconds = float_range(0.0, MAX_SECONDS, low_open=True)

    def parse(text: str) -> Any:
        key = text.strip().lower()
        if key in keywords:
            return keywords[key]
        try:
            return seconds(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    return parse


def name_list(text: str) -> list[str]:
    """A non-empty comma-separated list of names."""
    values = [x.strip() for x in text.split(",") if x.strip()]
    if not values:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
    return values


# ---- the shared value types -------------------------------------------------------------------------------

#: an integer >= 0 (counts where 0 means all)
nonneg_int = int_range(0, MAX_COUNT)
#: an integer >= 1
positive_int = int_range(1, MAX_COUNT)
#: a finite number >= 0
nonneg_float = float_range(0.0, MAX_SECONDS)
#: comma-separated integers >= 1, in the order given
int_list = int_list_in(1, MAX_COUNT)
#: comma-separated finite numbers > 0
float_list = float_list_in(0.0, MAX_SECONDS)

#: a random seed, 0 to 2^63 - 1
seed_value = int_range(0, MAX_SEED)
request_count = int_range(1, MAX_REQUESTS)
token_count = int_range(1, MAX_TOKENS)
#: a clip of prompt + output: one token of each at least
total_tokens = int_range(2, MAX_TOKENS)
#: a tensor-, pipeline- or expert-parallel degree
parallel_degree = int_range(1, MAX_PARALLEL)
replica_count = int_range(1, MAX_REPLICAS)
gpu_count = int_range(1, MAX_GPUS)
batch_size = int_range(1, MAX_BATCH)
#: KV blocks per replica
block_count = int_range(1, MAX_KV_BLOCKS)
block_size = int_range(1, MAX_BLOCK_SIZE)
job_count = int_range(1, MAX_JOBS)
seed_count = int_range(1, MAX_SEEDS)
#: a fraction in (0, 1] (memory utilisation, a share of requests)
fraction = float_range(0.0, 1.0, low_open=True)
#: a fraction in [0, 1) (blocks kept free)
free_fraction = float_range(0.0, 1.0, high_open=True)
#: a mean arrival rate in requests per second
rate = float_range(0.0, MAX_QPS, low_open=True)
#: the coefficient of variation of gamma arrival gaps
gap_cv = float_range(0.0, MAX_CV, low_open=True)
#: seconds of arrivals per capacity point (0: just the requests of -n)
duration = float_range(0.0, MAX_DURATION_S)
#: a finite time in seconds > 0
positive_seconds = float_range(0.0, MAX_SECONDS, low_open=True)
#: a finite time budget in seconds >= 0 (0: stop at the first check, keeping what is done)
budget_seconds = float_range(0.0, MAX_SECONDS)
