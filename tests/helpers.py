"""Small builders shared by the tests: requests, schedulers and a constant-cost run."""

from __future__ import annotations

from sim.cost.constant import ConstantCostModel
from sim.kv.block_manager import BlockManager
from sim.kv.prefix_cache import CachingBlockManager
from sim.request import Request
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.serving.cluster import run_cluster


def make_requests(spec: list[tuple[float, int, int]]) -> list[Request]:
    """Requests named A, B, C, ... from (arrival, prompt, output) tuples."""
    return [Request(chr(ord("A") + i) if len(spec) <= 26 else str(i), a, p, o, index=i)
            for i, (a, p, o) in enumerate(spec)]


def run_constant(spec, scheduler: str, *, budget=None, max_batch=128, blocks=1000, block_size=16,
                 iteration_time=1.0, host=0.0, pp=1, replicas=1, watermark=0.01, chunk_align=0, hook=None,
                 caching=False, router="round_robin", replica_cls=None):
    """Simulate ``spec`` with a constant-time cost model; returns (requests, compositions, recorder, schedulers)."""
    reqs = make_requests(spec) if spec and isinstance(spec[0], tuple) else spec
    cfg = SchedulerConfig(max_batch, budget, chunk_align)
    manager = CachingBlockManager if caching else BlockManager
    scheds = [make_scheduler(scheduler, cfg, manager(blocks, block_size, watermark)) for _ in range(replicas)]
    compositions: list[tuple] = []
    for s in scheds:
        orig = s.schedule

        def logged(now=0.0, _orig=orig, s=s):
            b = _orig(now)
            if b is not None:
                compositions.append((now, b.composition()))
                if hook is not None:
                    hook(s, b)
            return b
        s.schedule = logged
    rec = run_cluster(reqs, scheds, ConstantCostModel(iteration_time, host=host, num_stages=pp), pp, router,
                      replica_cls=replica_cls)
    return reqs, compositions, rec, scheds


def sim_compositions(monkeypatch, trace, config, cost_model):
    """Run ``sim.simulate`` and record each batch composition the (shared) scheduler produced."""
    from sim.schedulers import Scheduler
    from sim.serving.simulator import simulate

    comps: list[tuple] = []
    orig = Scheduler.schedule

    def logged(self, now=0.0):
        b = orig(self, now)
        if b is not None:
            comps.append(b.composition())
        return b

    with monkeypatch.context() as m:
        m.setattr(Scheduler, "schedule", logged)
        result = simulate(trace, config, cost_model=cost_model)
    return comps, result
