"""Writing a run's tables fast: CSV byte-identical to ``DataFrame.to_csv`` without pandas' slow path, or Parquet.

pandas formats a CSV value by value through its generic writer (2.7 s for a 10,000-request run's batches.csv);
the tables here hold only numbers, booleans and plain strings: this writer formats a block of 8,192 rows of
numbers with one %-operation, or joins other columns' fields in a few list comprehensions. A frame holding anything
else (a column of another dtype, a string needing quotes) goes through pandas unchanged, so the bytes are always
what ``to_csv`` writes.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from sim.table import Table

if TYPE_CHECKING:
    import pandas as pd

TABLE_FORMATS = ("csv", "parquet")
_QUOTED = (",", '"', "\n", "\r")  # a field holding one of these is quoted by csv.QUOTE_MINIMAL
_BLOCK_ROWS = 8192  # rows formatted by one %-operation (the block's fields are a tuple: memory stays small)


def _plain(s: str) -> bool:
    return not any(q in s for q in _QUOTED)


def _values(col: Any) -> np.ndarray:
    """A column's values: a Table's array, or a Series' (``to_numpy``)."""
    return col if isinstance(col, np.ndarray) else col.to_numpy()


def _kind(col: Any) -> str:
    """The NumPy kind of a column's dtype ("?" for pandas' own dtypes)."""
    return col.dtype.kind if isinstance(col.dtype, np.dtype) else "?"


def _column_text(col: Any, float_format: str) -> list[str] | None:
    """The column's CSV fields as pandas writes them, or None where this writer does not know (pandas will)."""
    kind = _kind(col)
    if kind in "iub":
        return list(map(str, _values(col).tolist()))
    if kind == "f":
        return ["" if math.isnan(x) else float_format % x for x in _values(col).tolist()]
    if kind == "O" or (kind == "?" and type(col.dtype).__name__ == "StringDtype"):
        out = []
        for x in (col if kind == "O" and isinstance(col, np.ndarray) else col.astype(object)).tolist():
            if isinstance(x, str):
                if not _plain(x):
                    return None
                out.append(x)
            elif x is None or (isinstance(x, float) and math.isnan(x)) or type(x).__name__ == "NAType":
                out.append("")
            else:
                return None  # numbers in an object column: pandas' own rules
        return out
    return None


def _row_format(frame: Any, float_format: str) -> str | None:
    """One %-format for a whole row when every column is an integer, a boolean or a float with no NaN (then each
    field is what pandas writes: str() of ints and bools, ``float_format`` of floats); else None."""
    parts = []
    for name in frame.columns:
        col = frame[name]
        kind = _kind(col)
        if kind in "iu":
            parts.append("%d")
        elif kind == "b":
            parts.append("%s")
        elif kind == "f" and not np.isnan(_values(col)).any():
            parts.append(float_format)
        else:
            return None
    return ",".join(parts)


def csv_text(frame: Any, float_format: str) -> str:
    """``frame.to_csv(index=False, float_format=float_format, lineterminator="\\n")``, computed faster (``frame``:
    a DataFrame or a ``sim.table.Table``)."""
    names = [str(c) for c in frame.columns]
    cols = None
    unique = isinstance(frame, Table) or frame.columns.is_unique
    plain = len(names) > 1 and all(_plain(n) for n in names) and unique
    fmt = _row_format(frame, float_format) if plain and len(frame) else None
    if fmt is not None:  # numbers only, no NaN: one formatting operation per block of rows
        values = [_values(frame[c]).tolist() for c in frame.columns]
        m, parts = len(values), [",".join(names) + "\n"]
        for lo in range(0, len(frame), _BLOCK_ROWS):
            hi = min(len(frame), lo + _BLOCK_ROWS)
            flat: list = [None] * ((hi - lo) * m)  # the block's fields, row by row
            for j, col in enumerate(values):
                flat[j::m] = col[lo:hi]
            parts.append((fmt + "\n") * (hi - lo) % tuple(flat))
        return "".join(parts)
    if plain:
        cols = []
        for name in frame.columns:
            text = _column_text(frame[name], float_format)
            if text is None:
                cols = None
                break
            cols.append(text)
    if cols is None:
        if isinstance(frame, Table):
            frame = frame.to_pandas()
        return frame.to_csv(index=False, float_format=float_format, lineterminator="\n")
    lines = [",".join(names)]
    lines.extend(map(",".join, zip(*cols)))
    return "\n".join(lines) + "\n"


def write_table(frame: Any, path: str | os.PathLike[str], fmt: str, float_format: str) -> None:
    """``frame`` (a DataFrame or a ``Table``) at ``path`` as CSV (pandas' bytes) or Parquet (pyarrow; full float64
    precision, no index)."""
    if fmt == "parquet":
        (frame.to_pandas() if isinstance(frame, Table) else frame).to_parquet(path, index=False, engine="pyarrow")
        return
    with open(path, "w", encoding="utf-8", newline="") as f:  # pandas writes UTF-8, "\n" only
        f.write(csv_text(frame, float_format))


def read_table(path: str | os.PathLike[str], dtype: dict | None = None) -> pd.DataFrame:
    """A table written by :func:`write_table`, by its extension."""
    import pandas as pd

    if str(path).endswith(".parquet"):
        frame = pd.read_parquet(path, engine="pyarrow")
        return frame.astype(dtype) if dtype else frame
    return pd.read_csv(path, dtype=dtype)
