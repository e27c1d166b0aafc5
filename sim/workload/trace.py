"""Request traces in JSON Lines: one request per line, read strictly and written deterministically.

A line is a JSON object with ``arrival_time`` (seconds, finite, >= 0),
``prompt_tokens`` and ``output_tokens`` (integers >= 1) and an optional
``request_id`` (string or integer, kept as a string; default: the request's
0-based index in the file). Optional reuse fields describe what the prompt shares
with other requests, for prefix caching (``sim.kv.prefix_keys``): ``hash_ids`` (a list of
integer ids, one per ``hash_block_size`` tokens, default 512, as Mooncake's), or
``prefix_group`` (any id) with ``prefix_len`` (the group's shared leading tokens).
Other fields are kept in ``TraceRequest.extra`` and ignored by the simulator. Blank lines are skipped. An integral float such as
``3.0`` is accepted as the integer 3 (some tools write every number as a float);
``3.5``, booleans, NaN and Infinity are refused. See traces/README.md.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from sim.inputs import InputTooLargeError, brief_json, read_input_bytes
from sim.kv.prefix_keys import check_prefix_fields
from sim.request import TraceRequest

REQUIRED_FIELDS = ("arrival_time", "prompt_tokens", "output_tokens")
_CORE_FIELDS = frozenset(("request_id",) + REQUIRED_FIELDS)
_UNSORTED_POLICIES = ("sort", "error")


#: the largest token count a trace may give: 2^53, exact in a float64 (no model comes within 10^8 of it)
MAX_TOKENS = 2**53

#: the longest a trace may last, first arrival to last (31.7 years): simulated times are float64 seconds from the
#: first arrival (an epoch clock past 1e6 s is re-based there, sim.workload.servable), so they stay below 2^30 s,
#: where float64s are at most 2^-23 s (0.12 us) apart: every arrival and latency keeps its microseconds (at 1e300 s
#: a request's gaps round to 0)
MAX_ARRIVAL_SPAN_S = 1e9

#: the latest arrival on any clock, 1e11 s: epoch seconds until the year 5138 (today's are about 1.8e9 s), and a
#: millisecond epoch read as seconds is refused instead of re-based into a plausible trace
MAX_ARRIVAL_S = 1e11

_LINE_BREAK = re.compile(r"\r\n|\r|\n")  # the line ends the CSV readers accept too (splitlines would also split on
# \x85 and \u2028, which a JSON string may hold raw)


def split_lines(text: str) -> list[str]:
    """The lines of a text file ending in \\n, \\r\\n or a lone \\r, as an editor numbers them (1-based: index + 1)."""
    return text.split("\n") if "\r" not in text else _LINE_BREAK.split(text)


class TraceError(ValueError):
    """A trace that cannot be used; the message names the file, the 1-based line and the field."""

    def __init__(self, path: str, message: str, line: int | None = None, field: str | None = None) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        name = field if field is None or len(field) <= 60 else field[:57] + "..."  # an unknown key may be huge
        what = message if field is None else f"field '{name}': {message}"
        super().__init__(f"{where}: {what}")


@dataclass
class Trace:
    """A parsed trace: its requests sorted by arrival, and what was noticed while reading it."""

    path: str
    requests: list[TraceRequest]
    warnings: list[str] = field(default_factory=list)


class _NonFinite(Exception):
    """Raised by the JSON decoder on NaN/Infinity so that they never reach the data."""


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


class _DuplicateKey(Exception):
    """Raised by the JSON decoder when an object repeats a key (json would keep the last silently)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_unique_keys)


def _show(value: Any) -> str:
    """A short JSON-ish rendering of a bad value for an error message."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    return brief_json(value)


def _brief_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages that quote an id or a cell as Python does."""
    try:
        text = repr(value)
    except ValueError:  # an int past Python's digit limit for str()
        text = "an integer of thousands of digits"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _contains_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_contains_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_contains_non_finite(v) for v in value)
    return False


def _decode_line(path: str, lineno: int, text: str) -> dict:
    """Parse one line into a dict, refusing invalid JSON, NaN/Infinity and non-objects."""
    try:
        obj = _DECODER.decode(text)
    except _NonFinite as exc:
        try:
            obj = json.loads(text)  # NaN is allowed here, only to find which field holds it
        except (ValueError, RecursionError):
            obj = None  # NaN and a syntax error on one line: the NaN is the first fault found
        bad = next((k for k, v in obj.items() if _contains_non_finite(v)), None) if isinstance(obj, dict) else None
        raise TraceError(path, f"expected a finite number, got {exc.args[0]}", lineno, bad) from None
    except json.JSONDecodeError as exc:
        raise TraceError(path, f"not valid JSON: {exc.msg} (column {exc.colno})", lineno) from None
    except _DuplicateKey as exc:
        raise TraceError(path, "appears twice in one object (which value is meant?)", lineno, exc.args[0]) from None
    except RecursionError:
        raise TraceError(path, "not valid JSON for a trace: nested too deeply", lineno) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise TraceError(path, f"not valid JSON for a trace: {str(exc).split(':')[0]}", lineno) from None
    if not isinstance(obj, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(obj), "a number")
        raise TraceError(path, f"expected a JSON object {{...}}, got {kind}", lineno)
    return obj


