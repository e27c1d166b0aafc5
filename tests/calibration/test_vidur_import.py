"""Vidur's measured op tables as a profile (read from ../shared; skipped without it; never copied here)."""

from __future__ import annotations

import pandas as pd
import pytest

from calibration.vidur_import import import_vidur
from sim.cli.main import main
from sim.cost.profile_format import ProfileError, read_profile
from sim.cost.profiled import ProfiledCostModel
from sim.serving.simulator import SimConfig, simulate
from sim.workload.trace import read_trace
from tests.paths import EXAMPLE_TRACE, SHARED, needs

VIDUR_7B = SHARED / "measured" / "vidur" / "a100" / "meta-llama" / "Llama-2-7b-hf.mlp.csv"
pytestmark = needs(VIDUR_7B)


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    return read_profile(import_vidur(VIDUR_7B, "llama-2-7b", "a100-80gb", tmp_path_factory.mktemp("vidur") / "p"))


def test_rows_are_vidurs_medians_in_seconds(profile):
    raw = pd.read_csv(VIDUR_7B)
    want = raw[(raw.num_tensor_parallel_workers == 2)].groupby("num_tokens")["time_stats.attn_pre_proj.median"].median()
    got = profile.rows("qkv_proj", 2).set_index("tokens")["median_s"]
    assert len(got) == len(want)
    for n in (1, 64, 512, 4096):
        assert got[n] == pytest.approx(want[n] * 1e-3, rel=1e-5)  # the CSV keeps 6 significant digits


def test_the_profile_names_who_measured_each_op(profile):
    src = profile.meta["op_sources"]
    assert src["qkv_proj"] == "vidur:attn_pre_proj" and src["residual_add_mlp"] == "vidur:add"
    assert src["sampling"] == "roofline" and src["host_overhead"] == "roofline"
    assert src["attn_prefill"].startswith(("kernels", "roofline"))
    assert profile.meta["source"]["measured_by"] == "Vidur's profiler on a100-80gb"
    assert profile.tps == [1, 2, 4, 8] and profile.gpu == "a100-80gb"


def test_the_profiled_model_prices_from_it_and_says_so(profile):
    cost = ProfiledCostModel(profile, "llama-2-7b", tp=1)
    trace = read_trace(EXAMPLE_TRACE).requests[:40]
    res = simulate(trace, SimConfig(model="llama-2-7b", gpu="a100-80gb"), cost_model=cost)
    assert res.summary["requests"]["completed"] == 40
    assert res.summary["cost_model"]["measured_by"] == "Vidur's profiler on a100-80gb"
    from sim.cli.cost import iteration_batch
    src = cost.breakdown_sources(iteration_batch([256], [], 4, 512), 0)
    assert src["qkv_proj"] == "profile (vidur:attn_pre_proj)"


def test_a_table_of_another_model_is_refused_with_file_line_and_field(tmp_path):
    with pytest.raises(ProfileError, match=r"Llama-2-7b-hf.mlp.csv: line 2: field 'n_kv_head' is 32, but llama-3-8b"):
        import_vidur(VIDUR_7B, "llama-3-8b", "a100-80gb", tmp_path / "p")


def test_calibrate_import_vidur_command(tmp_path, capsys):
    assert main(["calibrate", "--import-vidur", str(VIDUR_7B), "--model", "llama-2-7b", "--gpu", "a100-80gb",
                 "--out", str(tmp_path / "p")]) == 0
    assert "wrote profile" in capsys.readouterr().out
    assert main(["calibrate", "--import-vidur", str(VIDUR_7B), "--model", "llama-2-7b"]) == 2
    assert "--import-vidur needs --gpu" in capsys.readouterr().err
