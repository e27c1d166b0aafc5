"""Read other tools' request traces (Azure, Mooncake, BurstGPT, Splitwise, length tables) into a ``sim.workload.trace.Trace``.

Every importer returns the same ``Trace`` as ``read_trace`` (requests sorted by
arrival, plus warnings) and reports a malformed row as a ``TraceError`` naming
the file, the 1-based line and the column, like our JSONL reader.

Formats (``FORMATS``; ``detect_format`` tells them apart by extension and header):

=========  ================================================================  =====================================
name       columns                                                           arrival_time
=========  ================================================================  =====================================
jsonl      servesim's own JSONL (``sim.workload.trace``)                              as written
azure      ``TIMESTAMP,ContextTokens,GeneratedTokens`` (wall clock)          seconds from the earliest timestamp
mooncake   JSONL ``timestamp`` (ms), ``input_length``, ``output_length``,    timestamp / 1000 (origin kept)
           ``hash_ids`` (kept as an extra field)
lengths    ``num_prefill_tokens,num_decode_tokens[,arrived_at]``             ``arrived_at``, else generated
burstgpt   ``Timestamp,Model,Request tokens,Response tokens,...,Log Type``   Timestamp (s, origin kept)
splitwise  ``arrival_timestamp,prompt_size,token_size``                      arrival_timestamp (s, origin kept)
=========  ================================================================  =====================================

Request ids are the 0-based index of the data row in the source file (counting
rows that were skipped), so an id always points back to its row; Splitwise's
``request_id`` column is used when present. Token counts may be written as
integral floats (``3.0``). A zero-length prompt or output is skipped with one
counted warning per column (``zero_lengths="skip"``, the default; BurstGPT logs a
failed request as a response of 0 tokens) or refused (``"error"``). Negative,
fractional, empty or non-numeric cells are always errors.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from sim.kv.prefix_keys import check_prefix_fields
from sim.request import TraceRequest
from sim.workload.generator import ARRIVALS, generate_arrivals
from sim.workload.trace import (
    MAX_TOKENS,
    Trace,
    TraceError,
    _check_order,
    _contains_non_finite,
    _decode_line,
    _read_text,
    read_trace,
    split_lines,
)

FORMATS = ("jsonl", "azure", "mooncake", "lengths", "burstgpt", "splitwise")
ZERO_POLICIES = ("skip", "error")

# header columns that identify each CSV format, in the order detection tries them
_CSV_SIGNATURES = {
    "azure": ("TIMESTAMP", "ContextTokens", "GeneratedTokens"),
    "burstgpt": ("Timestamp", "Request tokens", "Response tokens"),
    "splitwise": ("arrival_timestamp", "prompt_size", "token_size"),
    "lengths": ("num_prefill_tokens", "num_decode_tokens"),
}
_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length")
_JSON_EXTENSIONS = (".jsonl", ".json", ".ndjson")


@dataclass(frozen=True)
class ArrivalSpec:
    """How to make arrival times for a length table that has none (see ``sim.workload.generator.generate_arrivals``)."""

    arrival: str = "poisson"
    qps: float = 1.0
    cv: float = 1.0
    seed: int = 0


def _first_line(path: str) -> str:
    """The first non-blank line of the file (for format detection)."""
    for line in _read_text(path).splitlines():  # \n, \r\n or a lone \r
        if line.strip():
            return line.strip()
    raise TraceError(path, "trace has no requests (the file is empty or has only blank lines)")


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of a trace file, from its extension and its first line (header or first JSON object)."""
    path = os.fspath(path)
    line = _first_line(path)
    if path.lower().endswith(_JSON_EXTENSIONS) or line.startswith("{"):
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            return "jsonl"  # let the JSONL reader give the precise message
        if isinstance(obj, dict) and all(k in obj for k in _MOONCAKE_KEYS) and "arrival_time" not in obj:
            return "mooncake"
        return "jsonl"
    try:
        header = [c.strip() for c in next(csv.reader([line]))]
    except csv.Error as exc:
        raise TraceError(path, f"not a readable CSV header: {exc}", 1) from None
    for fmt, cols in _CSV_SIGNATURES.items():
        if all(c in header for c in cols):
            return fmt
    known = "; ".join(f"{fmt}: {','.join(cols)}" for fmt, cols in _CSV_SIGNATURES.items())
    raise TraceError(path, f"cannot tell the trace format from the header {line[:80]!r} (known CSV headers: {known}; "
                           "or give the format explicitly, e.g. --trace-format)", 1)


