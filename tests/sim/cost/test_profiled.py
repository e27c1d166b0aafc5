"""The profiled cost model on synthetic profiles with known timings (no torch needed)."""

from __future__ import annotations

import pytest

from calibration.grid import QUICK, Point
from sim.batch import Batch, BatchItem
from sim.catalog.hardware import get_gpu
from sim.cost.profile_format import read_profile
from sim.cost.profiled import EDGE, PROFILE, ROOFLINE, TRANSFER, ProfiledCostModel, for_simulation
from sim.cost.roofline import RooflineCostModel
from sim.request import Request
from sim.serving.simulator import SimConfig
from tests.profile_fixtures import roofline_times, synthetic_profile


def decodes(contexts: list[int], start: int = 0) -> list[BatchItem]:
    """Decode items whose requests hold ``ctx`` keys each (their new token included)."""
    out = []
    for i, ctx in enumerate(contexts):
        r = Request(f"d{start + i}", 0.0, ctx - 1, 100)
        r.num_generated, r.num_computed = 1, ctx - 1
        out.append(BatchItem(r, 1, ctx - 1))
    return out


def prefill(chunk: int, cached: int, name: str = "p") -> BatchItem:
    return BatchItem(Request(name, 0.0, chunk + cached, 10), chunk, cached)


@pytest.fixture(scope="module")
def tiny_h100(tmp_path_factory):
    return read_profile(synthetic_profile(tmp_path_factory.mktemp("p") / "tiny", "tiny", factor=1.25))


def test_grid_points_give_the_measured_times(tiny_h100):
    cm = ProfiledCostModel(tiny_h100, "tiny")
    t = tiny_h100.table
    for T in (1, 16, 64, 65, 257, 2048):
        ops = cm.token_op_times(T, 1)
        for op in ("qkv_proj", "act", "input_norm", "embedding"):
            row = t[(t["op"] == op) & (t["tokens"] == T)]
            assert ops[op] == (row["median_s"].iloc[0], PROFILE)
    for N in (1, 64, 128):
        row = t[(t["op"] == "lm_head") & (t["seqs"] == N)]
        assert cm.token_op_times(N, N)["lm_head"][0] == row["median_s"].iloc[0]
    assert cm.token_op_times(16, 1)["tp_all_reduce"] == (0.0, ROOFLINE)


def test_decode_batch_on_the_grid_equals_the_profile_and_breakdown_sums(tiny_h100):
    """Every row is 1.25 x the H100 roofline, so a batch on grid points costs 1.25 x the roofline's stage cost."""
    cm = ProfiledCostModel(tiny_h100, "tiny", fitted=False)  # the datasheet roofline the fixture was made with
    rl = RooflineCostModel("tiny", "h100-sxm", fitted=False)
    b = Batch(decodes([512] * 16))
    over = cm.breakdown(b, 0)
    overhead = over["layer_overhead"] + over["forward_overhead"]
    # the synthetic unit rows are their ops' roofline sum: the fitted framework overhead is (nearly) nil
    assert 0.0 <= overhead < 0.02 * cm.stage_cost(b, 0).time
    assert cm.stage_cost(b, 0).time - overhead == pytest.approx(1.25 * rl.stage_cost(b, 0).time, rel=1e-5)
    assert cm.stage_cost(b, 0).flops == pytest.approx(rl.stage_cost(b, 0).flops)
    assert sum(cm.breakdown(b, 0).values()) == pytest.approx(cm.stage_cost(b, 0).time, rel=1e-12)
    src = cm.breakdown_sources(b, 0)
    assert src["qkv_proj"] == src["attn_decode"] == src["host_overhead"] == PROFILE
    assert src["tp_all_reduce"] == ROOFLINE
    assert cm.host_time(b) == pytest.approx(1.25 * rl.host_time(b), rel=1e-5)


def test_outside_the_grid_the_roofline_is_scaled_to_agree_at_the_edge(tiny_h100):
    cm = ProfiledCostModel(tiny_h100, "tiny", fitted=False)
    ref = roofline_times(cm.model, "h100-sxm", 1.25)
    top = QUICK.max_tokens
    for T in (3 * top, 10 * top):
        t, src = cm.token_op_times(T, 1)["gate_up_proj"]
        assert src == EDGE
        edge = ref(Point("gate_up_proj", 1, top, 0, 0))
        assert t / edge == pytest.approx(ref(Point("gate_up_proj", 1, T, 0, 0)) / edge, rel=1e-5)
    b = Batch(decodes([1024] * 200))  # batch 200 is beyond the decode grid (64): roofline scaled at the edge
    assert cm.breakdown_sources(b, 0)["attn_decode"] == EDGE
    roof = RooflineCostModel("tiny", "h100", fitted=False).attn_decode_cost(200, 200 * 1024)[0]
    assert cm.attn_decode(200, 200 * 1024)[0] == pytest.approx(1.25 * roof, rel=1e-5)


