"""Seeded synthetic traces: arrival processes and request-length distributions given as small spec strings.

Arrivals (``arrival=``):
  poisson  exponential gaps at ``qps`` requests/s;
  gamma    gamma gaps with mean 1/qps and coefficient of variation ``cv`` (shape 1/cv^2; cv > 1 is bursty);
  static   every request at time 0 (a closed batch).
For poisson and gamma the first request arrives after the first gap, not at 0, so
the trace is a window of a stationary process and N / last arrival estimates the rate.
Times are rounded to the microsecond.

Lengths (``prompt_len=`` / ``output_len=``), parsed by :func:`parse_length_spec`:
  fixed:N                 always N;
  uniform:LO:HI           integers LO..HI inclusive, equally likely;
  zipf:THETA:LO:HI        bounded Zipf as in Vidur: value LO+k-1 with probability proportional to k^-THETA, k = 1..HI-LO+1
                          (THETA >= 0; 0 is uniform; sampled exactly by inverse CDF);
  lognormal:MEDIAN:SIGMA  round(MEDIAN * exp(SIGMA * Z)), Z standard normal, at least 1;
  lognormal:MEDIAN:SIGMA:MAX  the same lognormal truncated at MAX (drawn by inverse CDF below MAX: no spike);
  sharegpt                truncated lognormals fitted to ShareGPT (see SHAREGPT_PROMPT / SHAREGPT_OUTPUT).
``lengths_from=FILE`` instead draws (prompt, output) pairs jointly, with replacement,
from a JSONL trace or a CSV length table (columns num_prefill_tokens,num_decode_tokens
as in Sarathi-Serve/Vidur, or ContextTokens,GeneratedTokens as in the Azure trace).
``max_total_tokens=M`` then scales any request with prompt+output > M down to a total
of M keeping its prompt:output ratio (as Sarathi-Serve's benchmark does).

Arrivals, prompt lengths and output lengths draw from three independent streams
spawned from one seed: the same seed gives the same lengths whatever the arrival
process or rate, and a rate change only rescales the same arrival pattern.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sim.request import TraceRequest
from sim.workload.trace import MAX_ARRIVAL_SPAN_S, MAX_TOKENS, TraceError, _read_text, read_trace

ARRIVALS = ("poisson", "gamma", "static")

# ShareGPT lengths (Llama-2 tokenizer), from Sarathi-Serve's table
# sharegpt_8k_filtered_stats_llama2_tokenizer.csv (30,731 conversations). Each half is a lognormal
# truncated at the table's maximum (prompt 8141, output 1024: the table is cut at 8K tokens), with
# MEDIAN and SIGMA solved (scipy.optimize.fsolve, once) so that the truncated distribution's P50 and
# P90 equal the table's (prompt 1730 and 5696; output 415 and 834). Its P99 is then 7833 against the
# table's 7434 (+5%) and 1002 against 998; its P10 324 against 74 (the table has many very short
# prompts). results/defaults.md compares them. The untruncated fit this replaced (std of log lengths)
# had a prompt mean of 6,479 and P99 of 78,400 tokens.
SHAREGPT_PROMPT = "lognormal:2600:1.4687:8141"
SHAREGPT_OUTPUT = "lognormal:536.6:0.8767:1024"
PRESETS = {"sharegpt": (SHAREGPT_PROMPT, SHAREGPT_OUTPUT)}

_MAX_LENGTH = 2**31 - 1  # keep lognormal draws integral
_MAX_ZIPF_SUPPORT = 1_000_000
_CSV_COLUMNS = (("num_prefill_tokens", "num_decode_tokens"), ("ContextTokens", "GeneratedTokens"))
_USAGE = {
    "fixed": "fixed:N",
    "uniform": "uniform:LO:HI",
    "zipf": "zipf:THETA:LO:HI",
    "lognormal": "lognormal:MEDIAN:SIGMA[:MAX]",
}


class SpecError(ValueError):
    """A length spec string that cannot be parsed; the message shows the spec and the expected form."""


@dataclass(frozen=True)
class LengthSpec:
    """A parsed length distribution: kind plus numeric parameters."""

    kind: str
    params: tuple[float, ...]

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """Draw n token counts (int64, each >= 1)."""
        p = self.params
        if self.kind == "fixed":
            return np.full(n, int(p[0]), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(p[0]), int(p[1]), size=n, endpoint=True, dtype=np.int64)
        if self.kind == "zipf":
            lo, hi = int(p[1]), int(p[2])
            weights = np.arange(1, hi - lo + 2, dtype=np.float64) ** -p[0]
            cdf = np.cumsum(weights)
            k = np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right")
            return lo + np.minimum(k, hi - lo).astype(np.int64)
        if self.kind == "lognormal" and len(p) == 3:  # truncated at p[2]: Z drawn below the cut by inverse CDF
            from scipy.special import ndtr, ndtri
            top = ndtr(math.log(p[2] / p[0]) / p[1]) if p[1] > 0 else 1.0
            z = ndtri(np.clip(rng.random(n) * top, 1e-300, None))
            x = np.rint(p[0] * np.exp(p[1] * z))
            return np.clip(x, 1, int(p[2])).astype(np.int64)
        if self.kind == "lognormal":
            x = np.rint(p[0] * np.exp(p[1] * rng.standard_normal(n)))
            return np.clip(x, 1, _MAX_LENGTH).astype(np.int64)
        raise AssertionError(self.kind)


def _brief(text: str) -> str:
    """A spec or part of one for a message, at most 60 characters."""
    shown = repr(text)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _spec_error(spec: str, why: str, kind: str | None = None) -> SpecError:
    forms = _USAGE[kind] if kind in _USAGE else ", ".join(list(_USAGE.values()) + list(PRESETS))
    return SpecError(f"invalid length spec {_brief(spec)}: {why} (expected {forms})")


def _number(spec: str, kind: str, text: str, name: str, integer: bool) -> float:
    """A spec parameter: ASCII digits only (int() reads '１２' and '1_000'), finite, and for a length at most
    _MAX_LENGTH (a larger one would overflow the int64 draws)."""
    what = "an integer" if integer else "a number"
    stripped = text.strip()
    if len(stripped) > 40:  # no parameter needs 40 characters (int() refuses 4,300 digits, slowly)
        raise _spec_error(spec, f"{name} must be {what} of at most 40 characters, got {len(stripped):,}", kind)
    if not stripped.isascii() or "_" in stripped:
        raise _spec_error(spec, f"{name} must be {what} in ASCII digits, got {_brief(text)}", kind)
    try:
        value = int(stripped) if integer else float(stripped)
    except ValueError:
        raise _spec_error(spec, f"{name} must be {what}, got {_brief(text)}", kind) from None
    if not math.isfinite(value):
        raise _spec_error(spec, f"{name} must be finite, got {_brief(text)}", kind)
    if name in ("N", "LO", "HI", "MEDIAN", "MAX") and value > _MAX_LENGTH:
        raise _spec_error(spec, f"{name} must be at most {_MAX_LENGTH:,} tokens (2^31 - 1), got {_brief(text)}", kind)
    return value


def parse_length_spec(spec: str, role: str = "prompt") -> LengthSpec:
    """Parse a length spec string (fixed/uniform/zipf/lognormal/preset); role picks a preset's prompt or output half."""
    if role not in ("prompt", "output"):
        raise ValueError(f"role must be 'prompt' or 'output', got {role!r}")
    text = spec.strip()
    if text in PRESETS:
        return parse_length_spec(PRESETS[text][0 if role == "prompt" else 1], role)
    if not text:
        raise _spec_error(spec, "empty spec")
    kind, *args = text.split(":")
    kind = kind.strip().lower()
    if kind not in _USAGE:
        raise _spec_error(spec, f"unknown distribution {_brief(kind)}")
    arity = _USAGE[kind].replace("[:MAX]", "").count(":")
    if len(args) != arity and not (kind == "lognormal" and len(args) == 3):
        raise _spec_error(spec, f"{kind} takes {arity} parameter(s), got {len(args)}", kind)
    if kind == "fixed":
        n = _number(spec, kind, args[0], "N", True)
        if n < 1:
            raise _spec_error(spec, f"N must be >= 1, got {n}", kind)
        return LengthSpec(kind, (n,))
    if kind == "lognormal":
        median = _number(spec, kind, args[0], "MEDIAN", False)
        sigma = _number(spec, kind, args[1], "SIGMA", False)
        if median < 1 or not 0 <= sigma <= 10:
            raise _spec_error(spec, "need MEDIAN >= 1 and 0 <= SIGMA <= 10", kind)
        if len(args) == 3:
            top = _number(spec, kind, args[2], "MAX", True)
            if not 1 <= top <= _MAX_LENGTH or (sigma == 0 and top < median):
                raise _spec_error(spec, f"need 1 <= MAX <= {_MAX_LENGTH} (and MAX >= MEDIAN when SIGMA is 0)", kind)
            return LengthSpec(kind, (median, sigma, top))
        return LengthSpec(kind, (median, sigma))
    theta = (_number(spec, kind, args.pop(0), "THETA", False),) if kind == "zipf" else ()
    if theta and theta[0] < 0:
        raise _spec_error(spec, f"THETA must be >= 0, got {theta[0]}", kind)
    lo = _number(spec, kind, args[0], "LO", True)
    hi = _number(spec, kind, args[1], "HI", True)
    if not 1 <= lo <= hi:
        raise _spec_error(spec, f"need 1 <= LO <= HI, got LO={lo} HI={hi}", kind)
    if kind == "zipf" and hi - lo + 1 > _MAX_ZIPF_SUPPORT:
        raise _spec_error(spec, f"HI-LO+1 must be at most {_MAX_ZIPF_SUPPORT}", kind)
    return LengthSpec(kind, theta + (lo, hi))