def _as_int(path: str, lineno: int, name: str, value: Any) -> int:
    """A token count: an int >= 1 (an integral float like 3.0 counts as 3)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if type(value) is not int or value < 1:
        raise TraceError(path, f"expected an integer >= 1, got {_show(value)}", lineno, name)
    if value > MAX_TOKENS:
        raise TraceError(path, f"expected at most 2^53 tokens, got {_show(value)}", lineno, name)
    return value


def _parse_request(path: str, lineno: int, index: int, obj: dict) -> TraceRequest:
    """Validate one decoded line and turn it into a TraceRequest."""
    for name in REQUIRED_FIELDS:
        if name not in obj:
            raise TraceError(path, "missing (required: arrival_time, prompt_tokens, output_tokens)", lineno, name)
    t = obj["arrival_time"]
    if isinstance(t, int) and not isinstance(t, bool) and t > 1e300:
        t = math.inf  # too large for a float: refused below like any infinite time
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise TraceError(path, f"expected a finite number of seconds >= 0, got {_show(t)}", lineno, "arrival_time")
    prompt = _as_int(path, lineno, "prompt_tokens", obj["prompt_tokens"])
    output = _as_int(path, lineno, "output_tokens", obj["output_tokens"])
    rid = obj.get("request_id", index)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise TraceError(path, f"expected a non-empty string or an integer, got {_show(rid)}", lineno, "request_id")
    extra = {k: v for k, v in obj.items() if k not in _CORE_FIELDS} if len(obj) > 3 else {}
    for name, value in extra.items():
        if _contains_non_finite(value):  # e.g. 1e999, which json parses to inf
            raise TraceError(path, f"expected finite numbers, got {_show(value)}", lineno, name)
    bad = check_prefix_fields(extra, prompt, output) if extra else None
    if bad is not None:  # the optional reuse description (sim.kv.prefix_keys): hash_ids, or prefix_group + prefix_len
        raise TraceError(path, bad[1], lineno, bad[0])
    return TraceRequest(str(rid), float(t), prompt, output, extra, lineno)


def _read_text(path: str) -> str:
    """The file's text, with clear messages for missing, unreadable or non-UTF-8 files.

    A pipe (``--trace <(zcat t.jsonl.gz)``) can be read only once: its bytes are kept for the reader that
    follows format detection.
    """
    if path in _PIPES:
        data = _PIPES[path]
    else:
        data = _read_bytes(path)
        if not os.path.isfile(path):
            if not data:  # not an empty file: a pipe, a FIFO or a device that gave nothing
                raise TraceError(path, "read nothing (a pipe or FIFO with no writer, or an empty stream)")
            _PIPES[path] = data
    nul = data.find(b"\0")
    if nul >= 0:  # no trace format holds one: binary data, or a file cut short by a crash
        raise TraceError(path, "holds a NUL byte (binary data, not a text trace)", _line_of(data, nul))
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TraceError(path, f"not UTF-8 text (byte {data[exc.start]:#04x})", _line_of(data, exc.start)) from None


def _line_of(data: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` (line ends \\n, \\r\\n or a lone \\r)."""
    head = data[:offset]
    return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1


#: bytes of pipes already read, by path (a process reads each of its pipes once)
_PIPES: dict[str, bytes] = {}


def _read_bytes(path: str) -> bytes:
    """The file's bytes through the bounded reader: a FIFO with no writer reads as empty, a stream is cut at
    ``sim.inputs.MAX_STREAM_BYTES`` (``/dev/zero`` must not fill memory)."""
    try:
        return read_input_bytes(path)
    except InputTooLargeError as exc:
        text = str(exc)  # "PATH: more than N bytes from a stream ...", the path perhaps shortened
        reason = text[len(path) + 2:] if text.startswith(f"{path}: ") else text.split(": ", 1)[-1]
        raise TraceError(path, reason) from None
    except FileNotFoundError:
        raise TraceError(path, "trace file not found") from None
    except IsADirectoryError:
        raise TraceError(path, "is a directory, not a trace file") from None
    except OSError as exc:
        raise TraceError(path, f"cannot read trace file: {exc.strerror or exc}") from None


