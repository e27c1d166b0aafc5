"""The profiled cost model for mixtures of experts, on synthetic profiles with known timings (no torch needed):
MoE ops on MoE layers, the dense MLP on dense layers, and a profile that holds exactly the ops its model runs."""

from __future__ import annotations

import dataclasses

import pytest

from calibration.grid import QUICK, plan
from sim.batch import Batch
from sim.catalog.models import get_model
from sim.catalog.variants import MoESpec
from sim.cost.profile_format import ProfileError, model_ops, profile_model, read_profile
from sim.cost.profiled import PROFILE, ROOFLINE, ProfiledCostModel, for_simulation
from sim.cost.roofline import RooflineCostModel
from sim.ops import ALL_OPS, DENSE_MLP_OPS, GRAPH_TIMINGS, MOE_OPS, UNIT_TIMINGS
from sim.serving.simulator import SimConfig
from tests.profile_fixtures import synthetic_profile
from tests.sim.cost.test_profiled import decodes, prefill

# DeepSeek's layout at tiny size: a dense first layer, then sparse layers with shared experts
MIXED = dataclasses.replace(get_model("tiny"), name="tiny-moe-mixed", num_layers=3,
                            moe=MoESpec(num_experts=4, top_k=2, expert_intermediate_size=32,
                                        shared_intermediate_size=48, first_dense_layers=1))


@pytest.fixture(scope="module")
def mixed_h100(tmp_path_factory):
    return read_profile(synthetic_profile(tmp_path_factory.mktemp("p") / "mixed", MIXED, factor=1.25))


def test_a_profile_plans_exactly_the_ops_its_model_runs():
    tiny, moe = get_model("tiny"), get_model("tiny-moe")
    assert model_ops(tiny) == tuple(op for op in ALL_OPS if op not in MOE_OPS)
    assert set(model_ops(moe)) == set(ALL_OPS) - set(DENSE_MLP_OPS) - {"moe_shared"}  # every layer sparse
    assert set(model_ops(MIXED)) == set(ALL_OPS)
    pts = plan(moe, [1, 2], QUICK, graphs=True)
    ops = {p.op for p in pts}
    assert {"moe_router", "moe_experts"} <= ops and not ops & {*DENSE_MLP_OPS, "moe_shared", *GRAPH_TIMINGS}
    assert ops >= set(UNIT_TIMINGS) and not ops & {"ep_dispatch", "ep_combine"}  # communication: the roofline's
    assert {p.tp for p in pts if p.op == "moe_router"} == {0}  # every rank routes every token: TP-independent
    assert {p.tp for p in pts if p.op == "moe_experts"} == {1, 2}  # expert widths split by TP
    assert [p for p in plan(tiny, [1], QUICK) if p.op in MOE_OPS] == []
    with pytest.raises(ValueError, match="tiny-moe does not run op.*gate_up_proj"):
        plan(moe, [1], QUICK, ops=("gate_up_proj",))
    with pytest.raises(ValueError, match="multi-head latent attention"):
        plan(get_model("deepseek-v3"), [8], QUICK)


@pytest.mark.parametrize("pp", [1, 2])
def test_moe_layers_priced_with_moe_ops_and_dense_layers_with_the_dense_mlp(mixed_h100, pp):
    """Every row is 1.25 x the H100 roofline, so on grid points each op's stage total is 1.25 x the roofline's:
    the MoE ops counted on the stage's MoE layers, the dense MLP on its dense one (stage 0 only with PP 2)."""
    cm = ProfiledCostModel(mixed_h100, MIXED, pp=pp, fitted=False)
    rl = RooflineCostModel(MIXED, "h100-sxm", pp=pp, fitted=False)
    b = Batch(decodes([128] * 16) + [prefill(48, 0)])  # 64 tokens: a grid point
    for stage in range(pp):
        dense, sparse = MIXED.stage_layer_kinds(stage, pp)
        got, want, src = cm.breakdown(b, stage), rl.breakdown(b, stage), cm.breakdown_sources(b, stage)
        for op in DENSE_MLP_OPS + ("moe_router", "moe_experts", "moe_shared", "qkv_proj"):
            assert got[op] == pytest.approx(1.25 * want[op], rel=1e-5), (stage, op)  # 6 digits in the CSV
            assert src[op] == PROFILE  # measured (on a stage without dense layers: zero layers of it)
        one = cm.token_op_times(64, len(b.items))  # one layer's prices
        assert got["moe_experts"] == pytest.approx(sparse * one["moe_experts"][0], rel=1e-12)
        assert got["gate_up_proj"] == pytest.approx(dense * one["gate_up_proj"][0], rel=1e-12)
        assert (got["gate_up_proj"] > 0) == (dense > 0) and got["moe_experts"] > 0
        assert got["ep_dispatch"] == got["ep_combine"] == 0.0 and src["ep_dispatch"] == ROOFLINE  # no EP: zero
        assert sum(got.values()) == pytest.approx(cm.stage_cost(b, stage).time, rel=1e-12)
        assert cm.stage_cost(b, stage).flops == pytest.approx(rl.stage_cost(b, stage).flops)
    assert cm.describe()["moe_layers_per_stage"] == [MIXED.stage_layer_kinds(s, pp)[1] for s in range(pp)]


def test_unit_rows_of_moe_layers_leave_no_framework_overhead(mixed_h100):
    """The synthetic unit rows are their ops' roofline sum, layers of both kinds averaged as the engine's
    layer_forward rows are: the fit finds (nearly) no overhead, so calibration and pricing count layers alike."""
    cm = ProfiledCostModel(mixed_h100, MIXED, fitted=False)
    b = Batch(decodes([512] * 16), num_decodes=16)
    over = cm.breakdown(b, 0)
    assert 0.0 <= over["layer_overhead"] + over["forward_overhead"] < 0.02 * cm.stage_cost(b, 0).time
    # within the interpolation's own 1-2% (a dense profile's too); pricing every layer as sparse misses by 13%
    assert cm.overhead_fit["layer_fit_median_abs_error"] < 0.03
    assert cm.overhead_fit["forward_fit_median_abs_error"] < 0.03


def test_profiles_serve_only_models_of_their_kind(mixed_h100, tmp_path):
    assert profile_model(mixed_h100).moe == MIXED.moe and mixed_h100.missing_ops(1) == []
    dense = dataclasses.replace(MIXED, moe=None)
    with pytest.raises(ProfileError, match="moe .* vs None"):
        ProfiledCostModel(mixed_h100, dense)
    tiny = read_profile(synthetic_profile(tmp_path / "tiny", "tiny"))
    assert tiny.missing_ops(1) == [] and "moe" not in tiny.meta["model"]  # a dense profile.json is unchanged
    with pytest.raises(ProfileError, match="moe None .* vs \\{"):
        ProfiledCostModel(tiny, "tiny-moe")  # same dense shapes, but the tiny profile has no MoE ops
    f = mixed_h100.path / "measurements.csv"
    text = f.read_text()
    try:
        f.write_text("\n".join(line for line in text.splitlines() if not line.startswith("moe_experts,")) + "\n")
        with pytest.raises(ProfileError, match=r"no measurements for op\(s\) moe_experts at TP 1"):
            ProfiledCostModel(f.parent, MIXED)
    finally:
        f.write_text(text)


def test_expert_parallelism_and_routing_skew_are_refused_with_a_profile(mixed_h100):
    for kw in ({"tp": 1, "ep": 2}, {"router_skew": 0.5}):
        with pytest.raises(ProfileError, match="price --ep or --router-skew with the roofline"):
            for_simulation(mixed_h100.path, SimConfig(model="tiny-moe", **kw), None)
