"""Append-only JSON Lines store of finished capacity points, from which an interrupted search resumes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sim.capacity.point import point_passes
from sim.capacity.spec import Slo
from sim.outputs.run_folder import naming

# ---- results file -----------------------------------------------------------------------------------

class ResultsFile:
    """Append-only JSON Lines store of finished points, keyed by ``PointSpec.key``.

    Each record is written as one line with a single write, then flushed and fsynced, so an
    interruption loses at most the point being written. On open, a partial last line (no newline,
    or not valid JSON) is ignored and cut off before anything new is appended; a bad line elsewhere
    is an error naming the file and line. A key may have several records (points stopped early
    under different SLOs); :meth:`find` picks one that can judge a point under a given SLO.
    """

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path is not None else None
        self.records: dict[str, list[dict]] = {}
        self._fh = None
        if self.path is not None and self.path.exists():
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        keep = len(data) - len(lines[-1])  # bytes up to and including the last newline
        for lineno, raw in enumerate(lines[:-1], start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if lineno == len(lines) - 1 and not lines[-1]:  # the last complete line: a torn write
                    keep -= len(raw) + 1
                    break
                raise ValueError(f"{self.path}:{lineno}: not a valid results record ({exc}); "
                                 f"move the file away to start afresh") from None
            if not isinstance(rec, dict) or "key" not in rec:
                raise ValueError(f"{self.path}:{lineno}: field 'key': missing (not a servesim results file?)")
            self.records.setdefault(rec["key"], []).append(rec)
        if keep != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(keep)

    def find(self, key: str, slo: Slo | None = None) -> dict | None:
        """A stored record of ``key`` that decides its verdict under ``slo`` (any one when None), full runs first."""
        recs = sorted(self.records.get(key, ()), key=lambda r: r.get("metrics") is None)
        return next((r for r in recs if slo is None or point_passes(r, slo) is not None), None)

    def append(self, rec: dict) -> None:
        """Record a finished point durably (errors are kept in memory only, so a rerun retries them)."""
        if rec.get("error"):
            return
        self.records.setdefault(rec["key"], []).append(rec)
        if self.path is None:
            return
        with naming(self.path):
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(json.dumps(rec, sort_keys=True, allow_nan=False, default=_jsonable) + "\n")
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __len__(self) -> int:
        """Number of stored records."""
        return sum(len(v) for v in self.records.values())


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON-serialisable: {type(x).__name__}")
