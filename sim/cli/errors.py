"""The command line's error contract, in one place, for ``servesim`` and every documented ``python -m`` tool.

Bad input (a flag, a file, a path that cannot be written) is one line on stderr, ``servesim: error: ...``,
at most about :data:`MAX_MESSAGE` characters, and exit status 2; a bug is one line naming the exception
(``SERVESIM_DEBUG=1`` shows the traceback) and exit status 1; Ctrl-C is ``servesim: interrupted``, 130.
This module imports nothing of the project, so any layer's entry point can run through :func:`run_cli`.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

#: the longest message printed: a longer one keeps its start and its end around a note of what was cut
MAX_MESSAGE = 300
#: exit status of a refused input (argparse's too)
BAD_INPUT = 2
#: exit status of a run that failed or served nothing, and of an internal error
FAILED = 1
#: exit status after Ctrl-C (128 + SIGINT), as shells report it
INTERRUPTED = 130
#: set (to anything but "" or "0") to let exceptions through with their traceback
DEBUG_ENV = "SERVESIM_DEBUG"


def one_line(text: object, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (line breaks and control characters become spaces), cut in the middle past ``limit``.

    A value echoed whole (a 5,000-digit flag, a 5 MB field) would flood the terminal; its start and end stay.
    """
    try:
        s = str(text)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not hide the error behind another
        s = f"<{type(text).__name__}>"
    n = len(s)
    if n > 2 * limit:  # only the ends can be kept: flatten just those
        s = s[:limit] + " " + s[-limit:]
    s = "".join(c if c.isprintable() else " " for c in " ".join(s.splitlines()))
    if len(s) <= limit:
        return s
    keep = max(limit - 40, 20)
    head = keep * 3 // 4
    return f"{s[:head]} ...[{n - keep:,} characters cut]... {s[len(s) - (keep - head):]}"


def error(message: object) -> None:
    """Print ``servesim: error: MESSAGE`` as one bounded line on stderr."""
    print(f"servesim: error: {one_line(message)}", file=sys.stderr)


def describe(exc: BaseException) -> str:
    """The message of a refused input: a KeyError's text, an OSError's file and reason, a size error's cause."""
    if isinstance(exc, KeyError):
        return str(exc.args[0]) if exc.args else "KeyError"
    if isinstance(exc, OSError):
        names = [os.fsdecode(n) for n in (exc.filename, exc.filename2) if n is not None]
        reason = exc.strerror or str(exc) or type(exc).__name__
        return ": ".join([" -> ".join(names), reason] if names else [reason])
    if isinstance(exc, RecursionError):
        return f"input nested too deeply to read ({exc})"
    if isinstance(exc, OverflowError):
        return f"a number out of range ({exc})"
    if isinstance(exc, MemoryError):
        return "out of memory: the input is too large for this machine" + (f" ({exc})" if str(exc) else "")
    return str(exc)


def _debug() -> bool:
    """Whether SERVESIM_DEBUG asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


def entry_point(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """``main`` under the error contract (``run_cli``), for a ``python -m`` tool: ``@entry_point def main(argv)``."""
    @functools.wraps(main)
    def wrapped(argv: Sequence[str] | None = None) -> int:
        return run_cli(main, argv)
    return wrapped


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run ``main(argv)`` under the error contract and return its exit status (argparse's SystemExit passes).

    Every entry point goes through here, so that no input ends in a traceback: refusals are one line and
    exit 2, an unexpected exception one line and exit 1, Ctrl-C (start-up included) exit 130.
    """
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("servesim: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # output piped into `head` and closed early: not an error
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout without a descriptor (captured): nothing to silence
            pass
        return 0
    except ModuleNotFoundError as e:  # an optional or missing dependency: name it and how to get it
        if _debug():
            raise
        if not e.name:
            error(e)
        else:
            hint = "pip install torch==2.13.0" if e.name == "torch" else f"pip install {e.name}"
            error(f"this command needs the Python package {e.name!r}, which is not installed ({hint})")
        return BAD_INPUT
    except (ValueError, KeyError, OSError, RecursionError, OverflowError, MemoryError) as e:
        if _debug() or not _is_input_error(e):
            raise_or_report(e)
            return FAILED
        error(describe(e))  # bad input: a value, a file, a path that cannot be written, a size beyond reach
        return BAD_INPUT
    except Exception as e:  # noqa: BLE001 - a bug: one line, the traceback on request
        raise_or_report(e)
        return FAILED


def _is_input_error(exc: BaseException) -> bool:
    """Whether ``exc`` refuses an input: any of these types, but a KeyError only with a sentence for a message
    (``KeyError("unknown model 'x'")``); a bare key (``KeyError('completed')``) is a lookup that went wrong."""
    if isinstance(exc, KeyError):
        return bool(exc.args) and isinstance(exc.args[0], str) and " " in exc.args[0]
    return True


def raise_or_report(exc: BaseException) -> None:
    """A bug: re-raised with its traceback under SERVESIM_DEBUG=1, else one line ``servesim: internal error: ...``."""
    if _debug():
        raise exc
    print(f"servesim: internal error: {type(exc).__name__}: {one_line(exc, MAX_MESSAGE - 60)} "
          f"(set {DEBUG_ENV}=1 for the traceback)", file=sys.stderr)


class CliParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one bounded line on stderr (exit 2) pointing at ``--help``.

    Subcommand parsers inherit the class (``add_subparsers`` uses the parent's type).
    """

    def error(self, message: str) -> NoReturn:
        """Print ``servesim: error: MESSAGE (see PROG --help)`` and exit 2, without argparse's usage block."""
        print(f"servesim: error: {one_line(message, MAX_MESSAGE - 40)} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(BAD_INPUT)
