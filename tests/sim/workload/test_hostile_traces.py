"""Hostile traces and specs (issue 28): each is refused by the reader as ``FILE:LINE: field 'NAME': reason``, with a
bounded message, or read within bounded time and memory; never a traceback, a hang or a silent acceptance."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from sim.cli.main import main
from sim.kv.prefix_keys import MAX_HASH_IDS, block_hashes, prefix_spec
from sim.request import TraceRequest
from sim.workload.generator import SpecError, generate_arrivals, generate_trace, load_length_pairs, parse_length_spec
from sim.workload.importers import read_any
from sim.workload.reuse import fit_reuse
from sim.workload.stats import ideal_reuse, trace_stats
from sim.workload.trace import TraceError, read_trace
from sim.workload.transforms import rescale_rate

SPLITWISE = "arrival_timestamp,prompt_size,token_size"
AZURE = "TIMESTAMP,ContextTokens,GeneratedTokens"


def _short_id(value: object) -> str | None:
    """A test id of at most 30 characters (some parameters are 5,000 characters long)."""
    return value[:30] if isinstance(value, str) else None


def _file(tmp_path: Path, name: str, text: str | bytes) -> str:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8", newline="")
    return str(path)


def _mooncake(**fields) -> str:
    return json.dumps({"timestamp": 0, "input_length": 1000, "output_length": 10, **fields}) + "\n"


def _refused(path: str, line: int | None, field: str | None, says: str) -> TraceError:
    """read_any refuses ``path`` at ``line`` and ``field``, saying ``says``, in a bounded message."""
    with pytest.raises(TraceError) as info:
        read_any(path)
    err = info.value
    assert (err.line, err.field) == (line, field), str(err)
    assert says in err.reason, str(err)
    assert len(str(err)) < len(path) + 300, str(err)
    return err


def _cli_refuses(argv: list[str], capsys, where: str) -> str:
    """The command exits 2 with one line on stderr naming ``where`` (FILE:LINE: field 'NAME'), no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error: " in err and where in err and "Traceback" not in err, err
    return err


@contextlib.contextmanager
def _deadline(seconds: int):
    """Fail instead of hanging (a FIFO without a writer used to block the reader forever)."""
    def expire(*_):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ---- defect 3: prefix keys cost their hash ids, not their tokens -------------------------------------------------


@pytest.mark.parametrize("fields", [
    {"input_length": 10**9, "hash_ids": [1, 2]},  # 5.7 GB and 87 s before
    {"input_length": 2**53, "hash_ids": [1, 2]},  # a MemoryError traceback before
    {"input_length": 2**53, "hash_ids": [7], "hash_block_size": 2**20},
    {"input_length": 2**53 - 7, "prefix_group": "sys", "prefix_len": 2**53},
])
def test_a_huge_request_costs_its_hash_ids_not_its_tokens(tmp_path, fields):
    path = _file(tmp_path, "big.jsonl", _mooncake(**fields) + _mooncake(timestamp=5, **fields))
    tracemalloc.start()
    start = time.perf_counter()
    try:
        stats = trace_stats(read_any(path).requests)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 5 and peak < 20 << 20
    assert stats["reuse"]["requests_declaring_reuse"] == 2 and 0.0 < stats["reuse"]["ideal_hit_rate_tokens"] < 1.0


