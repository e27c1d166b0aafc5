"""Reading input files within bounds: bytes from files, pipes and devices; JSON objects with errors naming file and line.

Every reader of a user's file (traces, model configs, profiles, prices, deployment files) goes through
``read_input_bytes``, so a FIFO with no writer cannot block and ``/dev/zero`` cannot fill memory.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from typing import Any

#: the most bytes read from something that is not a regular file (a pipe, a FIFO, a device): a regular file's
#: size is known before reading, a stream's is not
MAX_STREAM_BYTES = 1 << 30


class InputTooLargeError(ValueError):
    """A stream longer than MAX_STREAM_BYTES (the message names the path and the limit)."""


def read_input_bytes(path: str | os.PathLike[str], max_stream_bytes: int | None = None) -> bytes:
    """The bytes of ``path``; OSError as ``open`` raises it; InputTooLargeError past the stream limit.

    A FIFO is opened without waiting for a writer (none yet: read as empty, never a hang)."""
    name = os.fspath(path)
    limit = MAX_STREAM_BYTES if max_stream_bytes is None else max_stream_bytes
    fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(21, "Is a directory", name)
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)  # blocking reads from here on
        with os.fdopen(fd, "rb", closefd=False) as fh:
            if stat.S_ISREG(mode):
                return fh.read()
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise InputTooLargeError(f"{name}: more than {limit:,} bytes from a stream (not a regular file); "
                                 "write it to a file first")
    return data


def read_json_object(path: str | os.PathLike[str], error: type[Exception] = ValueError,
                     expected: str = "a JSON object", what: str = "file") -> dict[str, Any]:
    """The object in ``path``; ``error`` with ``file[:line]: why`` when it is missing, unreadable, not JSON or not
    an object (``expected`` describes the object, ``what`` the file)."""
    name = os.fspath(path)
    try:
        text = read_input_bytes(name).decode("utf-8")
    except FileNotFoundError:
        raise error(f"{name}: {what} not found") from None
    except InputTooLargeError as e:
        raise error(str(e)) from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{name}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{name}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{name}: expected {expected}")
    return data
