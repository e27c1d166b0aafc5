"""Tests of the trace importers (sim.workload.importers): each format on small hand-made files, errors with file:line, real traces."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sim.workload.generator import generate_trace
from sim.workload.importers import (
    ArrivalSpec,
    detect_format,
    read_any,
    read_azure,
    read_burstgpt,
    read_lengths,
    read_mooncake,
    read_splitwise,
)
from sim.workload.trace import TraceError, read_trace, write_trace
from tests.paths import ARXIV, AZURE, MOONCAKE, SHAREGPT, needs

needs_shared = needs(AZURE)

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
BURST_HEADER = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type"


def _write(tmp_path: Path, name: str, *lines: str) -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _error(fn, path: str, **kw) -> TraceError:
    with pytest.raises(TraceError) as info:
        fn(path, **kw)
    return info.value


# --- Azure ---------------------------------------------------------------------------------------


def test_azure_seconds_from_first_with_seven_digit_fractions(tmp_path):
    path = _write(tmp_path, "az.csv", AZURE_HEADER,
                  "2023-11-16 18:15:46.6805900,374,44",
                  "2023-11-16 18:15:50.9951690,396,109",
                  "2023-11-16 18:15:46.6805901,91,16")
    tr = read_azure(path)
    # 50.9951690 - 46.6805900 = 4.314579 s; the third row is 100 ns after the first and sorts before the second
    assert [(r.request_id, r.arrival_time, r.prompt_tokens, r.output_tokens, r.line) for r in tr.requests] == [
        ("0", 0.0, 374, 44, 2), ("2", pytest.approx(1e-7, abs=1e-12), 91, 16, 4), ("1", 4.314579, 396, 109, 3)]
    assert len(tr.warnings) == 1 and f"{path}:4" in tr.warnings[0] and "sorted" in tr.warnings[0]
    assert detect_format(path) == "azure"


def test_azure_timezone_suffix_and_integral_floats(tmp_path):
    path = _write(tmp_path, "az.csv", AZURE_HEADER, "2024-05-10 00:00:01.5+00:00,10.0,3",
                  "2024-05-10 00:00:00.0000000+00:00,7,2")
    tr = read_azure(path)
    assert [(r.arrival_time, r.prompt_tokens) for r in tr.requests] == [(0.0, 7), (1.5, 10)]


@pytest.mark.parametrize("row, line_field, reason", [
    ("yesterday,10,5", "TIMESTAMP", "expected a date-time"),
    ("2023-11-16 18:15:47.0,-3,5", "ContextTokens", "expected an integer >= 0, got -3"),
    ("2023-11-16 18:15:47.0,10,2.5", "GeneratedTokens", "expected an integer >= 0, got 2.5"),
    ("2023-11-16 18:15:47.0,,5", "ContextTokens", "expected an integer >= 0, got ''"),
])
def test_azure_malformed_rows_name_file_line_and_column(tmp_path, row, line_field, reason):
    path = _write(tmp_path, "az.csv", AZURE_HEADER, "2023-11-16 18:15:46.0,1,1", row)
    err = _error(read_azure, path)
    assert str(err).startswith(f"{path}:3: field '{line_field}': ")
    assert reason in str(err) and err.line == 3 and err.field == line_field


def test_csv_wrong_width_and_missing_header_column(tmp_path):
    path = _write(tmp_path, "az.csv", AZURE_HEADER, "2023-11-16 18:15:46.0,1,1", "", "2023-11-16 18:15:46.0,1")
    err = _error(read_azure, path)
    assert str(err) == f"{path}:4: expected 3 comma-separated cells as in the header, got 2"
    path = _write(tmp_path, "bad.csv", "TIMESTAMP,ContextTokens", "2023-11-16 18:15:46.0,1")
    err = _error(read_azure, path)
    assert str(err).startswith(f"{path}:1: CSV header lacks column(s) GeneratedTokens")


# --- zero lengths --------------------------------------------------------------------------------


def test_zero_lengths_skipped_with_counted_warning_or_refused(tmp_path):
    path = _write(tmp_path, "az.csv", AZURE_HEADER, "2023-11-16 18:15:46.0,10,0", "2023-11-16 18:15:47.0,10,5",
                  "2023-11-16 18:15:48.0,0,5", "2023-11-16 18:15:49.0,10,0")
    tr = read_azure(path)
    assert [r.request_id for r in tr.requests] == ["1"]  # ids stay the source row index
    assert tr.warnings == [
        f"{path}:4: skipped 1 of 4 rows whose 'ContextTokens' is 0 (first on line 4)",
        f"{path}:2: skipped 2 of 4 rows whose 'GeneratedTokens' is 0 (first on line 2)",
    ]
    err = _error(read_azure, path, zero_lengths="error")
    assert str(err).startswith(f"{path}:2: field 'GeneratedTokens': is 0 tokens")
    only_zero = _write(tmp_path, "z.csv", AZURE_HEADER, "2023-11-16 18:15:46.0,10,0")
    assert "no usable requests" in str(_error(read_azure, only_zero))


# --- Mooncake ------------------------------------------------------------------------------------


def test_mooncake_ms_to_seconds_keeps_hash_ids_and_round_trips(tmp_path):
    path = _write(tmp_path, "mc.jsonl",
                  '{"timestamp": 0, "input_length": 1000, "output_length": 6, "hash_ids": [0, 1]}',
                  "",
                  '{"timestamp": 1500, "input_length": 600, "output_length": 2, "hash_ids": [0, 2], "tag": "x"}',
                  '{"timestamp": 3000.0, "input_length": 5, "output_length": 1}')
    assert detect_format(path) == "mooncake"
    tr = read_mooncake(path)
    assert [(r.request_id, r.arrival_time, r.prompt_tokens, r.output_tokens, r.line) for r in tr.requests] == [
        ("0", 0.0, 1000, 6, 1), ("1", 1.5, 600, 2, 3), ("2", 3.0, 5, 1, 4)]
    assert tr.requests[0].extra == {"hash_ids": [0, 1]}
    assert tr.requests[1].extra == {"hash_ids": [0, 2], "tag": "x"}
    out = tmp_path / "out.jsonl"
    write_trace(out, tr.requests)
    back = read_trace(out)
    assert [r.extra for r in back.requests] == [r.extra for r in tr.requests]
    assert [(r.arrival_time, r.prompt_tokens) for r in back.requests] == [(0.0, 1000), (1.5, 600), (3.0, 5)]


@pytest.mark.parametrize("line, lineno, field, reason", [
    ('{"timestamp": 0, "output_length": 6}', 2, "input_length", "missing"),
    ('{"timestamp": -5, "input_length": 3, "output_length": 6}', 2, "timestamp", "expected a finite number >= 0"),
    ('{"timestamp": 5, "input_length": 3, "output_length": 6, "hash_ids": "abc"}', 2, "hash_ids", "list of integers"),
    ('{"timestamp": 5, "input_length": 3.5, "output_length": 6}', 2, "input_length", "integer >= 0"),
])
def test_mooncake_malformed_lines(tmp_path, line, lineno, field, reason):
    path = _write(tmp_path, "mc.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}', line)
    err = _error(read_mooncake, path)
    assert str(err).startswith(f"{path}:{lineno}: field '{field}': ") and reason in str(err)


def test_mooncake_invalid_json_line(tmp_path):
    path = _write(tmp_path, "mc.jsonl", '{"timestamp": 0, "input_length": 1, "output_length": 1}', '{"timestamp": 1,')
    assert str(_error(read_mooncake, path)).startswith(f"{path}:2: not valid JSON")


# --- length tables -------------------------------------------------------------------------------


def test_lengths_table_gets_generator_arrivals(tmp_path):
    path = _write(tmp_path, "len.csv", "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio",
                  "100,10,110,10.0", "200,20,220,10.0", "300,30,330,10.0")
    assert detect_format(path) == "lengths"
    spec = ArrivalSpec("gamma", qps=3.0, cv=2.0, seed=7)
    tr = read_lengths(path, arrivals=spec)
    expected = generate_trace(3, arrival="gamma", qps=3.0, cv=2.0, seed=7, prompt_len="fixed:1", output_len="fixed:1")
    assert [r.arrival_time for r in tr.requests] == [r.arrival_time for r in expected]
    assert [(r.prompt_tokens, r.output_tokens) for r in tr.requests] == [(100, 10), (200, 20), (300, 30)]
    assert any("generated gamma arrivals at 3 req/s with CV 2 (seed 7)" in w for w in tr.warnings)


def test_lengths_table_with_arrived_at(tmp_path):
    path = _write(tmp_path, "len.csv", "num_prefill_tokens,num_decode_tokens,arrived_at", "5,6,0.25", "7,8,0.5")
    tr = read_any(path)
    assert [(r.arrival_time, r.prompt_tokens, r.output_tokens) for r in tr.requests] == [(0.25, 5, 6), (0.5, 7, 8)]
    assert tr.warnings == []
    path = _write(tmp_path, "bad.csv", "num_prefill_tokens,num_decode_tokens,arrived_at", "5,6,soon")
    assert str(_error(read_lengths, path)) == f"{path}:2: field 'arrived_at': expected a number >= 0, got 'soon'"


# --- BurstGPT -------------------------------------------------------------------------------------


def test_burstgpt_failures_skipped_and_model_kept(tmp_path):
    path = _write(tmp_path, "burst.csv", BURST_HEADER,
                  "5,ChatGPT,472,18,490,Conversation log",
                  "45,ChatGPT,1087,0,1087,Conversation log",
                  "118,GPT-4,417,276,693,API log")
    assert detect_format(path) == "burstgpt"
    tr = read_burstgpt(path)
    assert [(r.request_id, r.arrival_time, r.prompt_tokens, r.output_tokens) for r in tr.requests] == [
        ("0", 5.0, 472, 18), ("2", 118.0, 417, 276)]
    assert tr.requests[1].extra == {"model": "GPT-4", "log_type": "API log"}
    assert tr.warnings == [f"{path}:3: skipped 1 of 3 rows whose 'Response tokens' is 0 (BurstGPT's record of a "
                           "failed request) (first on line 3)"]
    bad = _write(tmp_path, "b2.csv", BURST_HEADER, "5,ChatGPT,472,18,490,Conversation log", "x,ChatGPT,1,1,2,API log")
    assert str(_error(read_burstgpt, bad)) == f"{bad}:3: field 'Timestamp': expected a number >= 0, got 'x'"


# --- Splitwise ------------------------------------------------------------------------------------


def test_splitwise_with_and_without_request_id(tmp_path):
    path = _write(tmp_path, "sw.csv", "arrival_timestamp,prompt_size,token_size", "0.5,100,10", "0.25,50,5")
    assert detect_format(path) == "splitwise"
    tr = read_splitwise(path)
    assert [(r.request_id, r.arrival_time, r.prompt_tokens) for r in tr.requests] == [("1", 0.25, 50), ("0", 0.5, 100)]
    path = _write(tmp_path, "sw2.csv", "request_id,request_type,arrival_timestamp,prompt_size,token_size",
                  "a,2,0.0,100,10", "b,2,1.0,50,5", "a,2,2.0,50,5")
    err = _error(read_splitwise, path)
    assert str(err) == f"{path}:4: field 'request_id': duplicate id 'a' (first on line 2)"


# --- detection and dispatch -----------------------------------------------------------------------


def test_detection_jsonl_and_unknown_header(tmp_path):
    ours = tmp_path / "ours.txt"
    write_trace(ours, generate_trace(3, seed=1))
    assert detect_format(ours) == "jsonl"
    assert len(read_any(ours).requests) == 3
    path = _write(tmp_path, "x.csv", "a,b,c", "1,2,3")
    err = _error(detect_format, path)
    assert str(err).startswith(f"{path}:1: cannot tell the trace format from the header 'a,b,c'")
    assert "--trace-format" in str(err)
    with pytest.raises(ValueError, match="unknown trace format 'csv'"):
        read_any(path, "csv")


def test_forced_format_reports_header_mismatch(tmp_path):
    path = _write(tmp_path, "sw.csv", "arrival_timestamp,prompt_size,token_size", "0.5,100,10")
    err = _error(read_any, path, fmt="azure")
    assert err.line == 1 and "lacks column(s) TIMESTAMP, ContextTokens, GeneratedTokens" in str(err)


def test_missing_file(tmp_path):
    err = _error(read_any, str(tmp_path / "nope.csv"))
    assert str(err).endswith("trace file not found")


# --- the shared real traces -------------------------------------------------------------------------


@needs_shared
def test_real_azure_conversation_trace():
    tr = read_any(AZURE)
    assert len(tr.requests) == 19366 and tr.warnings == []
    assert tr.requests[0].arrival_time == 0.0 and tr.requests[0].prompt_tokens == 374
    # 18:15:46.6805900 -> 18:15:50.9951690
    assert tr.requests[1].arrival_time == pytest.approx(4.314579, abs=1e-9)
    assert 3400 < tr.requests[-1].arrival_time < 3600
    assert 5.3 < len(tr.requests) / tr.requests[-1].arrival_time < 5.7  # the README's "mean 5.5 req/s"


@needs_shared
def test_real_mooncake_trace():
    tr = read_any(MOONCAKE)
    assert len(tr.requests) == 3993
    r = tr.requests[0]
    assert (r.arrival_time, r.prompt_tokens, r.output_tokens) == (0.0, 40160, 6)
    assert r.extra["hash_ids"][:3] == [0, 1, 2]
    # hash ids cover the prompt in 512-token blocks
    assert all(len(r.extra["hash_ids"]) == -(-r.prompt_tokens // 512) for r in tr.requests[:100])


@needs_shared
@pytest.mark.parametrize("path, rows", [(SHAREGPT, 30731), (ARXIV, 28257)])
def test_real_length_tables(path, rows):
    tr = read_any(path, arrivals=ArrivalSpec(qps=10.0))
    assert len(tr.requests) == rows
    gaps = np.diff([r.arrival_time for r in tr.requests])
    assert 1 / gaps.mean() == pytest.approx(10.0, rel=0.05)
