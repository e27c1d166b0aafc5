"""A constant-cost run with speculative decoding on (the spec tests' shared builder)."""

from __future__ import annotations

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.serving.cluster import run_cluster
from sim.spec import SpecDecoding, parse_speculative_config
from tests.helpers import make_requests


def run_spec(spec, method="mtp", k=3, acceptance="1.0", *, budget=None, blocks=1000, block_size=16, seed=0,
             max_model_len=None, cost=None):
    """Simulate ``spec`` (arrival, prompt, output) on vllm_v1 with speculation (None: off), 1 s iterations;
    returns (requests, compositions, scheduler)."""
    reqs = make_requests(spec)
    sched = make_scheduler("vllm_v1", SchedulerConfig(128, budget), BlockManager(blocks, block_size, 0.0))
    if method is not None:
        cfg = parse_speculative_config(f'{{"method": "{method}", "num_speculative_tokens": {k}}}', acceptance)
        sched.enable_speculation(SpecDecoding(cfg, seed, max_model_len))
    comps: list[tuple] = []
    used: list[int] = []
    orig = sched.schedule

    def logged(now=0.0):
        b = orig(now)
        if b is not None:
            comps.append((now, b.composition()))
            used.append(sched.bm.num_used)
        return b
    sched.schedule = logged
    run_cluster(reqs, [sched], cost or ConstantCostModel(1.0), 1, "round_robin")
    sched.used_log = used
    return reqs, comps, sched
