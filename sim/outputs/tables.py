"""Writing a run's tables fast: CSV byte-identical to ``DataFrame.to_csv`` without pandas' slow path, or Parquet.

pandas formats a CSV value by value through its generic writer (2.7 s for a 10,000-request run's batches.csv);
the tables here hold only numbers, booleans and plain strings, which this writer joins column by column in a few
list comprehensions. A frame holding anything else (a column of another dtype, a string needing quotes) goes
through pandas unchanged, so the bytes are always what ``to_csv`` writes.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

TABLE_FORMATS = ("csv", "parquet")
_QUOTED = (",", '"', "\n", "\r")  # a field holding one of these is quoted by csv.QUOTE_MINIMAL


def _plain(s: str) -> bool:
    return not any(q in s for q in _QUOTED)


def _column_text(col: pd.Series, float_format: str) -> list[str] | None:
    """The column's CSV fields as pandas writes them, or None where this writer does not know (pandas will)."""
    kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else "?"
    if kind in "iu":
        return list(map(str, col.to_numpy().tolist()))
    if kind == "f":
        return ["" if math.isnan(x) else float_format % x for x in col.to_numpy().tolist()]
    if kind == "b":
        return list(map(str, col.to_numpy().tolist()))
    if kind == "O" or isinstance(col.dtype, pd.StringDtype):
        out = []
        for x in col.astype(object).tolist():
            if isinstance(x, str):
                if not _plain(x):
                    return None
                out.append(x)
            elif x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
                out.append("")
            else:
                return None  # numbers in an object column: pandas' own rules
        return out
    return None


def _row_format(frame: pd.DataFrame, float_format: str) -> str | None:
    """One %-format for a whole row when every column is an integer, a boolean or a float with no NaN (then each
    field is what pandas writes: str() of ints and bools, ``float_format`` of floats); else None."""
    parts = []
    for name in frame.columns:
        col = frame[name]
        kind = col.dtype.kind if isinstance(col.dtype, np.dtype) else "?"
        if kind in "iu":
            parts.append("%d")
        elif kind == "b":
            parts.append("%s")
        elif kind == "f" and not np.isnan(col.to_numpy()).any():
            parts.append(float_format)
        else:
            return None
    return ",".join(parts)


def csv_text(frame: pd.DataFrame, float_format: str) -> str:
    """``frame.to_csv(index=False, float_format=float_format, lineterminator="\\n")``, computed faster."""
    names = [str(c) for c in frame.columns]
    cols = None
    plain = len(names) > 1 and all(_plain(n) for n in names) and frame.columns.is_unique
    fmt = _row_format(frame, float_format) if plain and len(frame) else None
    if fmt is not None:  # numbers only, no NaN: one formatting operation a row
        rows = zip(*(frame[c].to_numpy().tolist() for c in frame.columns))
        return "\n".join([",".join(names), *map(fmt.__mod__, rows)]) + "\n"
    if plain:
        cols = []
        for name in frame.columns:
            text = _column_text(frame[name], float_format)
            if text is None:
                cols = None
                break
            cols.append(text)
    if cols is None:
        return frame.to_csv(index=False, float_format=float_format, lineterminator="\n")
    lines = [",".join(names)]
    lines.extend(map(",".join, zip(*cols)))
    return "\n".join(lines) + "\n"


def write_table(frame: pd.DataFrame, path: str | os.PathLike[str], fmt: str, float_format: str) -> None:
    """``frame`` at ``path`` as CSV (pandas' bytes) or Parquet (pyarrow; full float64 precision, no index)."""
    if fmt == "parquet":
        frame.to_parquet(path, index=False, engine="pyarrow")
        return
    with open(path, "w", encoding="utf-8", newline="") as f:  # pandas writes UTF-8, "\n" only
        f.write(csv_text(frame, float_format))


def read_table(path: str | os.PathLike[str], dtype: dict | None = None) -> pd.DataFrame:
    """A table written by :func:`write_table`, by its extension."""
    if str(path).endswith(".parquet"):
        frame = pd.read_parquet(path, engine="pyarrow")
        return frame.astype(dtype) if dtype else frame
    return pd.read_csv(path, dtype=dtype)
