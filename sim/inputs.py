"""Reading input files within bounds: bytes from files, pipes and devices; JSON objects with errors naming file and line.

Every reader of a user's file (traces, model configs, profiles, prices, deployment files) goes through
``read_input_bytes``, so a FIFO with no writer cannot block and ``/dev/zero`` cannot fill memory.
``read_json_object`` also refuses, naming the file, the line and the field, what ``json`` would read
silently or crash on: a key given twice (``json`` keeps the last), NaN, Infinity and numbers past the
float range (1e999), integers too long to convert, and nesting deep enough to exhaust the recursion
limit. For YAML and TOML files, ``too_deep`` finds deep nesting before a recursive parser meets it,
``structure_problem`` counts keys and depth of what was parsed, and ``long_integer`` names the line of an
integer too long to convert. ``brief`` bounds what an error message echoes of a value.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import reprlib
import stat
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

#: the most bytes read from something that is not a regular file (a pipe, a FIFO, a device): a regular file's
#: size is known before reading, a stream's is not
MAX_STREAM_BYTES = 1 << 30
#: the most bytes of a JSON object file: a config.json, a profile.json or a price file is kilobytes
MAX_JSON_BYTES = 16 << 20
#: the deepest nesting of a JSON object file (config.json nests 3 levels, profile.json 4): far below the depth
#: at which ``json``'s recursive parser exhausts Python's recursion limit (about 1,000)
MAX_JSON_DEPTH = 64
#: the most digits of an integer in a JSON file: int64 has 19; Python refuses to convert past 4,300
MAX_INT_DIGITS = 40
#: how much of a value an error message shows (a 5 MB string or a 5,000-digit number is cut to this)
BRIEF_CHARS = 60
#: how much of a path an error message shows (its end: the file name is the informative part)
BRIEF_PATH_CHARS = 160

#: a JSON string literal (a key or a value)
_STRING = r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"'
_STRING_RE = re.compile(_STRING)
#: what a bracket scan of YAML or TOML skips: quoted strings and comments
YAML_TOML_SKIP = re.compile(_STRING + r"|'[^'\n]*'|#[^\n]*")


class InputTooLargeError(ValueError):
    """A stream longer than MAX_STREAM_BYTES, or a file past its reader's bound (the message names both)."""


class _Short(reprlib.Repr):
    """reprlib's bounded repr, with integers too long to print as digits described by their length."""

    def repr_int(self, x: int, level: int) -> str:
        return _int_text(x)


_SHORT = _Short()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, BRIEF_CHARS, BRIEF_CHARS, BRIEF_CHARS
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4


def _int_text(x: int) -> str:
    """``repr(x)``, or 'an integer of about N digits' where that would be long (or beyond Python's conversion)."""
    if x.bit_length() <= 190:  # at most 58 digits
        return repr(x)
    return f"{'a negative' if x < 0 else 'an'} integer of about {int(x.bit_length() * math.log10(2)) + 1:,} digits"


def brief(value: Any, width: int = BRIEF_CHARS) -> str:
    """``repr(value)`` cut to about ``width`` characters, for error messages: never echo a whole huge value."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(value)
    try:
        s = _SHORT.repr(value)
    except Exception:  # noqa: BLE001 - a value that cannot be shown must not hide the error it is part of
        s = f"<{type(value).__name__}>"
    if len(s) > width:
        s = s[:width - 3] + "..."
    if isinstance(value, (str, bytes)) and len(value) > width:
        s += f" ({len(value):,} characters)"
    return s


def brief_json(value: Any, width: int = BRIEF_CHARS) -> str:
    """A bad value as its input wrote it (JSON: null, true), cut to ``width`` characters; repr where JSON cannot."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _int_text(value)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = brief(value, width)
    return text if len(text) <= width else text[:width - 3] + "..."


def brief_text(text: Any, width: int = 120) -> str:
    """Text for a message (an exception's, a parser's): on one line, cut to ``width`` characters."""
    s = " ".join(str(text)[:4 * width].split())
    return s if len(s) <= width else s[:width - 3] + "..."


def brief_name(path: str | os.PathLike[str]) -> str:
    """A path for an error message: whole, or its last BRIEF_PATH_CHARS characters after '...'."""
    name = os.fsdecode(path) if isinstance(path, (bytes, os.PathLike)) else str(path)
    return name if len(name) <= BRIEF_PATH_CHARS else "..." + name[-BRIEF_PATH_CHARS:]


