"""Tests of the JSONL trace reader/writer (sim.workload.trace)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sim.request import TraceRequest
from sim.workload.trace import Trace, TraceError, read_trace, write_trace
from tests.paths import ROOT
from tests.paths import SHARED_TRACES as SHARED

GOOD = '{"arrival_time": 0.5, "prompt_tokens": 10, "output_tokens": 5}'


def _write(tmp_path: Path, *lines: str, name: str = "t.jsonl") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _error(tmp_path: Path, *lines: str, **kw) -> TraceError:
    path = _write(tmp_path, *lines)
    with pytest.raises(TraceError) as info:
        read_trace(path, **kw)
    return info.value


# --- good traces -------------------------------------------------------------------------


def test_reads_fields_defaults_extra_and_lines(tmp_path):
    path = _write(
        tmp_path,
        GOOD,
        "",
        '{"request_id": "a", "arrival_time": 1, "prompt_tokens": 3.0, "output_tokens": 7, "tenant": "x", "n": [1, 2]}',
        "   ",
        '{"request_id": 42, "arrival_time": 2.25, "prompt_tokens": 1, "output_tokens": 1}',
    )
    trace = read_trace(path)
    assert isinstance(trace, Trace) and trace.path == path and trace.warnings == []
    assert [r.request_id for r in trace.requests] == ["0", "a", "42"]
    assert [r.line for r in trace.requests] == [1, 3, 5]
    first, second, third = trace.requests
    assert (first.arrival_time, first.prompt_tokens, first.output_tokens, first.extra) == (0.5, 10, 5, {})
    assert second.prompt_tokens == 3 and type(second.prompt_tokens) is int  # 3.0 accepted as 3
    assert type(second.arrival_time) is float and second.arrival_time == 1.0
    assert second.extra == {"tenant": "x", "n": [1, 2]}
    assert third.request_id == "42"


def test_default_id_is_index_among_requests_not_line(tmp_path):
    path = _write(tmp_path, "", GOOD, "", GOOD)
    assert [r.request_id for r in read_trace(path).requests] == ["0", "1"]


def test_crlf_and_bom_are_accepted(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_bytes(("\ufeff" + GOOD + "\r\n" + GOOD + "\r\n").encode("utf-8"))
    assert len(read_trace(path).requests) == 2


# --- one test per bad-line kind: message names file, line and field --------------------


def _assert_names(err: TraceError, path_end: str, line: int, field: str | None) -> None:
    msg = str(err)
    assert msg.startswith(str(err.path)) and err.path.endswith(path_end)
    assert f"{path_end}:{line}: " in msg, msg
    assert err.line == line
    if field is not None:
        assert err.field == field and f"field '{field}'" in msg, msg


def test_not_json(tmp_path):
    err = _error(tmp_path, GOOD, '{"arrival_time": 1, "prompt_tokens": 2 "output_tokens": 3}')
    _assert_names(err, "t.jsonl", 2, None)
    assert "not valid JSON" in str(err) and "delimiter" in str(err)


def test_trailing_garbage_is_not_json(tmp_path):
    err = _error(tmp_path, GOOD + " x")
    _assert_names(err, "t.jsonl", 1, None)
    assert "not valid JSON" in str(err)


@pytest.mark.parametrize("text,kind", [("[1, 2]", "an array"), ('"hi"', "a string"), ("3", "a number"), ("null", "null")])
def test_line_not_an_object(tmp_path, text, kind):
    err = _error(tmp_path, GOOD, GOOD, text)
    _assert_names(err, "t.jsonl", 3, None)
    assert "expected a JSON object" in str(err) and kind in str(err)


@pytest.mark.parametrize("missing", ["arrival_time", "prompt_tokens", "output_tokens"])
def test_missing_field(tmp_path, missing):
    obj = {"arrival_time": 1.0, "prompt_tokens": 4, "output_tokens": 4}
    del obj[missing]
    err = _error(tmp_path, GOOD, json.dumps(obj))
    _assert_names(err, "t.jsonl", 2, missing)
    assert "missing" in str(err)


@pytest.mark.parametrize(
    "field,value,shown",
    [
        ("prompt_tokens", True, "true"),
        ("output_tokens", False, "false"),
        ("prompt_tokens", 3.5, "3.5"),
        ("prompt_tokens", "12", '"12"'),
        ("output_tokens", None, "null"),
        ("output_tokens", [3], "[3]"),
        ("arrival_time", "1.0", '"1.0"'),
        ("arrival_time", True, "true"),
        ("request_id", 1.5, "1.5"),
        ("request_id", True, "true"),
        ("request_id", "", '""'),
        ("request_id", {"a": 1}, '{"a": 1}'),
    ],
)
def test_wrong_type(tmp_path, field, value, shown):
    obj = {"arrival_time": 1.0, "prompt_tokens": 4, "output_tokens": 4, field: value}
    err = _error(tmp_path, GOOD, GOOD, GOOD, json.dumps(obj))
    _assert_names(err, "t.jsonl", 4, field)
    assert str(err).endswith(f"got {shown}")


def test_message_format_matches_documentation(tmp_path):
    err = _error(tmp_path, *([GOOD] * 11), '{"arrival_time": 1, "prompt_tokens": -3, "output_tokens": 4}')
    assert str(err) == f"{err.path}:12: field 'prompt_tokens': expected an integer >= 1, got -3"


@pytest.mark.parametrize("field", ["prompt_tokens", "output_tokens"])
@pytest.mark.parametrize("value", [0, -1])
def test_zero_or_negative_length(tmp_path, field, value):
    obj = {"arrival_time": 1.0, "prompt_tokens": 4, "output_tokens": 4, field: value}
    err = _error(tmp_path, json.dumps(obj))
    _assert_names(err, "t.jsonl", 1, field)
    assert ">= 1" in str(err) and f"got {value}" in str(err)


@pytest.mark.parametrize("field", ["arrival_time", "prompt_tokens", "output_tokens", "note"])
@pytest.mark.parametrize("const", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_rejected(tmp_path, field, const):
    values = {"arrival_time": "1.0", "prompt_tokens": "4", "output_tokens": "4", field: const}
    line = "{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}"
    err = _error(tmp_path, GOOD, line)
    _assert_names(err, "t.jsonl", 2, field)
    assert "finite" in str(err) or "integer" in str(err)


def test_nan_nested_in_extra_names_the_field(tmp_path):
    err = _error(tmp_path, '{"arrival_time": 1, "prompt_tokens": 4, "output_tokens": 4, "meta": {"w": [1, NaN]}}')
    _assert_names(err, "t.jsonl", 1, "meta")


def test_negative_arrival(tmp_path):
    err = _error(tmp_path, GOOD, '{"arrival_time": -0.25, "prompt_tokens": 4, "output_tokens": 4}')
    _assert_names(err, "t.jsonl", 2, "arrival_time")
    assert ">= 0" in str(err) and "-0.25" in str(err)


def test_duplicate_request_id(tmp_path):
    err = _error(
        tmp_path,
        '{"request_id": "x", "arrival_time": 0, "prompt_tokens": 4, "output_tokens": 4}',
        GOOD,
        '{"request_id": "x", "arrival_time": 1, "prompt_tokens": 4, "output_tokens": 4}',
    )
    _assert_names(err, "t.jsonl", 3, "request_id")
    assert "duplicate" in str(err) and "line 1" in str(err)


def test_duplicate_between_default_and_explicit_id(tmp_path):
    # the first request's default id is "0"; an explicit integer 0 is the same id
    err = _error(tmp_path, GOOD, '{"request_id": 0, "arrival_time": 1, "prompt_tokens": 4, "output_tokens": 4}')
    _assert_names(err, "t.jsonl", 2, "request_id")


def test_not_utf8(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_bytes(GOOD.encode() + b"\n" + b'{"arrival_time": 1, "x": "\xff"}\n')
    with pytest.raises(TraceError) as info:
        read_trace(path)
    _assert_names(info.value, "b.jsonl", 2, None)


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_trace(tmp_path, content):
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert str(info.value).startswith(f"{path}: ") and "no requests" in str(info.value)


def test_file_not_found(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(TraceError) as info:
        read_trace(path)
    assert str(info.value) == f"{path}: trace file not found"
    assert isinstance(info.value, ValueError)


def test_directory_is_not_a_trace(tmp_path):
    with pytest.raises(TraceError, match="directory"):
        read_trace(tmp_path)


# --- arrival order -----------------------------------------------------------------------


def _req(rid: str, t: float) -> str:
    return json.dumps({"request_id": rid, "arrival_time": t, "prompt_tokens": 4, "output_tokens": 4})


def test_unsorted_is_sorted_stably_with_warning(tmp_path):
    path = _write(tmp_path, _req("a", 1.0), _req("b", 3.0), _req("c", 2.0), _req("d", 1.0), _req("e", 3.0), _req("f", 5.0))
    trace = read_trace(path)
    assert [r.request_id for r in trace.requests] == ["a", "d", "c", "b", "e", "f"]
    assert [r.line for r in trace.requests] == [1, 4, 3, 2, 5, 6]
    assert len(trace.warnings) == 1
    warning = trace.warnings[0]
    assert warning.startswith(f"{path}:3: ")  # first line where time goes backwards
    assert "2 of 6 requests" in warning and "sorted" in warning


def test_equal_times_are_not_unsorted(tmp_path):
    path = _write(tmp_path, _req("a", 1.0), _req("b", 1.0), _req("c", 1.0))
    trace = read_trace(path, on_unsorted="error")
    assert trace.warnings == [] and [r.request_id for r in trace.requests] == ["a", "b", "c"]


def test_unsorted_refused_in_error_mode(tmp_path):
    err = _error(tmp_path, _req("a", 1.0), _req("b", 3.0), _req("c", 2.0), on_unsorted="error")
    _assert_names(err, "t.jsonl", 3, "arrival_time")
    assert "backwards" in str(err) and "line 2" in str(err)


def test_bad_unsorted_policy(tmp_path):
    with pytest.raises(ValueError, match="on_unsorted"):
        read_trace(_write(tmp_path, GOOD), on_unsorted="ignore")


# --- writing -----------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path):
    reqs = [
        TraceRequest("r0", 0.0, 1, 1),
        TraceRequest("weird \"id\" é", 1e-9, 3, 2**40),
        TraceRequest("r1", 0.1 + 0.2, 4096, 17, {"tenant": "a", "nested": {"b": [1, 2.5]}}),
        TraceRequest("r3", 123456.78901234567, 7, 8, {"z": None, "a": True}),
    ]
    first = tmp_path / "a.jsonl"
    write_trace(first, reqs)
    back = read_trace(first).requests
    for orig, got in zip(reqs, back, strict=True):
        assert (got.request_id, got.arrival_time, got.prompt_tokens, got.output_tokens, got.extra) == (
            orig.request_id, orig.arrival_time, orig.prompt_tokens, orig.output_tokens, orig.extra)
    assert back[2].arrival_time == 0.30000000000000004
    second = tmp_path / "b.jsonl"
    write_trace(second, back)
    assert first.read_bytes() == second.read_bytes()


def test_write_key_order_is_fixed(tmp_path):
    path = tmp_path / "k.jsonl"
    write_trace(path, [TraceRequest("0", 2, 5, 6, {"zeta": 1, "alpha": 2})])
    assert path.read_text() == (
        '{"request_id": "0", "arrival_time": 2.0, "prompt_tokens": 5, "output_tokens": 6, "alpha": 2, "zeta": 1}\n'
    )


@pytest.mark.parametrize(
    "req",
    [
        TraceRequest("0", float("nan"), 5, 6),
        TraceRequest("0", -1.0, 5, 6),
        TraceRequest("0", 1.0, 0, 6),
        TraceRequest("0", 1.0, 5, True),
        TraceRequest("0", 1.0, 5, 6, {"prompt_tokens": 3}),
        TraceRequest("0", 1.0, 5, 6, {"x": float("inf")}),
    ],
)
def test_write_refuses_what_read_would_refuse(tmp_path, req):
    with pytest.raises(ValueError):
        write_trace(tmp_path / "bad.jsonl", [req])


def test_write_refuses_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="duplicated"):
        write_trace(tmp_path / "bad.jsonl", [TraceRequest("a", 0.0, 1, 1), TraceRequest("a", 1.0, 1, 1)])


def test_reading_100k_lines_keeps_every_line(tmp_path):
    """Every line read, numbered as in an editor (the reading speed is benchmarks/reader_speed.py's figure)."""
    path = tmp_path / "big.jsonl"
    write_trace(path, (TraceRequest(str(i), i * 0.01, 100 + i % 50, 1 + i % 7) for i in range(100_000)))
    trace = read_trace(path)
    assert len(trace.requests) == 100_000 and trace.requests[-1].line == 100_000


# --- real public traces ------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED / "mooncake").is_dir(), reason="../shared/traces not present")
def test_reads_mooncake_jsonl_as_unknown_fields():
    # Mooncake's fields differ (timestamp, input_length, ...): our reader must say which field is missing.
    with pytest.raises(TraceError) as info:
        read_trace(SHARED / "mooncake" / "synthetic_trace.jsonl")
    assert info.value.line == 1 and info.value.field == "arrival_time"


def test_example_traces_are_valid():
    root = ROOT / "traces"
    for name in ("example_sharegpt_poisson.jsonl", "example_bursty_gamma.jsonl"):
        trace = read_trace(root / name, on_unsorted="error")
        assert len(trace.requests) == 200 and trace.warnings == []
