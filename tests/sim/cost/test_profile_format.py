"""The profile format: round trips, and malformed or mismatched profiles refused with clear messages (no torch)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from calibration.profile_writer import write_profile
from sim.batch import Batch, BatchItem
from sim.cost.profile_format import ProfileError, read_profile
from sim.cost.profiled import ProfiledCostModel
from sim.request import Request
from tests.profile_fixtures import synthetic_profile


def _batches() -> list[Batch]:
    out = []
    for n_dec, chunks in [(0, [(37, 0)]), (5, []), (12, [(200, 300)]), (3, [(1, 900), (64, 0)]), (60, [])]:
        items = []
        for i in range(n_dec):
            r = Request(f"d{i}", 0.0, 100 + 13 * i, 50)
            r.num_generated, r.num_computed = 3, 100 + 13 * i + 2
            items.append(BatchItem(r, 1, r.num_computed))
        for j, (c, p) in enumerate(chunks):
            items.append(BatchItem(Request(f"p{j}", 0.0, c + p, 10), c, p))
        out.append(Batch(items))
    return out


def _predictions(cm: ProfiledCostModel) -> list[tuple]:
    return [(cm.stage_cost(b, 0), cm.host_time(b), tuple(sorted(cm.breakdown(b, 0).items()))) for b in _batches()]


def test_round_trip_same_predictions_and_same_bytes(tmp_path):
    a = synthetic_profile(tmp_path / "a", "tiny", tps=(1, 2))
    prof = read_profile(a)
    b = write_profile(tmp_path / "b", prof.meta, prof.table)
    again = read_profile(b)
    assert again.table.equals(prof.table)
    assert (a / "measurements.csv").read_bytes() == (b / "measurements.csv").read_bytes()
    assert json.loads((a / "profile.json").read_text()) == json.loads((b / "profile.json").read_text())
    for tp in (1, 2):
        assert _predictions(ProfiledCostModel(prof, "tiny", tp=tp)) == _predictions(ProfiledCostModel(b, "tiny", tp=tp))


@pytest.fixture()
def good(tmp_path) -> Path:
    return synthetic_profile(tmp_path / "p", "tiny")


def _edit_csv(path: Path, line: int, field: str, value: str) -> None:
    f = path / "measurements.csv"
    rows = f.read_text().splitlines()
    header = rows[0].split(",")
    cells = rows[line - 1].split(",")
    cells[header.index(field)] = value
    rows[line - 1] = ",".join(cells)
    f.write_text("\n".join(rows) + "\n")


@pytest.mark.parametrize("field,value,message", [
    ("op", "softmax", r"measurements.csv:7: op must be an op of sim.ops, got 'softmax'"),
    ("median_s", "-1e-6", r"measurements.csv:7: median_s must be a positive number"),
    ("median_s", "fast", r"measurements.csv:7: median_s must be a positive number"),
    ("p10_s", "1", r"measurements.csv:7: p10_s must not exceed median_s"),
    ("tokens", "2.5", r"measurements.csv:7: tokens must be an integer >= 0"),
    ("repeats", "0", r"measurements.csv:7: repeats must be an integer >= 1"),
    ("variant", "odd", r"measurements.csv:7: variant must be empty or 'mixed'"),
])
def test_malformed_rows_refused_with_line_and_field(good, field, value, message):
    _edit_csv(good, 7, field, value)
    with pytest.raises(ProfileError, match=message):
        read_profile(good)


def test_malformed_files_refused(good, tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        read_profile(tmp_path / "nowhere")
    (good / "measurements.csv").write_text("op,tp,tokens\nqkv_proj,1,4\n")
    with pytest.raises(ProfileError, match=r"measurements.csv:1: header lacks column\(s\) seqs"):
        read_profile(good)
    (good / "profile.json").write_text("{ not json")
    with pytest.raises(ProfileError, match=r"profile.json:1: not valid JSON"):
        read_profile(good)
    (good / "profile.json").unlink()
    with pytest.raises(ProfileError, match="profile.json: missing"):
        read_profile(good)


def test_bad_metadata_refused(good):
    meta = json.loads((good / "profile.json").read_text())
    for key, value, message in [("format", "other", "format is 'other'"), ("version", 9, "version 9 is not supported"),
                                ("tp", [], "field tp must be a non-empty list")]:
        bad = dict(meta, **{key: value})
        (good / "profile.json").write_text(json.dumps(bad))
        with pytest.raises(ProfileError, match=message):
            read_profile(good)
    bad = dict(meta)
    del bad["model"]
    (good / "profile.json").write_text(json.dumps(bad))
    with pytest.raises(ProfileError, match="missing field.*model"):
        read_profile(good)


def test_duplicate_and_tp_rows_refused(good):
    f = good / "measurements.csv"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(lines + [lines[5]]) + "\n")
    with pytest.raises(ProfileError, match=f"measurements.csv:{len(lines) + 1}: op row repeats"):
        read_profile(good)
    f.write_text("\n".join(lines) + "\n")
    qkv = next(i for i, line in enumerate(lines) if line.startswith("qkv_proj,")) + 1
    _edit_csv(good, qkv, "tp", "0")
    with pytest.raises(ProfileError, match=f"measurements.csv:{qkv}: tp must be >= 1 for a TP-dependent op"):
        read_profile(good)
    _edit_csv(good, qkv, "tp", "4")
    with pytest.raises(ProfileError, match=r"rows for TP \[4\]"):
        read_profile(good)


def test_mismatched_profile_refused(good):
    with pytest.raises(ProfileError, match="for model 'tiny', whose shapes differ from 'llama-2-7b'.*hidden_size 64"):
        ProfiledCostModel(good, "llama-2-7b")
    with pytest.raises(ProfileError, match="holds TP 1, not TP 2"):
        ProfiledCostModel(good, "tiny", tp=2)


def test_profile_missing_an_op_or_partial_refused(good, tmp_path):
    f = good / "measurements.csv"
    lines = f.read_text().splitlines()
    f.write_text("\n".join(line for line in lines if not line.startswith("rotary,")) + "\n")
    with pytest.raises(ProfileError, match=r"no measurements for op\(s\) rotary at TP 1"):
        ProfiledCostModel(good, "tiny")
    other = shutil.copytree(synthetic_profile(tmp_path / "q", "tiny"), tmp_path / "partial")
    meta = json.loads((other / "profile.json").read_text())
    (other / "profile.json").write_text(json.dumps(dict(meta, status="partial")))
    with pytest.raises(ProfileError, match="is 'partial', not complete.*resume"):
        ProfiledCostModel(other, "tiny")
