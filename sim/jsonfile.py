"""Reading a JSON object from a file with errors that name the file and line (model configs, profiles, prices)."""

from __future__ import annotations

import json
import os
from typing import Any


def read_json_object(path: str | os.PathLike[str], error: type[Exception] = ValueError,
                     expected: str = "a JSON object", what: str = "file") -> dict[str, Any]:
    """The object in ``path``; ``error`` with ``file[:line]: why`` when it is missing, unreadable, not JSON or not
    an object (``expected`` describes the object, ``what`` the file)."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        raise error(f"{name}: {what} not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{name}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{name}:{e.lineno}: not valid JSON: {e.msg}") from None
    if not isinstance(data, dict):
        raise error(f"{name}: expected {expected}")
    return data