# ---- cells ------------------------------------------------------------------------------------


_DIGITS = re.compile(r"[0-9]+")


def _number_text(path: str, lineno: int, name: str, cell: str, expected: str) -> str:
    """A cell's text, stripped, refused unless plain ASCII: int() and float() read '١٢', '１２' and '1_000' too."""
    text = cell.strip()
    if not text.isascii() or "_" in text:
        raise TraceError(path, f"expected {expected} in ASCII digits, got {_short(cell)}", lineno, name)
    return text


def _count(path: str, lineno: int, name: str, cell: Any) -> int:
    """A token count: an integer >= 0 (an integral float such as 3.0 counts as 3); zeros are handled by the caller."""
    value = cell
    if isinstance(cell, str):
        text = _number_text(path, lineno, name, cell, "an integer >= 0")
        if _DIGITS.fullmatch(text) and len(text) > 16:  # more digits than 2^53 has (int() stops at 4300)
            raise TraceError(path, f"expected at most 2^53 tokens, got {_short(cell)}", lineno, name)
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise TraceError(path, f"expected an integer >= 0, got {_short(cell)}", lineno, name) from None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    shown = _short(value if not isinstance(value, float) or math.isfinite(value) else cell)  # '1e400', not inf
    if type(value) is not int or value < 0:
        raise TraceError(path, f"expected an integer >= 0, got {shown}", lineno, name)
    if value > MAX_TOKENS:
        raise TraceError(path, f"expected at most 2^53 tokens, got {shown}", lineno, name)
    return value


def _seconds(path: str, lineno: int, name: str, cell: Any, unit: float = 1.0) -> float:
    """A time: a finite number >= 0, multiplied by ``unit`` to give seconds."""
    value = cell
    if isinstance(cell, str):
        text = _number_text(path, lineno, name, cell, "a number >= 0")
        try:
            value = float(text)
        except ValueError:
            raise TraceError(path, f"expected a number >= 0, got {_short(cell)}", lineno, name) from None
    if isinstance(value, int) and not isinstance(value, bool) and value > 1e300:
        value = math.inf  # too large for a float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        shown = _short(value if not isinstance(value, float) or math.isfinite(value) else cell)
        raise TraceError(path, f"expected a finite number >= 0, got {shown}", lineno, name)
    return float(value) * unit


def _short(value: Any) -> str:
    """A bad cell or value for a message, at most 40 characters (a cell may hold megabytes)."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = "an integer of thousands of digits"
    return text if len(text) <= 40 else text[:37] + "..."


# ---- rows -------------------------------------------------------------------------------------


@dataclass
class _Row:
    """One parsed source row, before zero-length filtering."""

    line: int
    index: int
    arrival: float
    prompt: int
    output: int
    extra: dict
    request_id: str | None = None


def _guarded(path: str, reader: Any) -> Any:
    """The reader's rows, a csv.Error (a cell over the field limit, a stray NUL) becoming a TraceError at its line."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise TraceError(path, f"unreadable CSV row: {exc}", reader.line_num) from None


