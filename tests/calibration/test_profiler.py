"""The profiler on CPU with the tiny model: a quick calibration end to end, resuming, budgets, one op implementation."""

from __future__ import annotations

import time

import pytest

torch = pytest.importorskip("torch")

from calibration import profiler  # noqa: E402
from calibration.grid import QUICK, Point, plan  # noqa: E402
from calibration.op_bench import OpBench  # noqa: E402
from calibration.timing import TimingSettings, rotation_copies, time_call  # noqa: E402
from engine import ops as engine_ops  # noqa: E402
from sim.catalog.hardware import gpu_for_device_name as catalogue_gpu  # noqa: E402
from sim.catalog.models import get_model  # noqa: E402
from sim.cli.main import main  # noqa: E402
from sim.cost.profile_format import ProfileError, read_measurements, read_profile  # noqa: E402
from sim.cost.profiled import ProfiledCostModel  # noqa: E402

CPU = torch.device("cpu")
FAST = TimingSettings(warmup=1, min_repeats=3, max_repeats=5, target_s=0.001)


def test_quick_calibration_of_tiny_on_cpu_then_resume(tmp_path, capsys):
    out = tmp_path / "tiny-cpu-quick"
    args = ["calibrate", "--model", "tiny", "--device", "cpu", "--quick", "--out", str(out), "-q"]
    t0 = time.perf_counter()
    assert main(args) == 0
    wall = time.perf_counter() - t0
    first = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nquick CPU calibration of tiny (calibration + report): {wall:.1f} s wall")
    assert "Calibration report: tiny" in first and (out / "report.md").is_file()
    prof = read_profile(out)
    assert prof.meta["status"] == "complete" and prof.meta["device"]["type"] == "cpu"
    assert prof.meta["device"]["threads"] == 1 and prof.meta["grid"]["name"] == "quick"
    for key in ("torch", "date", "git_commit", "wall_time_s", "dtype", "model", "device_rates"):
        assert key in prof.meta
    assert len(prof.table) == len(plan(get_model("tiny"), [1], QUICK))
    t = prof.table
    assert (t["p10_s"] <= t["median_s"]).all() and (t["median_s"] <= t["p90_s"]).all()
    ProfiledCostModel(prof, "tiny")  # complete and usable
    before = (out / "measurements.csv").read_bytes()
    assert main(args) == 0  # a rerun finds everything measured
    assert f"{len(prof.table)} already measured, 0 to go" in capsys.readouterr().out
    assert (out / "measurements.csv").read_bytes() == before


def _interrupted_calibration(out, monkeypatch, *, rounds: int, after: int):
    """A quick tiny calibration of two ops stopped by Ctrl-C after ``after`` timed points; (config, planned
    points, the real time_call), with time_call restored."""
    cfg = profiler.calibration_config("tiny", [1], out, quick=True, device="cpu", ops=("rotary", "act"),
                                      rounds=rounds, progress=False)
    planned = plan(get_model("tiny"), [1], QUICK, ("rotary", "act"))
    calls = {"n": 0}
    real = profiler.time_call

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] > after:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(profiler, "time_call", interrupted)
    with pytest.raises(KeyboardInterrupt):
        profiler.calibrate(cfg, log=lambda s: None)
    monkeypatch.setattr(profiler, "time_call", real)
    return cfg, planned, real


def test_partial_results_are_kept_and_a_rerun_resumes(tmp_path, monkeypatch):
    out = tmp_path / "p"
    cfg, planned, _ = _interrupted_calibration(out, monkeypatch, rounds=1, after=10)
    assert len(read_measurements(out)) == 10  # every point measured before the interruption was written
    res = profiler.calibrate(cfg, log=lambda s: None)
    assert res.complete and res.measured == len(planned) - 10
    assert len(read_profile(out).table) == len(planned)


