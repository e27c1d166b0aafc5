"""The measured run every reader returns: per-request figures in the client's own terms, its metric definitions and
its load configuration, plus the checked field access the readers share (errors name the file and the field).

Times are seconds. ``send_time`` is on the client's clock (the engine's for vLLM's engine timestamps), relative to
the run's first send. A reader fills what its format records and leaves the rest ``None``.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field
from typing import Any

from sim.inputs import MAX_JSON_DEPTH, brief_json, brief_name, read_input_text, too_deep

#: the largest result file read (a --save-detailed vLLM result of 10k requests, generated texts included, is tens
#: of MB; a per-request inference-perf report of 100k requests about 200 MB)
MAX_RESULT_BYTES = 512 << 20


class MeasuredError(ValueError):
    """A benchmark result that cannot be read; the message names the file, the line when known, and the field."""


@dataclass(frozen=True)
class Definitions:
    """How the client defines its metrics, so that servesim's side is computed the same way.

    ``metrics`` maps each metric the client reports to its formula (``FORMULAS`` in sim.measured.compare) and
    label: e.g. vLLM's ``itl`` is every gap between streamed chunks (``gaps``), GuideLLM's ``inter_token_latency``
    each request's mean gap (``mean_gap``)."""

    clock: str                     # "client" (send to receive) or "engine" (vLLM's engine timestamps)
    metrics: tuple[tuple[str, str, str], ...]  # (client's key, formula, label)
    percentile: str = "numpy linear interpolation (numpy.percentile's default)"
    percentile_method: str = "linear"  # "linear" (numpy's default) or "inverse_cdf" (smallest value reaching p)
    failed: str = "left out of every latency metric"
    note: str = ""


@dataclass
class MeasuredRequest:
    """One request as the client recorded it (None: not recorded)."""

    input_tokens: int
    output_tokens: int
    send_time: float | None = None      # seconds from the run's first send
    ttft: float | None = None           # the client's time to first token
    latency: float | None = None        # send to the last token (the client's end-to-end)
    gaps: tuple[float, ...] | None = None  # gaps between streamed chunks or tokens, as the client recorded them
    success: bool = True
    error: str | None = None
    queue: float | None = None          # engine-side: first scheduled minus queued (vLLM's engine timestamps)
    hash_ids: tuple[int, ...] | None = None  # the prompt's chained block ids, where token ids are known
    hash_block_size: int = 16


@dataclass
class MeasuredRun:
    """One measured benchmark (one load stage of a multi-stage run): what ``servesim validate --measured`` replays."""

    source: str                          # the file or folder read
    format: str                          # vllm-bench, inference-perf, guidellm, aiperf, vllm-engine
    client: str                          # the client's name, as the report shows it
    client_version: str | None
    definitions: Definitions
    requests: list[MeasuredRequest]
    summary: dict[str, dict[str, float]] = field(default_factory=dict)  # the client's own figures, seconds
    load: dict[str, Any] = field(default_factory=dict)    # rate, burstiness, seed, concurrency, dataset, stages
    deployment: dict[str, Any] = field(default_factory=dict)  # SimConfig fields the result records (hints)
    label: str = ""                      # the stage or benchmark within the source
    duration_s: float | None = None      # the client's benchmark duration
    exact: bool = True                   # per-request lengths and send times recorded (else reconstructed)
    not_expressible: str | None = None   # why servesim cannot configure the measured deployment
    notes: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> list[MeasuredRequest]:
        return [r for r in self.requests if r.success]


# ---- checked field access -------------------------------------------------------------------------------

class Fields:
    """Field access on one parsed JSON object of ``path`` (at ``line`` for JSON Lines) that raises MeasuredError
    naming the file, the line and the dotted field when a value is missing or of the wrong kind."""

    def __init__(self, path: str, data: Any, prefix: str = "", line: int | None = None) -> None:
        self.path, self.data, self.prefix, self.line = str(path), data, prefix, line

    def where(self, key: str | int | None = None) -> str:
        name = f"{self.prefix}.{key}" if self.prefix and key is not None else (self.prefix or str(key or ""))
        loc = brief_name(self.path) + (f":{self.line}" if self.line else "")
        return f"{loc}: field '{name}'" if name else loc

    def fail(self, key: str | int | None, why: str) -> MeasuredError:
        return MeasuredError(f"{self.where(key)}: {why}")

    def has(self, key: str) -> bool:
        return isinstance(self.data, dict) and self.data.get(key) is not None

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default) if isinstance(self.data, dict) else default

    def sub(self, key: str, *, required: bool = True) -> Fields | None:
        """The object at ``key`` (None when absent and not required)."""
        v = self.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, dict):
            raise self.fail(key, "missing" if v is None else f"expected an object, got {brief_json(v)}")
        return Fields(self.path, v, f"{self.prefix}.{key}" if self.prefix else key, self.line)

    def number(self, key: str, *, required: bool = True, low: float = 0.0, scale: float = 1.0) -> float | None:
        """A finite number >= ``low`` (times ``scale``, e.g. 1e-3 for milliseconds)."""
        v = self.get(key)
        if v is None:
            if required:
                raise self.fail(key, "missing")
            return None
        return check_number(v, self.where(key), low) * scale

    def integer(self, key: str, *, required: bool = True, low: int = 0) -> int | None:
        v = self.get(key)
        if v is None:
            if required:
                raise self.fail(key, "missing")
            return None
        return check_integer(v, self.where(key), low)

    def array(self, key: str, length: int | None = None, *, required: bool = True) -> list | None:
        """A list, of ``length`` items when given (the per-request arrays of one result agree in length)."""
        v = self.get(key)
        if v is None:
            if required:
                raise self.fail(key, "missing")
            return None
        if not isinstance(v, list):
            raise self.fail(key, f"expected a list, got {brief_json(v)}")
        if length is not None and len(v) != length:
            raise self.fail(key, f"{len(v):,} items where the result's other per-request lists have {length:,}")
        return v

    def text(self, key: str, default: str | None = None) -> str | None:
        v = self.get(key)
        return default if v is None else str(v)


