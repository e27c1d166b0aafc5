"""Configuration search: infeasible ones listed with the reason, resume equals an uninterrupted run, prices, CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from sim.capacity.planner import (
    RESULTS_FILE,
    enumerate_candidates,
    format_table,
    load_prices,
    pareto_front,
    plan,
    powers_of_two,
)
from sim.capacity.search import ResultsFile, Slo, Workload
from sim.cli.main import main
from tests.paths import TINY_CPU_PROFILE

# a small, fast plan: tiny runs (the numbers are not meaningful, only deterministic)
WORKLOAD = Workload(num_requests=40, duration=0)
SLO = Slo.make(tbt_p99=0.1, scheduling_delay_p50=2.0)


def _small_plan(out_dir=None, executor=None):
    cands = enumerate_candidates("llama-2-7b", ["a100-80gb"], max_gpus=2, schedulers=["vllm", "sarathi"],
                                 budgets=[512])
    return plan(cands, WORKLOAD, SLO, seeds=(0, 1), rel_tol=0.1, out_dir=out_dir, executor=executor, progress=False)


def test_enumeration_respects_the_gpu_limit_and_budgets_only_for_chunking_schedulers():
    cands = enumerate_candidates("llama-2-7b", ["a100-80gb", "h100"], max_gpus=8, pps=[1, 2], replicas=[1, 2],
                                 schedulers=["vllm", "sarathi"], budgets=[256, 2048])
    assert all(c.gpus <= 8 for c in cands)
    assert {c.gpu for c in cands} == {"a100-80gb", "h100-sxm"}
    assert {c.tp for c in cands} == set(powers_of_two(8)) == {1, 2, 4, 8}
    assert {c.token_budget for c in cands if c.scheduler == "vllm"} == {None}
    assert {c.token_budget for c in cands if c.scheduler == "sarathi"} == {256, 2048}
    # (tp, pp, replicas) with tp*pp*replicas <= 8: count them by hand for one GPU and one scheduler setting
    shapes = {(c.tp, c.pp, c.replicas) for c in cands if c.gpu == "a100-80gb"}
    assert len(shapes) == sum(1 for tp in (1, 2, 4, 8) for pp in (1, 2) for r in (1, 2) if tp * pp * r <= 8)
    assert len(cands) == 2 * len(shapes) * (1 + 2)
    maxed = enumerate_candidates("llama-2-7b", ["a100-80gb"], max_gpus=8, tps=[2], replicas="max",
                                 schedulers=["vllm"])
    assert [(c.tp, c.replicas) for c in maxed] == [(2, 4)]


def test_infeasible_configuration_is_listed_with_the_reason(tmp_path):
    # Llama-2-70B's 138 GB of weights cannot fit on one or two 40 GB A100s; four can hold them
    cands = enumerate_candidates("llama-2-70b", ["a100-40gb"], max_gpus=4, schedulers=["sarathi"], budgets=[512])
    bad = [c for c in cands if c.infeasible]
    assert [(c.tp, c.pp) for c in bad] == [(1, 1), (2, 1)]
    assert all("weights need" in c.infeasible and c.config is None for c in bad)
    # sizing only the infeasible ones: listed in the table, not dropped, with the memory planner's reason
    res = plan(bad, WORKLOAD, SLO, seeds=(0,), out_dir=tmp_path, progress=False)
    assert list(res.table["status"]) == ["infeasible", "infeasible"]
    assert res.table["note"].str.contains("weights need").all()
    assert res.table["capacity_qps"].isna().all() and res.stats.simulated == 0
    text = format_table(res.table)
    # reasons that differ only in their figures fold into one line with the count (not one line per configuration)
    assert text.count("INFEASIBLE: ") == 1 and "use more tensor or pipeline parallelism" in text
    assert "[and 1 more like it: 2 configurations]" in text
    saved = pd.read_csv(tmp_path / "plan.csv")
    assert list(saved["status"]) == ["infeasible", "infeasible"]


def test_resume_after_interruption_gives_the_same_table(tmp_path):
    full = _small_plan(tmp_path / "full")
    lines = (tmp_path / "full" / RESULTS_FILE).read_text().splitlines(keepends=True)
    assert len(lines) == full.stats.simulated and full.stats.reused == 0
    # an interrupted run: the first 40% of the points, then half of the next line (a torn write)
    part = tmp_path / "part"
    part.mkdir()
    keep = int(len(lines) * 0.4)
    (part / RESULTS_FILE).write_text("".join(lines[:keep]) + lines[keep][: len(lines[keep]) // 2])
    resumed = _small_plan(part)
    assert resumed.stats.reused == keep
    assert resumed.stats.simulated == len(lines) - keep
    pd.testing.assert_frame_equal(resumed.table, full.table)
    assert (part / "plan.csv").read_text() == (tmp_path / "full" / "plan.csv").read_text()
    # the file is whole again: every line parses, one per point
    recs = [json.loads(x) for x in (part / RESULTS_FILE).read_text().splitlines()]
    assert len(recs) == len(lines) and len(ResultsFile(part / RESULTS_FILE)) == len(lines)
    # and a third run simulates nothing
    again = _small_plan(part)
    assert again.stats.simulated == 0
    pd.testing.assert_frame_equal(again.table, full.table)


def test_table_is_sorted_and_costs_follow_from_capacity_and_prices(tmp_path):
    res = _small_plan(tmp_path)
    t = res.table
    assert (t["status"] == "ok").all() and len(t) == 4  # TP1, TP2 x (vllm, sarathi 512)
    assert list(t["qps_per_gpu"]) == sorted(t["qps_per_gpu"], reverse=True)
    for r in t.itertuples():
        assert r.qps_per_gpu == pytest.approx(r.capacity_qps / r.gpus)
        assert r.usd_per_hour == pytest.approx(3.5 * r.gpus)  # the catalogue's A100-80GB price
        tokens_per_hour = r.output_tok_s_per_gpu * r.gpus * 3600
        assert r.usd_per_m_output_tokens == pytest.approx(r.usd_per_hour / tokens_per_hour * 1e6)
        assert r.capacity_min <= r.capacity_qps <= r.capacity_max
    assert (tmp_path / "pareto.png").stat().st_size > 0
    front = pd.read_csv(tmp_path / "pareto.csv")
    assert len(front) >= 1
    # one source of truth: each configuration on the front carries exactly the figures plan.csv gives it
    table = pd.read_csv(tmp_path / "plan.csv").set_index("config")
    for r in front.itertuples():
        for col in ("qps_per_gpu", "output_tok_s_per_gpu", "tbt_p99", "ttft_p99"):
            assert getattr(r, col) == pytest.approx(table.loc[r.config, col], rel=1e-5), col
    assert set(pd.read_csv(tmp_path / "points.csv")["config"]) <= set(table.index)


def test_pareto_front_keeps_only_undominated_points():
    pts = pd.DataFrame({"config": list("abcde"), "qps_per_gpu": [1.0, 2.0, 2.0, 3.0, 0.5],
                        "tbt_p99": [0.01, 0.05, 0.03, 0.08, 0.02]})
    front = pareto_front(pts)
    assert list(front["config"]) == ["a", "c", "d"]


def test_prices_file(tmp_path):
    p = tmp_path / "prices.json"
    p.write_text(json.dumps({"A100-80GB": 2.0, "h100": 4}))
    assert load_prices(p) == {"a100-80gb": 2.0, "h100-sxm": 4.0}
    p.write_text(json.dumps({"a100-80gb": -1}))
    with pytest.raises(ValueError, match="field 'a100-80gb': expected a price"):
        load_prices(p)
    p.write_text(json.dumps({"tpu-v9": 1.0}))
    with pytest.raises(ValueError, match="field 'tpu-v9': unknown GPU"):
        load_prices(p)
    p.write_text("{\n  'a100': 1\n}")
    with pytest.raises(ValueError, match=r"prices.json:2: not valid JSON"):
        load_prices(p)


def test_cli_plan_and_capacity(tmp_path, capsys):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"a100-80gb": 1.0}))
    out = tmp_path / "plan"
    args = ["plan", "--model", "llama-2-7b", "--gpus", "a100-80gb,a100-40gb", "--max-gpus", "1",
            "--schedulers", "sarathi", "--budgets", "512", "-n", "40", "--duration", "0", "--seeds", "1",
            "--rel-tol", "0.2", "--jobs", "1", "--prices", str(prices), "--out", str(out), "-q"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "by capacity per GPU" in text and "cheapest 2 by cost" in text
    cheapest = text.split("cheapest 2 by cost")[1].splitlines()
    assert cheapest[3].startswith("a100-80gb")  # $1/h from --prices beats the 40 GB part's $3/h
    t = pd.read_csv(out / "plan.csv")
    assert set(t["gpu"]) == {"a100-80gb", "a100-40gb"} and (t["status"] == "ok").all()
    a80 = t[t["gpu"] == "a100-80gb"].iloc[0]
    assert a80["usd_per_hour"] == 1.0  # from --prices; a100-40gb keeps the catalogue price
    assert t[t["gpu"] == "a100-40gb"].iloc[0]["usd_per_hour"] == 3.0
    for name in ("results.jsonl", "plan.txt", "pareto.csv", "pareto.png"):
        assert (out / name).exists()

    assert main(["capacity", "--scheduler", "sarathi", "--token-budget", "512", "-n", "40", "--duration", "0",
                 "--seeds", "2", "--rel-tol", "0.2", "--jobs", "1", "-v", "-q",
                 "--results", str(tmp_path / "cap.jsonl")]) == 0
    text = capsys.readouterr().out
    assert "capacity" in text and "per seed: 0:" in text and "seed 1" in text
    assert main(["capacity", "-n", "40", "--duration", "0", "--seeds", "1", "--json", "-q", "--jobs", "1",
                 "--results", str(tmp_path / "cap.jsonl")]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["capacity"] > 0 and d["slo"] == {"tbt_p99": 0.1, "scheduling_delay_p50": 2.0}


def test_cli_errors(tmp_path, capsys):
    assert main(["plan", "--out", str(tmp_path), "--prices", str(tmp_path / "nope.json")]) == 2
    assert "price file not found" in capsys.readouterr().err
    assert main(["plan", "--out", str(tmp_path), "--slo", "tbt_p95=1"]) == 2
    assert "unknown SLO metric 'tbt_p95'" in capsys.readouterr().err
    assert main(["plan", "--out", str(tmp_path), "--lengths-from", str(tmp_path / "nope.csv")]) == 2
    assert "file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["plan", "--out", str(tmp_path), "--budgets", "0"])


@pytest.fixture
def local_ray():
    """A local Ray instance started here, so that a start-up too slow for Ray's fixed 30 s wait on a busy machine
    is retried once and then skips with Ray's reason instead of failing; `plan --ray local` finds it running."""
    ray = pytest.importorskip("ray")
    error = None
    for _ in range(2):
        try:
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            break
        except Exception as e:  # Ray raises a bare Exception when its node does not register in time
            error = e
            if ray.is_initialized():
                ray.shutdown()
    else:
        pytest.skip(f"a local Ray node could not start here: {str(error).splitlines()[0][:200]}")
    yield ray
    ray.shutdown()


