"""Malformed trace files of every format, seeded: every reader answers with a Trace or a TraceError naming the file
(and the line where there is one), never another exception; what it accepts, `trace stats` can describe."""

from __future__ import annotations

import random

import pytest

from sim.workload.importers import FORMATS, read_any
from sim.workload.stats import trace_stats
from sim.workload.trace import TraceError

VALID = {
    "jsonl": '{"request_id": "a", "arrival_time": 0.5, "prompt_tokens": 12, "output_tokens": 4}\n'
             '{"request_id": "b", "arrival_time": 1.25, "prompt_tokens": 30, "output_tokens": 9}\n',
    "azure": "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
             "2023-11-16 18:15:50.1000000,120,15\n",
    "mooncake": '{"timestamp": 0, "input_length": 600, "output_length": 20, "hash_ids": [1, 2]}\n'
                '{"timestamp": 1500, "input_length": 40, "output_length": 7, "hash_ids": [3]}\n',
    "lengths": "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n100,20,120,5.0\n40,8,48,5.0\n",
    "burstgpt": "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
                "5,ChatGPT,472,18,490,Conversation log\n45,GPT-4,1087,230,1317,Conversation log\n",
    "splitwise": "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6805900,374,44\n"
                 "2023-11-16 18:15:47.0000000,99,3\n",
}
EXT = {"jsonl": ".jsonl", "mooncake": ".jsonl"}
INSERTS = ["\x00", "\r", "\r\n", "\ufeff", "NaN", "Infinity", "1e309", "-1", "0", "9" * 400, "9" * 5000, '"12"',
           "[" * 1500, "x" * 140_000, ",,,,", '{"a": 1}', "null", "true", "2" * 25, "1_000", "\xff\xfe", "\n\n"]


def _mutate(text: str, rng: random.Random) -> bytes:
    kind = rng.randrange(6)
    if kind == 0:  # insert something nasty at a random place
        i = rng.randrange(len(text) + 1)
        text = text[:i] + rng.choice(INSERTS) + text[i:]
    elif kind == 1:  # replace a random span
        i = rng.randrange(len(text))
        text = text[:i] + rng.choice(INSERTS) + text[i + rng.randint(1, 12):]
    elif kind == 2:  # truncate
        text = text[:rng.randrange(len(text))]
    elif kind == 3:  # every line ending changed
        text = text.replace("\n", rng.choice(["\r", "\r\n", "\n\r", "\x00\n"]))
    elif kind == 4:  # a number replaced by an extreme one
        digits = [i for i, c in enumerate(text) if c.isdigit()]
        if digits:
            i = rng.choice(digits)
            text = text[:i] + rng.choice(["1" + "0" * 330, "18446744073709551616", "1e15", "-0", "0.5"]) + text[i + 1:]
    else:  # random bytes
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 5)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        return bytes(data)
    return text.encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("fmt", FORMATS)
def test_fuzzed_files_never_raise_anything_but_trace_errors(fmt, tmp_path):
    rng = random.Random(f"fuzz-{fmt}")
    accepted = refused = 0
    for i in range(60):
        path = tmp_path / f"case{i}{EXT.get(fmt, '.csv')}"
        path.write_bytes(_mutate(VALID[fmt], rng))
        for how in ("auto", fmt):
            try:
                trace = read_any(path, how)
            except TraceError as e:
                refused += 1
                assert str(e).startswith(str(path)), (path.read_bytes()[:200], str(e))
                assert "\n" not in str(e)
            else:
                accepted += 1
                trace_stats(trace.requests)
    assert accepted and refused  # the mutations exercise both outcomes


def test_a_pipe_is_read_once_for_detection_and_reading():
    """`--trace <(cat t.jsonl)`: format detection reads the pipe; the reader gets the same bytes."""
    import os
    r, w = os.pipe()
    os.write(w, VALID["jsonl"].encode())
    os.close(w)
    try:
        trace = read_any(f"/dev/fd/{r}")
    finally:
        os.close(r)
    assert [x.request_id for x in trace.requests] == ["a", "b"]


def test_epoch_clocks_are_rebased_and_lose_no_precision():
    """Arrivals at 1.7e15 s (raw microsecond stamps kept as seconds) simulate exactly like the same trace at 0,
    with the origin in summary.json; at that magnitude a float64 keeps only 0.25 s."""
    from sim.cost.constant import ConstantCostModel
    from sim.request import TraceRequest
    from sim.serving.simulator import SimConfig, simulate
    base = [TraceRequest(str(i), i * 0.01, 50, 20) for i in range(20)]
    far = [TraceRequest(r.request_id, 1.7e15 + r.arrival_time, 50, 20) for r in base]
    cfg = SimConfig(model="tiny", kv_blocks=1000)
    a = simulate(base, cfg, cost_model=ConstantCostModel(0.001))
    b = simulate(far, cfg, cost_model=ConstantCostModel(0.001))
    assert b.summary["time_origin_s"] == far[0].arrival_time and a.summary["time_origin_s"] == 0.0
    assert b.summary["latency_s"]["ttft"]["p50"] > 0
    assert abs(b.summary["latency_s"]["ttft"]["p50"] - a.summary["latency_s"]["ttft"]["p50"]) < 0.3


@pytest.mark.parametrize("name,text,field", [
    ("dup.jsonl", '{"request_id": "a", "arrival_time": 0, "prompt_tokens": 5, "prompt_tokens": 7, '
                  '"output_tokens": 2}\n', "prompt_tokens"),
    ("under.csv", "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n1_000,20,1020,50\n",
     "num_prefill_tokens"),
])
def test_questionable_accepts_are_refused(tmp_path, name, text, field):
    """A repeated JSON key (json keeps the last silently) and `1_000` in a CSV cell (Python's int() accepts
    it) are refused, naming the line and the field, as in every other reader."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError) as e:
        read_any(path)
    assert e.value.line == 2 - name.endswith(".jsonl") and e.value.field == field


def test_a_control_character_in_a_header_cell_is_refused(tmp_path):
    """`arrived_at\\a` would silently not be the arrival column (arrivals then generated; a NUL byte anywhere is
    refused before, tests/sim/workload/test_hostile_traces.py)."""
    path = tmp_path / "t.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio,arrived_at\x07\n5,2,7,2.5,0.5\n")
    with pytest.raises(TraceError, match="control character"):
        read_any(path, "lengths")