def load_length_pairs(path: str | os.PathLike[str]) -> np.ndarray:
    """(prompt, output) token pairs, shape (n, 2), from a JSONL trace or a CSV length table (read within bounds: a
    FIFO without a writer does not block, a stream stops at sim.inputs.MAX_STREAM_BYTES)."""
    path = os.fspath(path)
    if not path.lower().endswith(".csv"):
        trace = read_trace(path)
        return np.array([(r.prompt_tokens, r.output_tokens) for r in trace.requests], dtype=np.int64)
    try:
        text = _read_text(path)
    except TraceError as exc:
        if exc.reason == "trace file not found":
            raise TraceError(path, "length table not found") from None
        raise
    rows = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [c.strip() for c in next(rows, None) or []]
    except csv.Error as exc:
        raise TraceError(path, f"unreadable CSV header: {exc}", 1) from None
    cols = next(((header.index(a), header.index(b), a, b) for a, b in _CSV_COLUMNS
                 if a in header and b in header), None)
    if cols is None:
        wanted = " or ".join(f"{a},{b}" for a, b in _CSV_COLUMNS)
        raise TraceError(path, f"CSV header needs columns {wanted}, got {_brief(','.join(header))}", 1)
    ia, ib, na, nb = cols
    for name in (na, nb):
        if header.count(name) > 1:
            raise TraceError(path, "appears twice in the CSV header (which one is meant?)", 1, name)
    pairs = []
    try:
        for row in rows:
            if not row:
                continue
            pairs.append([_table_count(path, rows.line_num, name, row[idx] if idx < len(row) else "")
                          for idx, name in ((ia, na), (ib, nb))])
    except csv.Error as exc:
        raise TraceError(path, f"unreadable CSV row: {exc}", rows.line_num) from None
    if not pairs:
        raise TraceError(path, "length table has no rows")
    return np.array(pairs, dtype=np.int64)


