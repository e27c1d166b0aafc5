"""The cold start after idling: a profile's wake table, priced by the simulator on the first iteration after idle."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from calibration.validate.errors import idle_before
from sim.cost.constant import ConstantCostModel
from sim.cost.profile_format import ProfileError, read_profile
from sim.cost.wake import WakeTable
from sim.kv.block_manager import BlockManager
from sim.schedulers import SchedulerConfig, make_scheduler
from sim.serving.cluster import run_cluster
from tests.helpers import make_requests
from tests.paths import TINY_CPU_PROFILE


class ColdConstant(ConstantCostModel):
    """Constant times, and a fixed cold start after any idle gap: late 0.1 s, host +0.2 s, device +0.3 s."""

    def wake_time(self, idle_s: float) -> tuple[float, float, float]:
        return (0.1, 0.2, 0.3) if idle_s > 0 else (0.0, 0.0, 0.0)


def _run(cost, spec):
    reqs = make_requests(spec)
    sched = make_scheduler("orca", SchedulerConfig(8, None, 0), BlockManager(100, 16, 0.0))
    run_cluster(reqs, [sched], cost, 1)
    return reqs


def test_the_first_iteration_after_idle_pays_the_cold_start_exactly():
    # A at t=1 finds the replica idle: scheduled 0.1 s late, its prefill 1 + 0.2 (host) + 0.3 (device) s;
    # its decode follows back to back (1 s); B at t=10 finds it idle again and pays the same.
    a, b = _run(ColdConstant(iteration_time=1.0), [(1.0, 16, 2), (10.0, 16, 1)])
    assert a.first_scheduled_time == pytest.approx(1.1)
    assert a.token_times == pytest.approx([1.1 + 1.5, 1.1 + 1.5 + 1.0])
    assert b.first_scheduled_time == pytest.approx(10.1) and b.token_times == pytest.approx([10.1 + 1.5])
    plain = _run(ConstantCostModel(iteration_time=1.0), [(1.0, 16, 2), (10.0, 16, 1)])
    assert plain[0].token_times == pytest.approx([2.0, 3.0]) and plain[1].token_times == pytest.approx([11.0])


def test_a_wake_table_interpolates_monotone_from_zero_and_holds_beyond():
    w = WakeTable({"idle_s": [0.01, 0.1], "latency_s": [1e-4, 3e-4], "host_extra_s": [2e-4, 1e-3],
                   "device_extra_s": [3e-4, 2e-3]})
    assert w(0.0) == (0.0, 0.0, 0.0)
    assert w(0.005) == pytest.approx((0.5e-4, 1e-4, 1.5e-4))
    assert w(0.1) == pytest.approx((3e-4, 1e-3, 2e-3)) and w(5.0) == w(0.1)


def test_a_malformed_wake_table_is_refused_with_the_field(tmp_path):
    dest = tmp_path / "p"
    shutil.copytree(TINY_CPU_PROFILE, dest)
    meta = json.loads((dest / "profile.json").read_text())
    meta["wake"] = {"idle_s": [0.01], "host_extra_s": [1e-3, 2e-3], "device_extra_s": [1e-3]}
    (dest / "profile.json").write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match="field wake must hold equal, non-empty lists"):
        read_profile(dest)


def test_the_shipped_cpu_profile_prices_a_cold_start():
    from sim.cost.profiled import ProfiledCostModel
    cost = ProfiledCostModel(TINY_CPU_PROFILE, "tiny")
    late, host, device = cost.wake_time(0.1)
    assert 0 < late < 0.01 and 0 < host < 0.02 and 0 < device < 0.02
    assert cost.wake_time(0.0) == (0.0, 0.0, 0.0)
    assert "calibrat" in cost.describe()["wake"]["command"]  # servesim calibrate, or python -m calibration.wake_bench


def test_idle_before_a_batch_is_the_gap_less_its_host_part():
    m = pd.DataFrame({"batch_id": [0, 1, 2], "start": [0.0, 1.0, 1.25], "end": [0.5, 1.2, 1.5],
                      "host_s": [0.0, 0.1, 0.05]})
    assert idle_before(m) == pytest.approx({0: 0.0, 1: 0.4, 2: 0.0})


def test_wrapping_cost_models_keep_the_cold_start():
    """The capacity search's early-stop wrapper and validation's recorder price exactly as the model they wrap."""
    from calibration.validate.errors import RecordingCost
    from sim.capacity.point import _WatchedCost
    inner = ColdConstant(iteration_time=1.0)
    for wrapped in (_WatchedCost(inner, watch=None), RecordingCost(inner)):
        assert wrapped.wake_time(0.5) == (0.1, 0.2, 0.3) and wrapped.name == inner.name
    a, b = _run(RecordingCost(inner), [(1.0, 16, 2), (10.0, 16, 1)])
    assert a.token_times == pytest.approx([2.6, 3.6]) and b.token_times == pytest.approx([11.6])