def _csv_rows(path: str, required: tuple[str, ...]) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line, cells) of each non-blank data row; checks the header and each row's width."""
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for cells in _guarded(path, reader):
        if not cells or all(not c.strip() for c in cells):
            continue
        if header is None:
            header = [c.strip() for c in cells]
            bad = next((c for c in header if any(ord(ch) < 32 for ch in c)), None)
            if bad is not None:  # 'arrived_at\0' would silently not be the arrival column
                raise TraceError(path, f"header cell {_short(bad)} holds a control character", reader.line_num)
            twice = next((c for k, c in enumerate(header) if c and c in header[:k]), None)
            if twice is not None:  # which of the two is meant? (the first used to win silently)
                at = [k + 1 for k, c in enumerate(header) if c == twice][:2]
                raise TraceError(path, f"appears twice in the CSV header (columns {at[0]} and {at[1]}; which one is "
                                       "meant?)", reader.line_num, twice)
            missing = [c for c in required if c not in header]
            if missing:
                raise TraceError(path, f"CSV header lacks column(s) {', '.join(missing)} "
                                       f"(needs {','.join(required)}; got {','.join(header)[:120]!r})",
                                 reader.line_num)
            continue
        if len(cells) != len(header):
            raise TraceError(path, f"expected {len(header)} comma-separated cells as in the header, got {len(cells)}",
                             reader.line_num)
        rows.append((reader.line_num, cells))
    if header is None:
        raise TraceError(path, "trace has no requests (the file is empty or has only blank lines)")
    return header, rows


def _finish(path: str, rows: list[_Row], names: tuple[str, str], zero_lengths: str,
            on_unsorted: str, zero_note: str = "") -> Trace:
    """Apply the zero-length policy, build TraceRequests, check ids and order."""
    if zero_lengths not in ZERO_POLICIES:
        raise ValueError(f"zero_lengths must be one of {ZERO_POLICIES}, got {zero_lengths!r}")
    warnings: list[str] = []
    kept: list[_Row] = []
    zeros: dict[str, list[int]] = {names[0]: [], names[1]: []}
    for r in rows:
        bad = [n for n, v in zip(names, (r.prompt, r.output)) if v == 0]
        if not bad:
            kept.append(r)
            continue
        if zero_lengths == "error":
            raise TraceError(path, "is 0 tokens (requests need at least one prompt and one output token; "
                                   "use zero_lengths='skip' / --zero-lengths skip to drop such rows)", r.line, bad[0])
        for n in bad:
            zeros[n].append(r.line)
    for name, lines in zeros.items():
        if lines:
            note = zero_note if name == names[1] else ""
            warnings.append(f"{path}:{lines[0]}: skipped {len(lines)} of {len(rows)} rows whose '{name}' is 0"
                            f"{note} (first on line {lines[0]})")
    if not kept:
        raise TraceError(path, "trace has no usable requests" + (" (every row has a zero length)" if rows else ""))
    seen: dict[str, int] = {}
    requests: list[TraceRequest] = []
    for r in kept:
        rid = r.request_id if r.request_id is not None else str(r.index)
        first = seen.setdefault(rid, r.line)
        if first != r.line:
            raise TraceError(path, f"duplicate id {_short(rid)} (first on line {first})", r.line, "request_id")
        requests.append(TraceRequest(rid, r.arrival, r.prompt, r.output, r.extra, r.line))
    warnings += _check_order(path, requests, on_unsorted)
    return Trace(path, requests, warnings)


# ---- the importers ----------------------------------------------------------------------------


def read_azure(path: str | os.PathLike[str], *, zero_lengths: str = "skip", on_unsorted: str = "sort") -> Trace:
    """Azure LLM inference trace (2023/2024): wall-clock TIMESTAMP, ContextTokens, GeneratedTokens."""
    path = os.fspath(path)
    cols = _CSV_SIGNATURES["azure"]
    header, raw = _csv_rows(path, cols)
    it, ip, io_ = (header.index(c) for c in cols)
    import pandas as pd  # here only: the CLI's parser imports this module, and pandas costs 0.3 s of start-up
    try:
        stamps = pd.to_datetime(pd.Series([cells[it].strip() for _, cells in raw], dtype=object),
                                format="ISO8601", errors="coerce", utc=True)
    except (ValueError, TypeError) as exc:
        raise TraceError(path, f"cannot read the timestamps: {str(exc)[:100]}", None, "TIMESTAMP") from None
    if stamps.isna().any():
        k = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise TraceError(path, f"expected a date-time like 2023-11-16 18:15:46.6805900, got {_short(raw[k][1][it])}",
                         raw[k][0], "TIMESTAMP")
    ns = stamps.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)
    seconds = (ns - ns.min()) / 1e9 if len(ns) else ns.astype(float)
    rows = [_Row(line, k, float(seconds[k]), _count(path, line, cols[1], cells[ip]),
                 _count(path, line, cols[2], cells[io_]), {})
            for k, (line, cells) in enumerate(raw)]
    return _finish(path, rows, cols[1:], zero_lengths, on_unsorted)