def _table_count(path: str, lineno: int, name: str, cell: str) -> int:
    """A length table's token count: an integer >= 1 (3.0 counts as 3) of ASCII digits, at most MAX_TOKENS."""
    text = cell.strip()
    value = math.nan
    if text.isascii() and "_" not in text and len(text) <= 40:
        try:
            value = float(text)
        except ValueError:
            pass
    if not (math.isfinite(value) and value.is_integer() and 1 <= value <= MAX_TOKENS):
        raise TraceError(path, f"expected an integer from 1 to 2^53, got {_brief(cell)}", lineno, name)
    return int(value)


def clip_total_tokens(prompt: np.ndarray, output: np.ndarray, max_total: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale (prompt, output) pairs whose sum exceeds max_total down to that total, keeping their ratio."""
    if max_total < 2:
        raise ValueError(f"max_total_tokens must be >= 2 (one prompt and one output token), got {max_total}")
    total = prompt + output
    over = total > max_total
    new_prompt = np.clip(np.rint(max_total * prompt / total), 1, max_total - 1).astype(np.int64)
    return np.where(over, new_prompt, prompt), np.where(over, max_total - new_prompt, output)


def clip_total(requests: Sequence[TraceRequest], max_total: int) -> list[TraceRequest]:
    """Scale requests with prompt + output > ``max_total`` down to that total, keeping their prompt:output ratio."""
    prompt = np.fromiter((r.prompt_tokens for r in requests), dtype=np.int64, count=len(requests))
    output = np.fromiter((r.output_tokens for r in requests), dtype=np.int64, count=len(requests))
    new_p, new_o = clip_total_tokens(prompt, output, int(max_total))
    from sim.workload.reuse import fit_reuse  # reuse fields must not describe tokens the request no longer has
    return [r if (p == r.prompt_tokens and o == r.output_tokens) else
            dataclasses.replace(r, prompt_tokens=p, output_tokens=o, extra=fit_reuse(r.extra, p + o))
            for r, p, o in zip(requests, new_p.tolist(), new_o.tolist())]



#: the gaps' coefficient of variation a gamma process may have: past 100 its shape (1/CV^2) is so small that most
#: gaps draw as 0 and the mean rate is lost; below 0.001 it is a fixed rate
MIN_CV, MAX_CV = 1e-3, 100.0


def generate_arrivals(rng: np.random.Generator, n: int, arrival: str, qps: float, cv: float) -> np.ndarray:
    """Arrival times (seconds, non-decreasing, rounded to 1 us) of n requests; SpecError for a rate or CV out of
    bounds, or a rate so low that they would span more than MAX_ARRIVAL_SPAN_S."""
    if arrival not in ARRIVALS:
        raise ValueError(f"arrival must be one of {', '.join(ARRIVALS)}, got {arrival!r}")
    if arrival == "static":
        return np.zeros(n)
    if not (math.isfinite(qps) and qps > 0):
        raise SpecError(f"qps must be a finite number > 0, got {qps}")
    if n / qps > MAX_ARRIVAL_SPAN_S:  # refused before drawing: such gaps may overflow a float64
        raise SpecError(f"qps {qps:g} spreads {n:,} arrivals over about {n / qps:.3g} s, more than a trace may span "
                        f"({MAX_ARRIVAL_SPAN_S:g} s, 31.7 years); give a higher rate")
    if arrival == "poisson":
        gaps = rng.standard_exponential(n) / qps
    else:
        if not (math.isfinite(cv) and MIN_CV <= cv <= MAX_CV):
            raise SpecError(f"cv must be a finite number from {MIN_CV:g} to {MAX_CV:g}, got {cv}")
        shape = 1.0 / (cv * cv)
        gaps = rng.standard_gamma(shape, n) / (shape * qps)
    times = np.round(np.cumsum(gaps), 6)
    if n and not times[-1] <= MAX_ARRIVAL_SPAN_S:
        raise SpecError(f"qps {qps:g} spread these {n:,} {arrival} arrivals over {times[-1]:.3g} s, more than a trace "
                        f"may span ({MAX_ARRIVAL_SPAN_S:g} s, 31.7 years); give a higher rate")
    return times


def generate_trace(
    num_requests: int,
    *,
    arrival: str = "poisson",
    qps: float = 1.0,
    cv: float = 1.0,
    prompt_len: str | None = None,
    output_len: str | None = None,
    lengths_from: str | os.PathLike[str] | None = None,
    max_total_tokens: int | None = None,
    seed: int = 0,
    turns: int = 1,
    think_time_s: float = 0.0,
    system_prompt: tuple[int, float] | None = None,
) -> list[TraceRequest]:
    """A synthetic trace of num_requests requests (ids "0".."N-1"); the same arguments give the same trace.

    prompt_len/output_len default to the 'sharegpt' preset; lengths_from replaces both
    (giving it together with either is an error). With ``turns`` > 1 consecutive requests become
    conversations whose turns resend the earlier ones (``sim.workload.reuse``; the lengths drawn are
    each turn's new message); ``system_prompt`` = (tokens, fraction) prepends a shared system prompt.
    """
    if isinstance(num_requests, bool) or not isinstance(num_requests, (int, np.integer)) or num_requests < 1:
        raise ValueError(f"num_requests must be an integer >= 1, got {num_requests!r}")
    n = int(num_requests)
    arr_ss, prompt_ss, output_ss, reuse_ss = np.random.SeedSequence(seed).spawn(4)  # the first three as before
    times = generate_arrivals(np.random.default_rng(arr_ss), n, arrival, qps, cv)
    if lengths_from is not None:
        if prompt_len is not None or output_len is not None:
            raise ValueError("lengths_from samples (prompt, output) pairs; do not also give prompt_len/output_len")
        pairs = load_length_pairs(lengths_from)
        picked = pairs[np.random.default_rng(prompt_ss).integers(0, len(pairs), size=n)]
        prompt, output = picked[:, 0], picked[:, 1]
    else:
        pspec = parse_length_spec(prompt_len or "sharegpt", "prompt")
        ospec = parse_length_spec(output_len or "sharegpt", "output")
        prompt = pspec.sample(np.random.default_rng(prompt_ss), n)
        output = ospec.sample(np.random.default_rng(output_ss), n)
    reuse = turns > 1 or system_prompt is not None
    if max_total_tokens is not None and not reuse:
        prompt, output = clip_total_tokens(prompt, output, int(max_total_tokens))
    trace = [
        TraceRequest(str(i), float(t), int(p), int(o))
        for i, (t, p, o) in enumerate(zip(times.tolist(), prompt.tolist(), output.tolist()))
    ]
    if reuse:
        from sim.workload.reuse import add_system_prompt, make_sessions
        session_ss, system_ss = reuse_ss.spawn(2)
        if turns > 1:
            trace = make_sessions(trace, turns, think_time_s, np.random.default_rng(session_ss))
        if system_prompt is not None:
            trace = add_system_prompt(trace, *system_prompt, np.random.default_rng(system_ss))
        if max_total_tokens is not None:  # after the turns and the system prompt have lengthened the prompts
            trace = clip_total(trace, int(max_total_tokens))  # (a clipped prompt keeps its leading, shared tokens)
    return trace
