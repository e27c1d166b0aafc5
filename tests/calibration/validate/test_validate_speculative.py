"""servesim validate with n-gram speculative decoding (issue 35): the engine's measured acceptance is the one the
simulator uses, the engine's lookups are replayed, and the report compares them per position, batch and request."""

from __future__ import annotations

import json

import pytest

from calibration.validate.speculative import MeasuredLookups, acceptance_arg, acceptance_used
from sim.cli.main import main
from sim.request import Request, TraceRequest
from sim.spec.config import parse_acceptance
from tests.paths import ROOT

PROFILE = ROOT / "calibration" / "profiles" / "tiny-cpu"
NGRAM = json.dumps({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 2, "prompt_lookup_max": 4})


def test_acceptance_used_is_the_measured_one_where_it_can_be():
    assert acceptance_used([0.9, 0.75, 0.5]) == ([0.9, 0.75, 0.5], [])
    used, notes = acceptance_used([0.8, 0.85, None])
    assert used == [0.8, 0.8, 0.0] and len(notes) == 2 and "0.8000 used" in notes[0]
    rates = [0.8914728682170543, 0.7666666666666667, 0.6851851851851852]
    assert list(parse_acceptance(acceptance_arg(rates)).rates) == rates  # exactly, bit for bit


def test_measured_lookups_replay_the_engine_at_each_output_position():
    # request 7: lookups at 1 output (2 allowed, none found), 3 (3 allowed, 3 found: a full draft), 9 (3 allowed, 1)
    p = MeasuredLookups({7: [(1, 2, 0), (3, 3, 3), (9, 3, 1)]})
    r = Request("x", 0.0, 10, 20, index=7)
    for generated, k, want in ((0, 3, 0), (1, 3, 0), (2, 3, 0), (3, 3, 3), (5, 2, 2), (8, 3, 3), (9, 3, 1),
                               (15, 3, 1), (15, 0, 0)):
        r.num_generated = generated
        assert p(r, k) == want, (generated, k)
    assert p(Request("y", 0.0, 10, 20, index=8), 3) == 0  # a request the engine never looked up for


def test_validate_writes_the_acceptance_comparison(tmp_path):
    pytest.importorskip("torch")
    from calibration.validate.config import ValidateConfig
    from calibration.validate.run import validate
    trace = [TraceRequest(f"q{i}", 0.0, p, o) for i, (p, o) in enumerate([(40, 50), (17, 40), (70, 60), (30, 45)])]
    cfg = ValidateConfig(model="tiny", device="cpu", dtype="float32", backend="sdpa", schedulers=("vllm_v1",),
                         offline=True, warmup=0, op_check=0, plots=False, timeline=False, speculative_config=NGRAM)
    res = validate(trace, cfg, PROFILE, out=tmp_path, source="spec-test")
    run = res.runs[0]
    sp = run.speculative
    measured = run.engine.summary["speculative"]["per_position_acceptance"]
    used, notes = acceptance_used(measured)
    assert [p["used"] for p in sp["per_position"]] == used and sp["notes"] == notes
    assert sp["acceptance_measured_equals_used"] == (used == measured)
    sim_spec = run.simulated.summary["speculative"]
    assert sim_spec["acceptance"]["rates"] == used  # the simulator drew from exactly these rates
    assert run.engine.summary["speculative"]["accepted_tokens"] > 0
    assert sp["per_request"]["requests"] == len(trace)
    assert sp["per_batch"]["with_drafts"]["count"] + sp["per_batch"]["without_drafts"]["count"] == len(run.batches)
    rep = json.loads((tmp_path / "report.json").read_text())
    assert rep["runs"][0]["speculative"]["per_position"][0]["measured"] == measured[0]
    md = (tmp_path / "report.md").read_text()
    assert "Acceptance measured = acceptance used" in md and "| draft position |" in md


@pytest.mark.parametrize("args, message", [
    (["--schedulers", "vllm_v1", "--speculative-config", '{"method": "eagle3", "num_speculative_tokens": 2}'],
     "ngram only"),
    (["--schedulers", "vllm", "--speculative-config", NGRAM], "vLLM V1 only"),
])
def test_validate_refuses_what_the_engine_does_not_speculate(tmp_path, capsys, args, message):
    pytest.importorskip("torch")
    code = main(["validate", "--out", str(tmp_path / "o"), "--profile", str(PROFILE), "--offline", "-n", "2", *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