def test_resume_repairs_a_torn_row_and_re_times_earlier_points_in_later_rounds(tmp_path, monkeypatch):
    """A run killed mid-row leaves a line without its newline: the rerun cuts it and measures that point
    again; and its later rounds re-time the points the interrupted run measured once (best of rounds)."""
    out = tmp_path / "p"
    cfg, planned, real = _interrupted_calibration(out, monkeypatch, rounds=2, after=6)
    csv_file = out / "measurements.csv"
    with open(csv_file, "a") as fh:
        fh.write("rotary,1,99")  # the torn row
    timed = []

    def counting(call, device, *a, **k):
        timed.append(1)
        return real(call, device, *a, **k)

    monkeypatch.setattr(profiler, "time_call", counting)
    logs = []
    res = profiler.calibrate(cfg, log=logs.append)
    assert any("torn last row" in m for m in logs)
    assert res.complete and len(read_profile(out).table) == len(planned)
    # round 1: the points not yet measured; round 2: every point of the run, the 6 earlier ones included
    assert len(timed) == (len(planned) - 6) + len(planned)


def test_decode_forwards_calibrated_through_the_graph_path_price_decode_iterations(tmp_path):
    """With --cuda-graphs (the default on CUDA; forced here on the CPU, where the same static padded path runs
    eagerly) calibration times decode-only forwards as the engine runs them; the profiled model then prices a
    TP1 decode-only iteration from those rows (exactly, at a measured point), names the source, keeps the
    breakdown summing to the stage time, and leaves prefills, TP2 and another GPU to the op tables."""
    from sim.batch import Batch, BatchItem
    from sim.cost.graph_decode import SOURCE
    from sim.request import Request

    out = tmp_path / "g"
    cfg = profiler.calibration_config("tiny", [1, 2], out, quick=True, device="cpu", rounds=1, progress=False,
                                      cuda_graphs=True)
    assert profiler.calibrate(cfg, log=lambda s: None).complete
    prof = read_profile(out)
    rows = prof.table[prof.table["op"] == "forward_graph"]
    assert prof.meta["decode_path"] == "cuda_graphs" and len(rows) == 4  # QUICK: batches 1, 16 x contexts 32, 512
    row = rows.iloc[-1]
    cm = ProfiledCostModel(prof, "tiny")
    items = [BatchItem(Request(f"r{i}", 0.0, int(row.context), 8), 1, int(row.context)) for i in range(int(row.seqs))]
    for it in items:
        it.request.num_computed, it.request.num_generated = int(row.context), 1
    dec = Batch(items, num_decodes=len(items))
    assert cm.stage_cost(dec, 0).time == pytest.approx(float(row.median_s), rel=1e-9)
    assert set(cm.breakdown_sources(dec, 0).values()) - {"profile", "profile-edge"} == {SOURCE}
    assert sum(cm.breakdown(dec, 0).values()) == pytest.approx(cm.stage_cost(dec, 0).time, rel=1e-9)
    pre = Batch([BatchItem(Request("p", 0.0, 64, 4), 64, 0)])
    assert SOURCE not in cm.breakdown_sources(pre, 0).values()
    assert ProfiledCostModel(prof, "tiny", tp=2).describe()["decode_graph_table"] is False
    assert ProfiledCostModel(prof, "tiny", gpu="a100-80gb").describe()["decode_graph_table"] is False
    eager = profiler.calibration_config("tiny", [1], tmp_path / "e", quick=True, device="cpu", rounds=1,
                                        progress=False, ops=("forward",))
    profiler.calibrate(eager, log=lambda s: None)
    assert read_profile(tmp_path / "e").meta["decode_path"] == "eager"


def test_budget_stops_cleanly_and_partial_profiles_are_refused(tmp_path, capsys):
    out = tmp_path / "b"
    base = ["calibrate", "--model", "tiny", "--device", "cpu", "--quick", "--out", str(out), "-q", "--ops", "rotary"]
    assert main(base + ["--budget-s", "0"]) == 3
    prof = read_profile(out)
    assert prof.meta["status"] == "partial" and prof.table.empty
    with pytest.raises(ProfileError, match="rerun"):
        ProfiledCostModel(prof, "tiny")
    assert main(base) == 0
    assert read_profile(out).meta["status"] == "complete"
    capsys.readouterr()
    assert main(["calibrate", "--model", "tiny", "--device", "cpu", "--out", str(out), "-q", "--ops", "rotary"]) == 2
    assert "already holds a profile that differs" in capsys.readouterr().err