def read_input_bytes(path: str | os.PathLike[str], max_stream_bytes: int | None = None,
                     max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``; OSError as ``open`` raises it; InputTooLargeError past the stream limit, or past
    ``max_bytes`` for any file (regular files are checked by size before reading).

    A FIFO is opened without waiting for a writer (none yet: read as empty, never a hang)."""
    name = os.fspath(path)
    limit = MAX_STREAM_BYTES if max_stream_bytes is None else max_stream_bytes
    if max_bytes is not None:
        limit = min(limit, max_bytes)
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(21, "Is a directory", name)
        if stat.S_ISREG(st.st_mode) and max_bytes is not None and st.st_size > max_bytes:
            raise InputTooLargeError(f"{brief_name(name)}: {st.st_size:,} bytes, more than the {max_bytes:,} bytes "
                                     "this file may hold")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # blocking reads from here on
        with os.fdopen(fd, "rb", closefd=False) as fh:
            if stat.S_ISREG(st.st_mode) and max_bytes is None:
                return fh.read()
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        if max_bytes is not None and limit == max_bytes:
            raise InputTooLargeError(f"{brief_name(name)}: more than the {max_bytes:,} bytes this file may hold")
        raise InputTooLargeError(f"{brief_name(name)}: more than {limit:,} bytes from a stream (not a regular "
                                 "file); write it to a file first")
    return data


def read_input_text(path: str | os.PathLike[str], error: type[Exception] = ValueError, what: str = "file",
                    max_bytes: int | None = None) -> str:
    """The UTF-8 text of ``path`` (read by ``read_input_bytes``); ``error`` naming the file when it is missing,
    unreadable, too large or not UTF-8 (with the line of the first bad byte)."""
    name = brief_name(path)
    try:
        data = read_input_bytes(path, max_bytes=max_bytes)
    except FileNotFoundError:
        raise error(f"{name}: {what} not found") from None
    except InputTooLargeError as e:
        raise error(str(e)) from None
    except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
        raise error(f"{name}: cannot read: {brief_text(getattr(e, 'strerror', None) or e)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{name}:{line}: not UTF-8 text (byte {data[e.start]:#04x})") from None


def long_integer(text: str, skip: re.Pattern[str] | None = None) -> str | None:
    """'LINE: key 'K': an integer of N digits (too long to read)' for the first integer of a YAML or TOML ``text``
    past Python's conversion limit (strings and comments skipped), or None: its parser's error names neither."""
    plain = (skip or YAML_TOML_SKIP).sub('""', text)
    m = re.search(rf"\d{{{sys.get_int_max_str_digits() or 4300},}}", plain)
    if m is None:
        return None
    start = plain.rfind("\n", 0, m.start()) + 1
    key = re.match(r"\s*([\w.-]+)\s*[:=]", plain[start:m.start()])
    field = f" key '{brief_text(key[1], 60)}':" if key else ""
    return f"{plain.count(chr(10), 0, start) + 1}:{field} an integer of {len(m[0]):,} digits (too long to read)"


def structure_problem(data: Any, max_keys: int, max_nesting: int) -> str | None:
    """Why parsed ``data`` holds more than ``max_keys`` keys or nests deeper than ``max_nesting``, or None.

    Each object counts once: YAML aliases share objects (a 'billion laughs' file is small) and may hold
    themselves."""
    keys, seen, todo = 0, set(), [(data, 0)]
    while todo:
        node, depth = todo.pop()
        if not isinstance(node, (dict, list)) or id(node) in seen:
            continue
        seen.add(id(node))
        if depth >= max_nesting:
            return f"nested more than {max_nesting} levels deep"
        keys += len(node) if isinstance(node, dict) else 0
        if keys > max_keys:
            return f"more than {max_keys:,} keys"
        todo.extend((v, depth + 1) for v in (node.values() if isinstance(node, dict) else node))
    return None


# ---- JSON ---------------------------------------------------------------------------------------------------

#: a JSON text's keys (a string and its colon), strings, brackets, numbers and line breaks, in order
_TOKENS = re.compile(rf'({_STRING})(\s*:)?|[][{{}}\n]|-?(?:Infinity|\d[\d.eE+-]*)|NaN')


class JSONObject(dict):
    """A JSON file's top-level object that can tell the line of a key (for error messages)."""

    text: str = ""

    def line_of(self, field: str) -> int | None:
        """The line of the first key at dotted path ``field`` ('quantization_config.quant_method'), or None."""
        return next((line for _pos, line, path, kind, _tok, _rep in _walk(self.text)
                     if kind == "key" and path == field), None)


class _Refused(ValueError):
    """A literal the JSON reader refuses (a repeated key, a non-finite number, an overlong integer)."""


def _walk(text: str) -> Iterator[tuple[int, int, str, str, str, bool]]:
    """(position, line, field in force, kind, token, repeated key) for each key, number and bracket of ``text``.

    The field in force is the dotted path of the innermost open object's last key (inside an array, the
    array's field), so a value's field is that of the last token before it."""
    line = 1
    stack: list[list[Any]] = [["", "", set()]]  # [container's field, last key's field, keys seen (None: array)]
    for m in _TOKENS.finditer(text):
        tok, top = m.group(), stack[-1]
        if tok == "\n":
            line += 1
            continue
        kind, repeated = "number", False
        if tok in ("{", "["):
            kind = "open"
            stack.append([top[1] or top[0], "", set() if tok == "{" else None])
        elif tok in ("}", "]"):
            kind = "close"
            if len(stack) > 1:
                stack.pop()
        elif m.group(1) is not None:
            kind = "string"
            if m.group(2) is not None and top[2] is not None:
                kind, name = "key", json.loads(m.group(1))
                repeated = name in top[2]
                top[2].add(name)
                top[1] = f"{top[0]}.{name}" if top[0] else name
        yield m.start(), line, stack[-1][1] or stack[-1][0], kind, tok, repeated
        line += tok.count("\n")  # line breaks between a key and its colon


def _number_problem(tok: str) -> str | None:
    """Why the number literal ``tok`` is refused, or None."""
    if tok in ("NaN", "Infinity", "-Infinity"):
        return f"{tok} is not a finite number"
    digits = len(tok.lstrip("-"))
    if re.fullmatch(r"-?\d+", tok):
        return f"an integer of {digits:,} digits (at most {MAX_INT_DIGITS})" if digits > MAX_INT_DIGITS else None
    try:
        finite = math.isfinite(float(tok))
    except ValueError:
        return None  # not a number json reads: its own syntax error
    return None if finite else f"{brief(tok, 30)} is beyond the range of a float (about 1.8e308)"


def _parse_number(tok: str) -> Any:
    """A number literal as ``json`` reads it, refusing what ``_number_problem`` refuses."""
    if _number_problem(tok):
        raise _Refused(tok)
    return int(tok) if re.fullmatch(r"-?\d+", tok) else float(tok)


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object, refusing a key given twice (``json`` would keep the last silently)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Refused("repeated key")
    return out


def too_deep(text: str, limit: int, skip: re.Pattern[str] = _STRING_RE) -> int | None:
    """The line of the first bracket nested deeper than ``limit`` in ``text`` (what ``skip`` matches, strings,
    left out), or None; linear and vectorised, so it runs before a recursive parser could exhaust the stack."""
    if text.count("[") + text.count("{") <= limit:
        return None
    raw = np.frombuffer(skip.sub('""', text).encode("utf-8", "surrogatepass"), np.uint8)
    marks = np.flatnonzero((raw == ord("[")) | (raw == ord("{")) | (raw == ord("]")) | (raw == ord("}")))
    step = np.where((raw[marks] == ord("[")) | (raw[marks] == ord("{")), 1, -1).astype(np.int32)
    depth = np.cumsum(step)
    over = np.flatnonzero(depth > limit)
    if not len(over):
        return None
    return int(np.count_nonzero(raw[:marks[over[0]]] == ord("\n"))) + 1


def read_json_object(path: str | os.PathLike[str], error: type[Exception] = ValueError,
                     expected: str = "a JSON object", what: str = "file",
                     max_bytes: int = MAX_JSON_BYTES) -> JSONObject:
    """The object in ``path``; ``error`` with ``file[:line][: field 'NAME']: why`` when it is missing, unreadable,
    larger than ``max_bytes``, not JSON, not an object (``expected`` describes the object, ``what`` the file),
    nested deeper than MAX_JSON_DEPTH, or holds a repeated key, a non-finite number or an overlong integer."""
    name = brief_name(path)
    text = read_input_text(path, error, what, max_bytes)
    deep = too_deep(text, MAX_JSON_DEPTH)
    if deep is not None:
        raise error(f"{name}:{deep}: nested more than {MAX_JSON_DEPTH} levels deep (the most a {what} may nest)")
    try:
        data = json.loads(text, object_pairs_hook=_pairs, parse_int=_parse_number, parse_float=_parse_number,
                          parse_constant=_parse_number)
    except json.JSONDecodeError as e:
        raise error(f"{name}:{e.lineno}: not valid JSON: {e.msg}") from None
    except _Refused:
        raise error(_refusal(name, text)) from None
    except RecursionError:  # not reached below MAX_JSON_DEPTH; kept so that no traceback can escape
        raise error(f"{name}: nested too deeply to read") from None
    if not isinstance(data, dict):
        raise error(f"{name}: expected {expected}")
    out = JSONObject(data)
    out.text = text
    return out


def _field_text(field: str) -> str:
    """A dotted field path for a message, cut past 80 characters."""
    if not field:
        return "(top level)"
    return field if len(field) <= 80 else field[:77] + "..."


def _refusal(name: str, text: str) -> str:
    """The message of the first literal of ``text`` that ``read_json_object`` refuses."""
    for _pos, line, field, kind, tok, repeated in _walk(text):
        why = ("key given twice (JSON would silently keep the last): give it once" if repeated
               else _number_problem(tok) if kind == "number" else None)
        if why:
            return f"{name}:{line}: field '{_field_text(field)}': {why}"
    return f"{name}: a repeated key or a number out of range"