def _check_span(path: str, requests: list[TraceRequest]) -> None:
    """Refuse arrivals more than MAX_ARRIVAL_SPAN_S after the earliest, naming the first such line."""
    if not requests:
        return
    latest = max(requests, key=lambda r: r.arrival_time)
    if latest.arrival_time > MAX_ARRIVAL_S:
        raise TraceError(path, f"{latest.arrival_time:.6g} s is past {MAX_ARRIVAL_S:g} s on any clock (epoch seconds "
                               "are about 1.8e9; milliseconds or nanoseconds given as seconds?)", latest.line,
                         "arrival_time")
    earliest = min(requests, key=lambda r: r.arrival_time)
    far = next((r for r in requests if r.arrival_time - earliest.arrival_time > MAX_ARRIVAL_SPAN_S), None)
    if far is not None:
        where = f" on line {earliest.line}" if earliest.line is not None else ""
        raise TraceError(path, f"{far.arrival_time:.6g} s is more than {MAX_ARRIVAL_SPAN_S:g} s (31.7 years) after the "
                               f"first arrival ({earliest.arrival_time:.6g} s{where}): too long a span to keep "
                               "microseconds", far.line, "arrival_time")


def _check_order(path: str, requests: list[TraceRequest], on_unsorted: str) -> list[str]:
    """Sort requests by arrival (stably) if needed; return the warning, or refuse in 'error' mode (and refuse a span
    past MAX_ARRIVAL_SPAN_S)."""
    _check_span(path, requests)
    first: TraceRequest | None = None
    prev: TraceRequest | None = None
    running_max = -math.inf
    out_of_order = 0
    for r in requests:
        if r.arrival_time < running_max:
            out_of_order += 1
            if first is None:
                first = r
        else:
            running_max = r.arrival_time
        if first is None:
            prev = r
    if first is None:
        return []
    assert prev is not None
    what = (
        f"arrival_time goes backwards ({first.arrival_time!r} after {prev.arrival_time!r} on line {prev.line}); "
        f"{out_of_order} of {len(requests)} requests arrive earlier than a request above them"
    )
    if on_unsorted == "error":
        raise TraceError(path, what + " (the trace must be sorted by arrival_time)", first.line, "arrival_time")
    requests.sort(key=lambda r: r.arrival_time)  # list.sort is stable: ties keep file order
    return [f"{path}:{first.line}: {what}; sorted by arrival_time (stable)"]


def read_trace(path: str | os.PathLike[str], *, on_unsorted: str = "sort") -> Trace:
    """Read and validate a JSONL trace; unsorted arrivals are sorted with a warning ('sort') or refused ('error')."""
    if on_unsorted not in _UNSORTED_POLICIES:
        raise ValueError(f"on_unsorted must be one of {_UNSORTED_POLICIES}, got {on_unsorted!r}")
    path = os.fspath(path)
    requests: list[TraceRequest] = []
    seen: dict[str, int] = {}
    for lineno, text in enumerate(split_lines(_read_text(path)), start=1):
        if not text.strip():
            continue
        req = _parse_request(path, lineno, len(requests), _decode_line(path, lineno, text))
        first_line = seen.setdefault(req.request_id, lineno)
        if first_line != lineno:
            raise TraceError(path, f"duplicate id {_brief_repr(req.request_id)} (first on line {first_line})", lineno,
                             "request_id")
        requests.append(req)
    if not requests:
        raise TraceError(path, "trace has no requests (the file is empty or has only blank lines)")
    warnings = _check_order(path, requests, on_unsorted)
    return Trace(path, requests, warnings)


def _format_request(r: TraceRequest) -> str:
    """One request as a JSON line with a fixed key order; refuses values that read_trace would refuse."""
    t = float(r.arrival_time)
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"request {_brief_repr(r.request_id)}: arrival_time must be finite and >= 0, got {t!r}")
    counts = []
    for name in ("prompt_tokens", "output_tokens"):
        v = getattr(r, name)
        if isinstance(v, bool) or int(v) != v or v < 1:
            raise ValueError(f"request {_brief_repr(r.request_id)}: {name} must be an integer >= 1, "
                             f"got {_brief_repr(v)}")
        counts.append(int(v))
    clash = _CORE_FIELDS.intersection(r.extra)
    if clash:
        raise ValueError(f"request {_brief_repr(r.request_id)}: extra fields shadow core fields {sorted(clash)}")
    parts = [
        f'"request_id": {json.dumps(str(r.request_id))}',
        f'"arrival_time": {t!r}',
        f'"prompt_tokens": {counts[0]}',
        f'"output_tokens": {counts[1]}',
    ]
    for key in sorted(r.extra):
        value = json.dumps(r.extra[key], sort_keys=True, allow_nan=False)
        parts.append(f"{json.dumps(key)}: {value}")
    return "{" + ", ".join(parts) + "}\n"


def write_trace(path: str | os.PathLike[str], requests: Iterable[TraceRequest]) -> None:
    """Write requests as JSONL with deterministic bytes (fixed key order, floats by repr) that read back exactly;
    creates the parent folder."""
    lines: list[str] = []
    seen: set[str] = set()
    for r in requests:
        rid = str(r.request_id)
        if not rid or rid in seen:
            raise ValueError(f"request_id {_brief_repr(rid)} is empty or duplicated; read_trace would refuse the file")
        seen.add(rid)
        lines.append(_format_request(r))
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write("".join(lines).encode("utf-8"))