def test_calibration_times_the_engines_own_op_functions(monkeypatch):
    """Calibration calls engine.ops.OPS at run time: slowing an op there slows what calibration measures,
    and it is the same function the model's layers call."""
    from engine.runner import ModelRunner
    from sim.batch import Batch, BatchItem
    from sim.kv.block_manager import BlockManager
    from sim.request import Request

    bench = OpBench(get_model("tiny"), CPU, torch.float32, "sdpa", 16, 0.5)
    p = Point("act", 1, 64, 0, 0)
    call, copies = bench.prepare(p)
    base = time_call(call, CPU, FAST, copies)
    original = engine_ops.OPS["act"]
    seen = {"n": 0}

    def slow_act(x, gated=True):
        seen["n"] += 1
        time.sleep(0.003)
        return original(x, gated)

    monkeypatch.setitem(engine_ops.OPS, "act", slow_act)
    call, copies = bench.prepare(p)
    slow = time_call(call, CPU, FAST, copies)
    # time.sleep(0.003) lasts at least 3 ms on any machine: the timed call went through the patched op
    assert slow.median_s >= 0.003 and base.median_s < slow.median_s
    assert seen["n"] >= FAST.warmup + slow.repeats
    runner = ModelRunner(get_model("tiny"), device="cpu", dtype=torch.float32, kv_blocks=8, backend="sdpa")
    r = Request("x", 0.0, 5, 2)
    BlockManager(8, 16).grow(r, 5)
    n = seen["n"]
    runner.execute(Batch([BatchItem(r, 5, 0)]))
    assert seen["n"] == n + get_model("tiny").num_layers  # the engine ran the patched op once per layer


def test_attention_benches_call_the_engine_attention_ops(monkeypatch):
    bench = OpBench(get_model("tiny"), CPU, torch.float32, "sdpa", 16, 0.5)
    bench.set_mixed({8: [16, 40, 300, 1000, 5, 77, 16, 16]})
    counts = {"attn_prefill": 0, "attn_decode": 0}
    for op in counts:
        original = engine_ops.OPS[op]

        def counted(*a, _op=op, _orig=original):
            counts[_op] += 1
            return _orig(*a)

        monkeypatch.setitem(engine_ops.OPS, op, counted)
    for p in (Point("attn_prefill", 1, 64, 1, 256), Point("attn_decode", 2, 4, 4, 128),
              Point("attn_decode", 1, 8, 8, 184, "mixed")):
        call, copies = bench.prepare(p)
        t = time_call(call, CPU, FAST, copies)
        assert t.median_s > 0 and t.p10_s <= t.median_s <= t.p90_s
    assert counts["attn_prefill"] > 0 and counts["attn_decode"] > 0


def test_rotation_and_memory_limits():
    assert rotation_copies(1, CPU) == 8 and rotation_copies(1 << 40, CPU) == 1
    bench = OpBench(get_model("llama-2-7b"), CPU, torch.float32, "sdpa", 16, 1e-6)
    with pytest.raises(MemoryError, match="GiB"):
        bench.prepare(Point("gate_up_proj", 1, 8192, 0, 0))


def test_device_names_map_to_the_gpu_catalogue():
    assert catalogue_gpu("NVIDIA H100 80GB HBM3") == "h100-sxm"
    assert catalogue_gpu("NVIDIA H100 PCIe") == "h100-pcie"
    assert catalogue_gpu("NVIDIA H200") == "h200"
    assert catalogue_gpu("NVIDIA A100-SXM4-40GB", 40e9) == "a100-40gb"
    assert catalogue_gpu("NVIDIA A100-SXM4-80GB", 80e9) == "a100-80gb"
    assert catalogue_gpu("NVIDIA GeForce RTX 4090") is None


def test_collectives_over_two_cpu_processes():
    from calibration.collectives import measure_collectives

    rows = measure_collectives(2, [1, 64], 64, device_type="cpu", dtype=torch.float32, warmup=1, repeats=3)
    ops = sorted({(r["op"], r["tp"]) for r in rows})
    assert ops == [("pp_send_recv", 0), ("tp_all_reduce", 2), ("tp_all_reduce_mlp", 2)]
    assert all(r["median_s"] > 0 and r["p10_s"] <= r["median_s"] <= r["p90_s"] for r in rows)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_quick_calibration(tmp_path):
    out = tmp_path / "cuda"
    assert main(["calibrate", "--model", "tiny", "--device", "cuda", "--quick", "--out", str(out), "-q"]) == 0
    prof = read_profile(out)
    assert prof.meta["device"]["type"] == "cuda" and prof.meta["dtype"] == "bfloat16"
