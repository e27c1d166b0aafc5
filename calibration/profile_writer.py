"""Writing calibration profiles in the format ``sim.cost.profile_format`` defines and reads.

Rows are appended as they are measured (``MeasurementWriter``), so a stopped calibration keeps
what it measured and a rerun resumes (``measured_keys``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pandas as pd

from sim.cost.profile_format import COLUMNS, FLOAT_COLUMNS, KEY_COLUMNS, MEASUREMENTS_CSV, PROFILE_JSON, profile_folder


def write_meta(path: str | Path, meta: dict[str, Any]) -> None:
    """Write profile.json (sorted keys, indented: diff-friendly)."""
    folder = profile_folder(path)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PROFILE_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, tuple):
        return list(x)
    raise TypeError(f"not JSON-serialisable: {x!r}")


def format_row(row: dict[str, Any]) -> list[str]:
    """One measurement as CSV fields (seconds with 6 significant digits)."""
    return [str(row["op"]), str(int(row["tp"])), str(int(row["tokens"])), str(int(row["seqs"])),
            str(int(row["context"])), str(row.get("variant", "") or ""),
            *(f"{float(row[c]):.6g}" for c in FLOAT_COLUMNS), str(int(row["repeats"]))]


def repair_torn_tail(path: str | Path) -> bool:
    """Cut a torn last row (a run killed mid-write leaves a line without its newline) off measurements.csv;
    True if one was cut. The rows before it are whole: each was flushed with its newline."""
    f = profile_folder(path) / MEASUREMENTS_CSV
    if not f.is_file() or f.stat().st_size == 0:
        return False
    data = f.read_bytes()
    if data.endswith(b"\n"):
        return False
    cut = data.rfind(b"\n") + 1
    with open(f, "r+b") as fh:
        fh.truncate(cut)
    return True


class MeasurementWriter:
    """Appends measurements to measurements.csv as they are taken, so a stopped run keeps what it measured."""

    def __init__(self, path: str | Path) -> None:
        f = profile_folder(path) / MEASUREMENTS_CSV
        f.parent.mkdir(parents=True, exist_ok=True)
        new = not f.exists() or f.stat().st_size == 0
        self._fh = open(f, "a", newline="")
        self._w = csv.writer(self._fh, lineterminator="\n")
        if new:
            self._w.writerow(COLUMNS)
            self._fh.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._w.writerow(format_row(row))
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "MeasurementWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_profile(path: str | Path, meta: dict[str, Any], table: pd.DataFrame) -> Path:
    """Write a whole profile (metadata and table, rows sorted by key) into folder ``path``."""
    folder = profile_folder(path)
    write_meta(folder, meta)
    t = table.copy()
    t["variant"] = t["variant"].fillna("").astype(str)
    t = t.sort_values(list(KEY_COLUMNS), kind="stable")
    f = folder / MEASUREMENTS_CSV
    with open(f, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(COLUMNS)
        for row in t.to_dict("records"):
            w.writerow(format_row(row))
    return folder


def measured_keys(table: pd.DataFrame) -> set[tuple]:
    """(op, tp, tokens, seqs, context, variant) of every row, to skip on resume."""
    return {tuple(r) for r in table[list(KEY_COLUMNS)].itertuples(index=False, name=None)}