def test_prefill_chunks_share_one_call_and_padded_backends_pay_for_the_longest(tmp_path):
    flex = ProfiledCostModel(synthetic_profile(tmp_path / "flex", "tiny", backend="flex"), "tiny")
    one = flex.attn_prefill(Batch([prefill(64, 256)]))[0]
    two = flex.attn_prefill(Batch([prefill(16, 0, "a")]))[0]
    both = flex.attn_prefill(Batch([prefill(64, 256, "x"), prefill(16, 0, "y")]))[0]
    assert one == pytest.approx(flex._prefill(64, 256))  # a single chunk is exactly its table time
    assert both == pytest.approx(one + two - flex._prefill_floor)
    sdpa = ProfiledCostModel(synthetic_profile(tmp_path / "sdpa", "tiny", backend="sdpa"), "tiny")
    assert sdpa.padded and not flex.padded
    padded = sdpa.attn_prefill(Batch([prefill(64, 256, "x"), prefill(16, 0, "y")]))[0]
    longest = sdpa._prefill(64, 256)
    assert padded == pytest.approx(sdpa._prefill_floor + 2 * (longest - sdpa._prefill_floor))
    mixed = Batch(decodes([16, 1024, 128, 128]))
    assert flex.breakdown(mixed, 0)["attn_decode"] == pytest.approx(2 * flex._decode(4, mixed.decode_context / 4))
    assert sdpa.breakdown(mixed, 0)["attn_decode"] == pytest.approx(2 * sdpa._decode(4, 1024))


def test_tensor_and_pipeline_parallel_communication(tmp_path):
    prof = synthetic_profile(tmp_path / "tp", "tiny", tps=(1, 2))
    cm = ProfiledCostModel(prof, "tiny", tp=2, pp=2)
    rl = RooflineCostModel("tiny", "h100-sxm", tp=2, pp=2)
    ops = cm.token_op_times(64, 4)
    assert ops["tp_all_reduce"] == (rl.token_op_costs(64, 4)["tp_all_reduce"][0], ROOFLINE)
    assert ops["tp_all_reduce"][0] > 0
    assert ops["embedding"][1] == PROFILE + "+comm"  # the engine's lookup plus the roofline's all-reduce
    b = Batch(decodes([128] * 4))
    s0, s1 = cm.breakdown(b, 0), cm.breakdown(b, 1)
    assert s0["pp_send_recv"] > 0 and s1["pp_send_recv"] == 0
    assert s0["lm_head"] == 0 and s1["lm_head"] > 0 and s0["embedding"] > 0 and s1["embedding"] == 0
    for stage, bd in ((0, s0), (1, s1)):
        assert sum(bd.values()) == pytest.approx(cm.stage_cost(b, stage).time, rel=1e-12)


def test_transfer_scales_each_op_by_the_roofline_ratio(tmp_path):
    """An H100 profile used for an A100: every op becomes 1.25 x the A100 roofline, compute-bound ops
    moving with FLOP/s and memory-bound ones with bandwidth; the model says it is an estimate."""
    prof = read_profile(synthetic_profile(tmp_path / "h100", "llama-2-7b", factor=1.25))
    here = ProfiledCostModel(prof, "llama-2-7b", fitted=False)  # datasheet rooflines: FLOP/s and bandwidth ratios
    there = ProfiledCostModel(prof, "llama-2-7b", gpu="a100-80gb", fitted=False)
    a100 = RooflineCostModel("llama-2-7b", "a100-80gb", fitted=False)
    b = Batch(decodes([512] * 16))
    assert there.stage_cost(b, 0).time == pytest.approx(1.25 * a100.stage_cost(b, 0).time, rel=1e-5)
    h, a = get_gpu("h100-sxm"), get_gpu("a100-80gb")
    big = there.token_op_times(2048, 1)["gate_up_proj"][0] / here.token_op_times(2048, 1)["gate_up_proj"][0]
    assert big == pytest.approx(h.bf16_flops / a.bf16_flops, rel=0.01)  # compute-bound GEMM
    stream = there.token_op_times(2048, 1)["act"][0] / here.token_op_times(2048, 1)["act"][0]
    assert stream == pytest.approx(h.mem_bandwidth / a.mem_bandwidth, rel=0.02)  # memory-bound
    assert there.host_time(b) == here.host_time(b)  # CPU time is not scaled
    assert there.breakdown_sources(b, 0)["qkv_proj"] == PROFILE + TRANSFER
    d = there.describe()
    assert d["estimate"] is True and d["transfer"]["from"] == "h100-sxm" and d["transfer"]["to"] == "a100-80gb"
    assert "estimate" in there.transfer_note()
    assert here.describe()["estimate"] is False and here.transfer_note() is None


def test_cpu_profile_uses_its_fitted_rates_and_its_own_device(tmp_path):
    """A CPU profile prices and plans memory for the measured device itself, never the default A100 (issue 17)."""
    from sim.catalog.hardware import GPUS, get_gpu
    prof = synthetic_profile(tmp_path / "cpu", "tiny", gpu=None, dtype_bytes=4)
    cm = ProfiledCostModel(prof, "tiny")
    assert cm.gpu.name.startswith("measured:") and not cm.transfer
    assert cm.stage_cost(Batch(decodes([100] * 3)), 0).time > 0
    cfg, cm2 = for_simulation(prof, SimConfig(model="tiny"), None)
    assert cfg.gpu == cm.gpu.name and not cm2.transfer
    assert get_gpu(cfg.gpu) == cm.gpu and cfg.gpu not in GPUS  # findable, not listed in the catalogue


def test_for_simulation_takes_the_profiles_gpu_unless_told(tiny_h100):
    cfg, cm = for_simulation(tiny_h100.path, SimConfig(model="tiny"), None)
    assert cfg.gpu == "h100-sxm" and not cm.transfer
    cfg, cm = for_simulation(tiny_h100.path, SimConfig(model="tiny", gpu="a100-80gb"), "a100-80gb")
    assert cfg.gpu == "a100-80gb" and cm.transfer