def read_mooncake(path: str | os.PathLike[str], *, zero_lengths: str = "skip", on_unsorted: str = "sort") -> Trace:
    """Mooncake JSONL: timestamp (ms), input_length, output_length; hash_ids and other keys kept as extras."""
    path = os.fspath(path)
    rows: list[_Row] = []
    for lineno, text in enumerate(split_lines(_read_text(path)), start=1):
        if not text.strip():
            continue
        obj = _decode_line(path, lineno, text)
        for key in _MOONCAKE_KEYS:
            if key not in obj:
                raise TraceError(path, f"missing (required: {', '.join(_MOONCAKE_KEYS)})", lineno, key)
        for key in _MOONCAKE_KEYS:  # JSON numbers only, as the JSONL reader: "12" is not a length
            if isinstance(obj[key], (str, bool)) or obj[key] is None:
                raise TraceError(path, f"expected a number, got {_short(obj[key])}", lineno, key)
        rid = obj.get("request_id")
        if rid is not None and (isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == ""):
            raise TraceError(path, f"expected a non-empty string or an integer, got {_short(rid)}", lineno,
                             "request_id")
        extra = {k: v for k, v in obj.items()
                 if k not in _MOONCAKE_KEYS and k not in ("request_id", "arrival_time", "prompt_tokens", "output_tokens")}
        arrival = _seconds(path, lineno, "timestamp", obj["timestamp"], 1e-3)
        prompt = _count(path, lineno, "input_length", obj["input_length"])
        output = _count(path, lineno, "output_length", obj["output_length"])
        for name, value in extra.items():
            if _contains_non_finite(value):  # 1e999 parses to inf; the JSONL writer could not write it back
                raise TraceError(path, "expected finite numbers", lineno, name)
        # hash_ids as the JSONL reader checks them (null, floats, ids past 2^40: refused here, not in a later
        # command); a zero-length row is skipped or refused by _finish, whatever its ids
        bad = check_prefix_fields(extra, *((prompt, output) if prompt and output else ())) if extra else None
        if bad is not None:
            raise TraceError(path, bad[1], lineno, bad[0])
        rows.append(_Row(lineno, len(rows), arrival, prompt, output, extra, None if rid is None else str(rid)))
    if not rows:
        raise TraceError(path, "trace has no requests (the file is empty or has only blank lines)")
    return _finish(path, rows, ("input_length", "output_length"), zero_lengths, on_unsorted)


def read_lengths(path: str | os.PathLike[str], *, arrivals: ArrivalSpec | None = None, zero_lengths: str = "skip",
                 on_unsorted: str = "sort") -> Trace:
    """A length table (Vidur/Sarathi-Serve CSV); without an ``arrived_at`` column, arrivals come from ``arrivals``.

    Generated arrivals use the arrival stream of ``generate_trace(seed=...)``, so the
    same seed gives the same times as ``servesim trace generate``; rows keep file order.
    """
    path = os.fspath(path)
    cols = _CSV_SIGNATURES["lengths"]
    header, raw = _csv_rows(path, cols)
    ip, io_ = header.index(cols[0]), header.index(cols[1])
    ia = header.index("arrived_at") if "arrived_at" in header else None
    rows = [_Row(line, k, _seconds(path, line, "arrived_at", cells[ia]) if ia is not None else 0.0,
                 _count(path, line, cols[0], cells[ip]), _count(path, line, cols[1], cells[io_]), {})
            for k, (line, cells) in enumerate(raw)]
    trace = _finish(path, rows, cols, zero_lengths, on_unsorted)
    if ia is None:
        spec = arrivals or ArrivalSpec()
        if spec.arrival not in ARRIVALS:
            raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {spec.arrival!r}")
        arr_ss = np.random.SeedSequence(spec.seed).spawn(3)[0]
        times = generate_arrivals(np.random.default_rng(arr_ss), len(trace.requests), spec.arrival, spec.qps, spec.cv)
        for r, t in zip(trace.requests, times.tolist()):
            r.arrival_time = float(t)
        trace.warnings.append(f"{path}: no arrival times in the table; generated {spec.arrival} arrivals"
                              + ("" if spec.arrival == "static" else f" at {spec.qps:g} req/s")
                              + (f" with CV {spec.cv:g}" if spec.arrival == "gamma" else "") + f" (seed {spec.seed})")
    return trace