def _reference_reuse(requests: list[TraceRequest], block_size: int) -> float | None:
    """ideal_reuse as it was: every block's key (sim.kv.prefix_keys.block_hashes) in one set."""
    if not any(r.extra and prefix_spec(r.extra) is not None for r in requests):
        return None
    seen: set[int] = set()
    hit = total = 0
    for i in sorted(range(len(requests)), key=lambda i: requests[i].arrival_time):
        r = requests[i]
        keys = block_hashes(prefix_spec(r.extra) if r.extra else None, i, r.prompt_tokens + r.output_tokens - 1,
                            block_size).tolist()
        limit, k = min(len(keys), (r.prompt_tokens - 1) // block_size), 0
        while k < limit and keys[k] in seen:
            k += 1
        hit, total = hit + k * block_size, total + r.prompt_tokens
        seen.update(keys)
    return hit / total


def test_ideal_reuse_by_runs_equals_ideal_reuse_by_keys():
    """The run-at-a-time comparison gives what comparing every block's key gave, for every kind of reuse field."""
    rng = random.Random(28)
    for _ in range(400):
        block_size, reqs = rng.choice([1, 3, 8, 16, 100]), []
        for i in range(rng.randint(1, 7)):
            p, o = rng.randint(1, 600), rng.randint(1, 200)
            kind = rng.choice(["hash", "hash", "group", "none"])
            if kind == "hash":
                size = rng.choice([5, 8, 16, 24, 100, 512])
                extra = {"hash_ids": [rng.randint(0, 3) for _ in range(rng.randint(0, -(-(p + o) // size)))],
                         "hash_block_size": size}
            elif kind == "group":
                ends = sorted(rng.randint(0, p + o) for _ in range(rng.randint(1, 3)))
                extra = {"prefix_group": [rng.choice(["a", "b", 1]) for _ in ends], "prefix_len": ends}
            else:
                extra = {}
            reqs.append(TraceRequest(str(i), float(rng.randint(0, 3)), p, o, extra))
        assert ideal_reuse(reqs, block_size)["ideal_hit_rate_tokens"] == _reference_reuse(reqs, block_size)


def test_hash_ids_per_request_and_their_block_size_are_bounded(tmp_path):
    ids = "[" + ",".join(["1"] * (MAX_HASH_IDS + 1)) + "]"
    line = f'{{"arrival_time": 0, "prompt_tokens": {2**40}, "output_tokens": 1, "hash_ids": {ids}}}\n'
    _refused(_file(tmp_path, "many.jsonl", line), 1, "hash_ids", "at most 1,048,576 ids (2^20)")
    path = _file(tmp_path, "bs.jsonl", _mooncake(hash_ids=[1], hash_block_size=2**40))
    _refused(path, 1, "hash_block_size", "[1, 2^20]")


# ---- defects 5 and 6: hash ids that crashed later commands -------------------------------------------------------


def test_null_hash_ids_are_refused_by_the_reader(tmp_path, capsys):
    path = _file(tmp_path, "null.jsonl", _mooncake(hash_ids=[1]) + _mooncake(hash_ids=None))
    _refused(path, 2, "hash_ids", "expected a list of integers, got null")
    _cli_refuses(["trace", "stats", path], capsys, f"{path}:2: field 'hash_ids'")
    _cli_refuses(["simulate", "--trace", path, "-n", "50", "--out", str(tmp_path / "o"), "-q"], capsys,
                 f"{path}:2: field 'hash_ids'")


@pytest.mark.parametrize("bad, says", [(2**63, "[0, 2^40)"), (2**64 + 5, "[0, 2^40)"), (-1, "[0, 2^40)"),
                                       (1.5, "list of integers"), (True, "list of integers")])
def test_hash_ids_past_the_packing_or_not_integers_are_refused_by_the_reader(tmp_path, capsys, bad, says):
    path = _file(tmp_path, "h.jsonl", _mooncake(hash_ids=[0, bad]))
    err = _refused(path, 1, "hash_ids", says)
    assert "at index 1" in err.reason
    _cli_refuses(["trace", "convert", path, str(tmp_path / "out.jsonl")], capsys, f"{path}:1: field 'hash_ids'")


# ---- defect 13: a duplicated CSV column ---------------------------------------------------------------------------


def test_a_column_given_twice_is_refused_by_name(tmp_path):
    path = _file(tmp_path, "dup.csv", f"{AZURE},ContextTokens\n2023-11-16 18:15:46.6805900,10,5,99\n")
    _refused(path, 1, "ContextTokens", "appears twice in the CSV header (columns 2 and 4")
    table = _file(tmp_path, "t.csv", "num_prefill_tokens,num_decode_tokens,num_decode_tokens\n5,6,7\n")
    with pytest.raises(TraceError, match=r"t.csv:1: field 'num_decode_tokens': appears twice"):
        load_length_pairs(table)


# ---- defect 16: arrivals too far apart for float seconds ----------------------------------------------------------


def test_an_arrival_span_past_the_bound_is_refused(tmp_path, capsys):
    line = '{{"arrival_time": {}, "prompt_tokens": 100, "output_tokens": 10}}\n'
    path = _file(tmp_path, "far.jsonl", line.format(0) + line.format("5e9"))
    err = _refused(path, 2, "arrival_time", "more than 1e+09 s (31.7 years) after the first arrival (0 s on line 1)")
    # on any clock, alone or not: 1e300 s (its gaps would round to 0) is past the absolute bound, 1e11 s
    alone = _file(tmp_path, "alone.jsonl", line.format("1e300"))
    _refused(alone, 1, "arrival_time", "past 1e+11 s on any clock")
    _cli_refuses(["trace", "stats", path], capsys, f"{path}:2: field 'arrival_time'")
    assert "Warning" not in str(err)
    epoch = _file(tmp_path, "epoch.jsonl", line.format(1.7e9) + line.format(1.7e9 + 0.000001) + line.format(2.6e9))
    assert [r.arrival_time for r in read_trace(epoch).requests] == [1.7e9, 1.7e9 + 0.000001, 2.6e9]
    splitwise = _file(tmp_path, "s.csv", f"{SPLITWISE}\n5,10,2\n1000000006,10,2\n")
    _refused(splitwise, 3, "arrival_time", "more than 1e+09 s")
    mooncake = _file(tmp_path, "m.jsonl", _mooncake() + _mooncake(timestamp=1e13))
    _refused(mooncake, 2, "arrival_time", "more than 1e+09 s")


def test_rates_that_would_spread_arrivals_past_the_bound_are_refused():
    with pytest.raises(SpecError, match=r"qps 1e-300 spreads 5 arrivals over about 5e\+300 s.*1e\+09 s"):
        generate_arrivals(np.random.default_rng(0), 5, "poisson", 1e-300, 1.0)
    for cv in (1e-200, 1e200, float("nan")):
        with pytest.raises(SpecError, match="cv must be a finite number from 0.001 to 100"):
            generate_arrivals(np.random.default_rng(0), 5, "gamma", 1.0, cv)
    reqs = [TraceRequest(str(i), float(i), 5, 5) for i in range(3)]
    with pytest.raises(ValueError, match="would spread the arrivals over 2e\\+300 s"):
        rescale_rate(reqs, 1e-300)


# ---- defect 17: silently accepted cells and reuse fields ----------------------------------------------------------


@pytest.mark.parametrize("cell", ["١٢", "１２", "1_000", "٣.٠"])
def test_non_ascii_digits_are_refused_in_every_csv_reader(tmp_path, cell):
    _refused(_file(tmp_path, "s.csv", f"{SPLITWISE}\n0,{cell},5\n"), 2, "prompt_size", "got")
    _refused(_file(tmp_path, "a.csv", f"{AZURE}\n2023-11-16 18:15:46.6805900,5,{cell}\n"), 2, "GeneratedTokens", "got")
    _refused(_file(tmp_path, "t.csv", f"{SPLITWISE}\n{cell},5,5\n"), 2, "arrival_timestamp", "got")
    table = _file(tmp_path, "l.csv", f"num_prefill_tokens,num_decode_tokens\n{cell},5\n")
    with pytest.raises(TraceError, match=r"l.csv:2: field 'num_prefill_tokens'"):
        load_length_pairs(table)


@pytest.mark.parametrize("fields, field, says", [
    ({"hash_ids": [1, 2, 3]}, "hash_ids", "at most 1 id, one per 512-token block of the request's 110 prompt"),
    ({"hash_ids": [1, 2], "hash_block_size": 16}, None, None),  # 110 tokens: 7 blocks of 16
    ({"prefix_group": "a", "prefix_len": 111}, "prefix_len", "at most the request's 110 prompt and output tokens"),
    ({"prefix_group": ["a", "b"], "prefix_len": [10, 200]}, "prefix_len", "got 200"),
    ({"prefix_group": "a", "prefix_len": 110}, None, None),  # a conversation's group reaches the end of its answer
    ({"prefix_len": 50}, "prefix_len", "given without prefix_group"),
    ({"hash_block_size": 16}, "hash_block_size", "given without hash_ids"),
])
def test_reuse_fields_must_fit_the_request_they_describe(tmp_path, fields, field, says):
    line = json.dumps({"arrival_time": 0, "prompt_tokens": 100, "output_tokens": 10, **fields}) + "\n"
    path = _file(tmp_path, "r.jsonl", "\n" + line)
    if field is None:
        assert read_any(path).requests[0].extra == fields
    else:
        _refused(path, 2, field, says)


def test_clipped_and_resampled_requests_keep_reuse_fields_that_fit(tmp_path):
    """--max-total-tokens and --lengths-from shorten requests: their reuse fields are cut to match (so the written
    trace reads back), which leaves every cache key as it was."""
    out = tmp_path / "g.jsonl"
    assert main(["trace", "generate", "--out", str(out), "-n", "60", "--sessions", "4:10", "--system-prompt",
                 "500:0.8", "--max-total-tokens", "1000", "--seed", "2"]) == 0
    assert len(read_trace(out).requests) == 60
    for extra, tokens in [({"prefix_group": ["s", "c"], "prefix_len": [500, 9000]}, 700),
                          ({"hash_ids": list(range(9)), "hash_block_size": 64}, 300),
                          ({"hash_ids": [1, 2]}, 500), ({"prefix_group": "g", "prefix_len": 5000}, 999)]:
        fitted = fit_reuse(extra, tokens)
        assert fitted is not extra and extra != fitted
        for block_size in (1, 16, 100):
            assert np.array_equal(block_hashes(prefix_spec(extra), 3, tokens - 1, block_size),
                                  block_hashes(prefix_spec(fitted), 3, tokens - 1, block_size))
    mooncake = _file(tmp_path, "m.jsonl", _mooncake(input_length=3000, hash_ids=[0, 1, 2, 3, 4, 5]))
    assert main(["trace", "convert", mooncake, str(tmp_path / "c.jsonl"), "--max-total-tokens", "600"]) == 0
    assert read_trace(tmp_path / "c.jsonl").requests[0].extra == {"hash_ids": [0, 1]}


# ---- defect 18: FIFOs and endless devices -------------------------------------------------------------------------


def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path):
    fifo = str(tmp_path / "f.jsonl")
    os.mkfifo(fifo)
    with _deadline(10):
        _refused(fifo, None, None, "read nothing (a pipe or FIFO with no writer")
        with pytest.raises(TraceError, match="read nothing"):
            load_length_pairs(_fifo_csv(tmp_path))


def _fifo_csv(tmp_path: Path) -> str:
    path = str(tmp_path / "f.csv")
    os.mkfifo(path)
    return path


def test_an_endless_device_is_cut_at_the_stream_limit(monkeypatch):
    monkeypatch.setattr("sim.inputs.MAX_STREAM_BYTES", 1 << 20)
    with _deadline(10):
        err = _refused("/dev/zero", None, None, "more than 1,048,576 bytes from a stream")
    assert str(err).startswith("/dev/zero: more than")


# ---- defect 19: line ends -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("end", ["\n", "\r\n", "\r"])
def test_jsonl_lines_may_end_in_lf_crlf_or_cr_with_editor_line_numbers(tmp_path, end):
    good = '{"arrival_time": 0, "prompt_tokens": 100, "output_tokens": 10}'
    path = _file(tmp_path, "t.jsonl", end.join([good, "", good.replace("0,", "1,", 1)]) + end)
    assert len(read_trace(path).requests) == 2
    _refused(_file(tmp_path, "b.jsonl", end.join([good, "", good.replace("100", "-1")]) + end), 3, "prompt_tokens",
             "got -1")
    moon = _file(tmp_path, "m.jsonl", end.join([_mooncake().strip(), _mooncake(output_length="x").strip()]) + end)
    _refused(moon, 2, "output_length", "expected a number")
    raw = _file(tmp_path, "u.jsonl", (good + end + good + end).encode() + b"\xff" + end.encode())
    _refused(raw, 3, None, "not UTF-8")


# ---- defect 20: bounded messages ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name, text", [
    ("digits.csv", f"{SPLITWISE}\n0,{'9' * 5000},5\n"),
    ("letters.csv", f"{SPLITWISE}\n0,{'x' * 5000},5\n"),
    ("time.csv", f"{SPLITWISE}\n{'9' * 5000},5,5\n"),
    ("ts.csv", f"{AZURE}\n{'2' * 5000},5,5\n"),
    ("header.csv", f"{SPLITWISE},{'h' * 5000}\x01\n0,5,5,5\n"),
    ("key.jsonl", '{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 1, "' + "k" * 5000 + '": 1e999}\n'),
    ("id.jsonl", '{"request_id": "' + "i" * 5000 + '", "arrival_time": 0, "prompt_tokens": 5, "output_tokens": 1}\n'
                 '{"request_id": "' + "i" * 5000 + '", "arrival_time": 0, "prompt_tokens": 5, "output_tokens": 1}\n'),
    ("ends.jsonl", '{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 1, "prefix_group": "a", '
                   '"prefix_len": [' + ",".join(["1"] * 3000) + "]}\n"),
    ("moon.jsonl", _mooncake(request_id=["x" * 5000])),
], ids=_short_id)
def test_messages_never_echo_a_whole_huge_value(tmp_path, name, text):
    path = _file(tmp_path, name, text)
    with pytest.raises(TraceError) as info:
        read_any(path)
    assert len(str(info.value)) < len(path) + 300, str(info.value)


# ---- defect 14 (part): length specs -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, says", [
    ("fixed:99999999999999999999", "N must be at most 2,147,483,647 tokens"),
    ("uniform:1:99999999999", "HI must be at most 2,147,483,647"),
    ("zipf:1:5:3000000000", "HI must be at most 2,147,483,647"),
    ("lognormal:1e300:1", "MEDIAN must be at most 2,147,483,647"),
    ("lognormal:100:1:1e12", "MAX must be an integer"),
    ("fixed:nan", "N must be an integer"),
    ("lognormal:nan:1", "MEDIAN must be finite"),
    ("lognormal:100:inf", "SIGMA must be finite"),
    ("zipf:-1:1:5", "THETA must be >= 0"),
    ("uniform:-5:3", "need 1 <= LO <= HI"),
    ("fixed:-3", "N must be >= 1"),
    ("fixed:１２", "ASCII digits"),
    ("fixed:1_000", "ASCII digits"),
    ("fixed:" + "9" * 5000, "N must be an integer of at most 40 characters, got 5,000"),
    ("x" * 5000 + ":1", "unknown distribution"),
], ids=_short_id)
def test_length_specs_refuse_absurd_values_naming_the_limit(spec, says, capsys, tmp_path):
    with pytest.raises(SpecError) as info:
        parse_length_spec(spec)
    assert says in str(info.value) and len(str(info.value)) < 300, str(info.value)
    with pytest.raises(SpecError):
        generate_trace(3, prompt_len=spec, output_len="fixed:1")
    assert main(["trace", "generate", "--out", str(tmp_path / "t.jsonl"), "-n", "3", "--prompt-len", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and len(err) < 400, err


def test_a_nul_byte_is_refused_at_its_line_in_every_format(tmp_path):
    """A NUL byte (binary data, a file cut short by a crash) is refused even in a free-text column (BurstGPT's
    Log Type), where it was read silently."""
    burst = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n5,ChatGPT,472,18,490,Conversation log\x00\n"
    _refused(_file(tmp_path, "b.csv", burst), 2, None, "NUL byte")
    _refused(_file(tmp_path, "t.jsonl", '{"arrival_time": 0, "prompt_tokens": 5, "output_tokens": 1}\r\x00'), 2, None,
             "NUL byte")
