"""A mixture of experts calibrated on the CPU (tiny-moe, quick grid, one round), priced from its profile and
validated against the engine: the MoE ops timed and priced on MoE layers, no dense MLP anywhere."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from calibration import profiler  # noqa: E402
from calibration.grid import QUICK, plan  # noqa: E402
from sim.batch import Batch, BatchItem  # noqa: E402
from sim.catalog.models import get_model  # noqa: E402
from sim.cost.profile_format import ProfileError, read_profile  # noqa: E402
from sim.cost.profiled import PROFILE, ROOFLINE, ProfiledCostModel  # noqa: E402
from sim.ops import DENSE_MLP_OPS  # noqa: E402
from sim.request import Request  # noqa: E402
from sim.workload.generator import generate_trace  # noqa: E402


@pytest.fixture(scope="module")
def moe_profile(tmp_path_factory):
    out = tmp_path_factory.mktemp("moe") / "tiny-moe-cpu"
    cfg = profiler.calibration_config("tiny-moe", [1], out, quick=True, device="cpu", rounds=1, progress=False)
    t0 = time.perf_counter()
    assert profiler.calibrate(cfg, log=lambda s: None).complete
    return read_profile(out), time.perf_counter() - t0


def test_quick_moe_calibration_times_the_moe_ops_and_prices_moe_layers(moe_profile, capsys):
    prof, wall = moe_profile
    t = prof.table
    assert len(t) == len(plan(get_model("tiny-moe"), [1], QUICK))
    assert {"moe_router", "moe_experts", "layer_forward", "forward"} <= set(t["op"])
    assert not set(t["op"]) & {*DENSE_MLP_OPS, "moe_shared", "forward_graph"}  # no dense layer, no shared experts
    assert prof.meta["model"]["moe"]["num_experts"] == 4 and prof.meta["decode_path"] == "eager"
    experts = t[t["op"] == "moe_experts"].set_index("tokens")["median_s"]
    router = t[t["op"] == "moe_router"].set_index("tokens")["median_s"]
    with capsys.disabled():
        print(f"\ntiny-moe quick CPU calibration: {wall:.1f} s; moe_experts at 1/64/256/2048 tokens: "
              + ", ".join(f"{experts[n] * 1e6:.0f}" for n in (1, 64, 256, 2048)) + " us; moe_router: "
              + ", ".join(f"{router[n] * 1e6:.0f}" for n in (1, 64, 256, 2048)) + " us")
    assert experts[2048] > experts[64] > router[64]  # four expert MLPs cost more than the router's GEMM

    cm = ProfiledCostModel(prof, "tiny-moe")
    b = Batch([BatchItem(Request("p", 0.0, 100, 4), 64, 0)])
    ops, src, one = cm.breakdown(b, 0), cm.breakdown_sources(b, 0), cm.token_op_times(64, 1)
    for op, row in (("moe_experts", experts[64]), ("moe_router", router[64])):  # both layers are sparse
        assert ops[op] == pytest.approx(2 * one[op][0], rel=1e-12) and src[op] == PROFILE
        # the measured rows through the monotone (isotonic) table: its value at 64 tokens lies between the
        # smallest row at or above 64 and the largest at or below, however noisy the rows (exact, any load)
        rows = t[t["op"] == op].set_index("tokens")["median_s"]
        assert rows[rows.index >= 64].min() * (1 - 1e-9) <= one[op][0] <= rows[rows.index <= 64].max() * (1 + 1e-9)
    assert all(ops[op] == 0.0 and src[op] == ROOFLINE for op in (*DENSE_MLP_OPS, "moe_shared", "ep_dispatch"))
    assert sum(ops.values()) == pytest.approx(cm.stage_cost(b, 0).time, rel=1e-12)
    with pytest.raises(ProfileError, match="moe"):
        ProfiledCostModel(prof, "tiny")  # same dense shapes, but no dense MLP was measured


def test_moe_engine_validates_against_its_profile(moe_profile, tmp_path):
    """Offline the engine and the simulator form identical batches; each engine batch has a finite prediction."""
    from calibration.validate.config import ValidateConfig
    from calibration.validate.run import validate

    prof, _ = moe_profile
    trace = generate_trace(12, arrival="poisson", qps=20, prompt_len="uniform:16:128", output_len="uniform:8:32",
                           seed=0)
    res = validate(trace, ValidateConfig(model="tiny-moe", device="cpu", dtype="float32", backend="sdpa",
                                         timeline=False, offline=True, plots=False, op_check=2, warmup=2,
                                         schedulers=("sarathi",), token_budgets={"sarathi": 64}), prof.path,
                   out=tmp_path)
    run = res.runs[0]
    assert run.composition["identical"] and run.composition["engine_batches"] > 10
    err = run.batch_error["total"]
    # a band for a model off by a large factor, not for this shared machine's speed (test_validate.SANE_FACTOR)
    assert err["count"] == run.composition["engine_batches"] and 0.1 < 1 + err["median"] < 10
    assert (tmp_path / "report.md").is_file()