def test_plan_on_ray_equals_the_process_pool(tmp_path, local_ray):
    """`servesim plan --ray local` (real Ray tasks) writes the same plan.csv and pareto.csv as `--jobs 2`."""
    common = ["plan", "--model", "llama-2-7b", "--gpus", "a100-80gb", "--max-gpus", "2", "--schedulers",
              "vllm,sarathi", "--budgets", "512", "-n", "40", "--duration", "0", "--seeds", "2", "--rel-tol", "0.1",
              "-q"]
    assert main([*common, "--jobs", "2", "--out", str(tmp_path / "pool")]) == 0
    assert main([*common, "--ray", "local", "--out", str(tmp_path / "ray")]) == 0
    for name in ("plan.csv", "pareto.csv", "points.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes(), name
    table = pd.read_csv(tmp_path / "ray" / "plan.csv")
    assert (table["status"] == "ok").all() and (table["capacity_qps"] > 0).all()


def test_profile_prices_only_the_shapes_it_holds(tmp_path):
    """A profile of (tiny, a100-80gb, TP 1) prices that configuration; other GPUs and TPs fall back, with a note."""
    import shutil

    from sim.capacity.search import ProfileRef
    from sim.serving.simulator import SimConfig

    src = TINY_CPU_PROFILE
    if not (src / "profile.json").is_file():
        pytest.skip("calibration/profiles/tiny-cpu is not present")
    prof_dir = tmp_path / "tiny-a100"
    shutil.copytree(src, prof_dir)
    meta = json.loads((prof_dir / "profile.json").read_text())
    meta["device"]["gpu"] = "a100-80gb"  # pretend it was measured there
    (prof_dir / "profile.json").write_text(json.dumps(meta))
    cands = enumerate_candidates("tiny", ["a100-80gb", "h100"], max_gpus=2, schedulers=["sarathi"], budgets=[64],
                                 base=SimConfig(kv_blocks=256))
    wl = Workload(num_requests=30, duration=0, prompt_len="uniform:16:64", output_len="uniform:4:16")
    slo = Slo.make(tbt_p99=None, scheduling_delay_p50=None, ttft_p99=0.01)
    with_prof = plan(cands, wl, slo, seeds=(0,), rel_tol=0.2, progress=False, profile=ProfileRef(prof_dir))
    plain = plan(cands, wl, slo, seeds=(0,), rel_tol=0.2, progress=False)
    t, p = (x.table.set_index(["gpu", "tp"]).sort_index() for x in (with_prof, plain))
    assert (t["status"] == "ok").all() and set(plain.table["cost_model"]) == {"roofline"}
    assert t.loc[("a100-80gb", 1), "cost_model"] == "profiled" and pd.isna(t.loc[("a100-80gb", 1), "note"])
    assert "TP 1, not TP 2" in t.loc[("a100-80gb", 2), "note"]
    assert "measured on a100-80gb, not h100-sxm" in t.loc[("h100-sxm", 1), "note"]
    fell_back = t["cost_model"] == "roofline"
    assert fell_back.sum() == 3
    # roofline rows are the same simulations as without the profile; the profiled one (CPU timings) is slower
    assert (t.loc[fell_back, "capacity_qps"] == p.loc[fell_back, "capacity_qps"]).all()
    assert t.loc[("a100-80gb", 1), "capacity_qps"] < p.loc[("a100-80gb", 1), "capacity_qps"] / 2
