"""``servesim validate --measured``: the report, the deployment it simulates, the flags it refuses, its one-line
errors (exit 2, naming file and field) for each format, and no engine (no torch) on its path."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sim.cli.main import main
from tests.paths import ROOT
from tests.sim.measured import builders as b


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["validate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_report_marks_measured_and_simulated(tmp_path, capsys) -> None:
    path = b.write(tmp_path / "vllm.json", b.vllm_bench())
    rc, out, err = _run(capsys, "--measured", str(path), "--gpu", "a100-80gb", "--out", str(tmp_path / "o"))
    assert rc == 0, err
    md = (tmp_path / "o" / "report.md").read_text()
    assert "| measured | simulated (servesim) |" in md and "exact: 2 successful requests" in md
    doc = json.loads((tmp_path / "o" / "report.json").read_text())
    run = doc["runs"][0]
    assert run["client"] == "vllm bench serve" and run["exact"] and run["deployment"]["model"] == "llama-3.1-8b"
    rows = {(m["metric"], m["stat"]): m for m in run["metrics"]}
    assert set(rows) == {(k, s) for k in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "p50", "p90", "p99")}
    assert rows[("ttft", "mean")]["measured"] == pytest.approx(0.15)  # the client's own figure, in seconds
    assert rows[("ttft", "mean")]["simulated"] > 0
    m, s = rows[("e2el", "p99")]["measured"], rows[("e2el", "p99")]["simulated"]
    assert rows[("e2el", "p99")]["error_pct"] == pytest.approx((s - m) / m * 100)
    assert run["figures"]["requests completed"] == {"measured": 2, "simulated": 2}
    assert "wrote" in out


def test_flags_override_the_results_own_settings_and_deployment_files(tmp_path, capsys) -> None:
    folder = b.vllm_engine(tmp_path / "G" / "r")
    rc, _, err = _run(capsys, "--measured", str(folder), "--gpu", "h100-80gb", "--max-batch", "4", "--tp", "2",
                      "--out", str(tmp_path / "o"))
    assert rc == 0, err
    pool = json.loads((tmp_path / "o" / "report.json").read_text())["runs"][0]["deployment"]["pool"]
    assert (pool["gpu"], pool["tp"], pool["max_batch_size"], pool["token_budget"]) == ("h100-80gb", 2, 4, 2048)
    dep = tmp_path / "dep.yaml"
    dep.write_text("model: tiny\ngpu: a100-80gb\nscheduler: sarathi\ntoken_budget: 256\n")
    rc, _, err = _run(capsys, "--measured", str(folder), "--deployment", str(dep), "--out", str(tmp_path / "d"))
    assert rc == 0, err
    pool = json.loads((tmp_path / "d" / "report.json").read_text())["runs"][0]["deployment"]["pool"]
    assert (pool["scheduler"], pool["token_budget"]) == ("sarathi", 256)
    rc, _, err = _run(capsys, "--measured", str(folder), "--deployment", str(dep), "--tp", "2", "--out", str(tmp_path))
    assert rc == 2 and "sets the whole deployment: drop --tp" in err


def _bad_vllm(p):
    return b.write(p / "v.json", b.vllm_bench(ttfts=[0.1, None, 0.0]))


def _bad_inference_perf(p):
    folder = b.inference_perf(p / "ip")
    recs = json.loads((folder / "per_request_lifecycle_metrics.json").read_text())
    recs[1]["start_time"] = "soon"
    b.write(folder / "per_request_lifecycle_metrics.json", recs)
    return folder


def _bad_guidellm(p):
    data = b.guidellm()
    data["benchmarks"][0]["requests"]["successful"][0]["time_to_first_token_ms"] = -5
    return b.write(p / "g.json", data)


def _bad_aiperf(p):
    folder = b.aiperf(p / "a")
    text = (folder / "profile_export.jsonl").read_text().replace('"value": 100, "unit": "tokens"',
                                                                 '"value": "many", "unit": "tokens"', 1)
    (folder / "profile_export.jsonl").write_text(text)
    return folder


def _bad_engine(p):
    folder = b.vllm_engine(p / "G" / "r")
    meta = json.loads((folder / "meta.json").read_text())
    meta["engine_kwargs"]["max_num_seqs"] = 0
    b.write(folder / "meta.json", meta)
    return folder


@pytest.mark.parametrize(("make", "where"), [
    (_bad_vllm, "v.json: field 'ttfts[1]': expected a finite number >= 0, got null"),
    (_bad_inference_perf, "per_request_lifecycle_metrics.json: field '[1].start_time': expected a finite number"),
    (_bad_guidellm, "g.json: field 'benchmarks[0].requests.successful[0].time_to_first_token_ms': expected"),
    (_bad_aiperf, "profile_export.jsonl:1: field 'metrics.input_sequence_length.value': expected an integer"),
    (_bad_engine, "meta.json: field 'engine_kwargs.max_num_seqs': expected an integer >= 1, got 0"),
])
def test_malformed_field_exits_2_with_one_line(tmp_path, capsys, make, where) -> None:
    path = make(tmp_path)
    rc, _, err = _run(capsys, "--measured", str(path), "--gpu", "a100-80gb", "--out", str(tmp_path / "o"))
    lines = [x for x in err.splitlines() if x.startswith("servesim:")]
    assert rc == 2 and len(lines) == 1 and where in lines[0] and "Traceback" not in err


def test_engine_only_flags_are_refused(tmp_path, capsys) -> None:
    path = b.write(tmp_path / "v.json", b.vllm_bench())
    for flags, named in ((["--device", "cpu"], "--device"), (["--qps", "3"], "--qps"), (["--repeats", "3"], "--repeats"),
                         (["--no-cuda-graphs"], "--no-cuda-graphs"), (["--schedulers", "vllm"], "--schedulers")):
        rc, _, err = _run(capsys, "--measured", str(path), *flags, "--out", str(tmp_path / "o"))
        assert rc == 2 and named in err and "no engine" in err and len(err.strip().splitlines()) == 1


def test_measured_only_flags_are_refused_without_measured(tmp_path, capsys) -> None:
    rc, _, err = _run(capsys, "--gpu", "a100-80gb", "--cost-model", "kernels", "--out", str(tmp_path))
    assert rc == 2 and "--gpu, --cost-model" in err and "add --measured" in err


def test_missing_gpu_or_model_is_asked_for(tmp_path, capsys) -> None:
    path = b.write(tmp_path / "v.json", b.vllm_bench())
    rc, _, err = _run(capsys, "--measured", str(path), "--out", str(tmp_path / "o"))
    assert rc == 2 and "give --gpu" in err
    path = b.write(tmp_path / "w.json", b.vllm_bench(model_id="someone/unknown-model"))  # HF ids it knows pass
    rc, _, err = _run(capsys, "--measured", str(path), "--gpu", "a100-80gb", "--out", str(tmp_path / "o"))
    assert rc == 2 and "give --model" in err and "someone/unknown-model" in err
    path = b.write(tmp_path / "q.json", b.vllm_bench(model_id="Qwen/Qwen3-32B"))
    rc, _, err = _run(capsys, "--measured", str(path), "--gpu", "h100-80gb", "--tp", "2", "--out", str(tmp_path / "q"))
    assert rc == 0, err
    assert json.loads((tmp_path / "q" / "report.json").read_text())["runs"][0]["deployment"]["model"] == "qwen3-32b"


def test_no_engine_and_no_torch_on_this_path(tmp_path) -> None:
    path = b.write(tmp_path / "v.json", b.vllm_bench())
    code = ("import sys; from sim.cli.main import main; "
            f"rc = main(['validate', '--measured', {str(path)!r}, '--gpu', 'a100-80gb', '--out', "
            f"{str(tmp_path / 'o')!r}]); print(rc, 'torch' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.stdout.split()[-2:] == ["0", "False"], res.stderr