#: the largest number a result may record, in its own unit (1e20: nanoseconds since the epoch are ~1.8e18 today; a
#: larger time or count is corruption, not a measurement) and the largest integer (int64, what numpy holds)
MAX_VALUE = 1e20
MAX_INTEGER = 2**63 - 1


def check_number(v: Any, where: str, low: float = 0.0) -> float:
    """``v`` as a finite float in [``low``, MAX_VALUE]; MeasuredError naming ``where`` otherwise."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < low:
        raise MeasuredError(f"{where}: expected a finite number >= {low:g}, got {brief_json(v)}")
    if v > MAX_VALUE:
        raise MeasuredError(f"{where}: expected a number <= {MAX_VALUE:g}, got {brief_json(v)}")
    return float(v)


def check_integer(v: Any, where: str, low: int = 0) -> int:
    """``v`` as an int in [``low``, 2^63 - 1] (an integral float such as 3.0 is accepted: some clients write every
    number so)."""
    ok = not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and v.is_integer()))
    if not ok or v < low:
        raise MeasuredError(f"{where}: expected an integer >= {low}, got {brief_json(v)}")
    if v > MAX_INTEGER:
        raise MeasuredError(f"{where}: expected an integer <= {MAX_INTEGER}, got {brief_json(v)}")
    return int(v)


def check_numbers(v: Any, f: Fields, key: str, scale: float = 1.0) -> tuple[float, ...]:
    """The list at ``key`` of ``f`` (already fetched as ``v``): finite numbers >= 0, times ``scale``."""
    if not isinstance(v, list):
        raise f.fail(key, f"expected a list of numbers, got {brief_json(v)}")
    return tuple(check_number(x, f.where(f"{key}[{i}]")) * scale for i, x in enumerate(v))


def read_json(path: str, what: str) -> Fields:
    """A JSON object file, bounded (sim.inputs), as Fields; MeasuredError naming the file and line otherwise."""
    from sim.inputs import read_json_object
    return Fields(path, read_json_object(path, MeasuredError, f"a JSON object ({what})", what, MAX_RESULT_BYTES))


def read_json_value(path: str, what: str) -> Any:
    """Any JSON value (a list of records, too), bounded like read_json; MeasuredError naming the file and line."""
    text = read_input_text(path, MeasuredError, what, MAX_RESULT_BYTES)
    deep = too_deep(text, MAX_JSON_DEPTH)
    if deep is not None:
        raise MeasuredError(f"{brief_name(path)}:{deep}: nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(text, parse_constant=lambda c: _refuse_constant(path, 0, c))
    except json.JSONDecodeError as e:
        raise MeasuredError(f"{brief_name(path)}:{e.lineno}: not valid JSON: {e.msg}") from None


def read_jsonl(path: str, what: str) -> list[Fields]:
    """The objects of a JSON Lines file (blank lines skipped), each as Fields knowing its line."""
    text = read_input_text(path, MeasuredError, what, MAX_RESULT_BYTES)
    out = []
    for i, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if too_deep(line, MAX_JSON_DEPTH) is not None:
            raise MeasuredError(f"{brief_name(path)}:{i}: nested more than {MAX_JSON_DEPTH} levels deep")
        try:
            obj = json.loads(line, parse_constant=functools.partial(_refuse_constant, path, i))
        except json.JSONDecodeError as e:
            raise MeasuredError(f"{brief_name(path)}:{i}: not valid JSON: {e.msg}") from None
        if not isinstance(obj, dict):
            raise MeasuredError(f"{brief_name(path)}:{i}: expected a JSON object ({what})")
        out.append(Fields(path, obj, line=i))
    if not out:
        raise MeasuredError(f"{brief_name(path)}: no records ({what})")
    return out


def _refuse_constant(path: str, line: int, constant: str) -> None:
    at = f"{brief_name(path)}:{line}" if line else brief_name(path)
    raise MeasuredError(f"{at}: {constant} is not a number a benchmark records")


def stat_block(f: Fields | None, keys: dict[str, str], scale: float) -> dict[str, float]:
    """{mean, p50, p90, p99} from a client's summary object whose keys ``keys`` names (missing ones left out)."""
    if f is None:
        return {}
    out = {}
    for ours, theirs in keys.items():
        v = f.number(theirs, required=False, scale=scale)
        if v is not None:
            out[ours] = v
    return out