def read_burstgpt(path: str | os.PathLike[str], *, zero_lengths: str = "skip", on_unsorted: str = "sort") -> Trace:
    """BurstGPT CSV: Timestamp (s), Model, Request tokens, Response tokens, Total tokens, Log Type.

    Model and Log Type are kept as the extra fields ``model`` and ``log_type``. A
    failed request is logged with 0 response tokens: it is skipped (counted in a
    warning) under the default ``zero_lengths="skip"``.
    """
    path = os.fspath(path)
    cols = _CSV_SIGNATURES["burstgpt"]
    header, raw = _csv_rows(path, cols)
    it, ip, io_ = (header.index(c) for c in cols)
    im = header.index("Model") if "Model" in header else None
    il = header.index("Log Type") if "Log Type" in header else None
    rows = []
    for k, (line, cells) in enumerate(raw):
        extra = {}
        if im is not None:
            extra["model"] = cells[im].strip()
        if il is not None:
            extra["log_type"] = cells[il].strip()
        rows.append(_Row(line, k, _seconds(path, line, cols[0], cells[it]), _count(path, line, cols[1], cells[ip]),
                         _count(path, line, cols[2], cells[io_]), extra))
    return _finish(path, rows, cols[1:], zero_lengths, on_unsorted,
                   zero_note=" (BurstGPT's record of a failed request)")


def read_splitwise(path: str | os.PathLike[str], *, zero_lengths: str = "skip", on_unsorted: str = "sort") -> Trace:
    """Splitwise CSV: arrival_timestamp (s), prompt_size, token_size (and request_id when present)."""
    path = os.fspath(path)
    cols = _CSV_SIGNATURES["splitwise"]
    header, raw = _csv_rows(path, cols)
    it, ip, io_ = (header.index(c) for c in cols)
    iid = header.index("request_id") if "request_id" in header else None
    rows = []
    for k, (line, cells) in enumerate(raw):
        rid = cells[iid].strip() if iid is not None else None
        if rid == "":
            raise TraceError(path, "expected a non-empty id", line, "request_id")
        rows.append(_Row(line, k, _seconds(path, line, cols[0], cells[it]), _count(path, line, cols[1], cells[ip]),
                         _count(path, line, cols[2], cells[io_]), {}, rid))
    return _finish(path, rows, cols[1:], zero_lengths, on_unsorted)


def read_any(path: str | os.PathLike[str], fmt: str = "auto", *, arrivals: ArrivalSpec | None = None,
             zero_lengths: str = "skip", on_unsorted: str = "sort") -> Trace:
    """Read a trace in any supported format (``fmt="auto"`` detects it); ``arrivals`` only matters for length tables."""
    path = os.fspath(path)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "jsonl":
        return read_trace(path, on_unsorted=on_unsorted)
    if fmt == "lengths":
        return read_lengths(path, arrivals=arrivals, zero_lengths=zero_lengths, on_unsorted=on_unsorted)
    readers = {"azure": read_azure, "mooncake": read_mooncake, "burstgpt": read_burstgpt, "splitwise": read_splitwise}
    if fmt not in readers:
        raise ValueError(f"unknown trace format {fmt!r}; choose auto or one of {', '.join(FORMATS)}")
    return readers[fmt](path, zero_lengths=zero_lengths, on_unsorted=on_unsorted)
