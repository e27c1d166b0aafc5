"""A run's tables as NumPy columns: what ``simulate`` computes and writes without pandas (0.3 s of a process's
start-up, issue 34). The few DataFrame operations the summary and the writers use work on a ``Table`` and on a
DataFrame alike (a column by name, rows by a boolean mask, ``len``, ``assign``), so a function written for one
takes the other; ``to_pandas`` gives the DataFrame (``SimResult`` builds it on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


class Table:
    """Named columns of equal length, in order (NumPy arrays; strings as object arrays)."""

    __slots__ = ("_cols", "_rows")

    def __init__(self, columns: dict[str, Any] | None = None, rows: int | None = None) -> None:
        self._cols = {name: _array(col) for name, col in (columns or {}).items()}
        lengths = {len(c) for c in self._cols.values()}
        if len(lengths) > 1:
            raise ValueError(f"columns of different lengths: {sorted(lengths)}")
        self._rows = lengths.pop() if lengths else (rows or 0)

    def __len__(self) -> int:
        return self._rows

    def __contains__(self, name: object) -> bool:
        return name in self._cols

    def __getitem__(self, key: str | np.ndarray) -> Any:
        """A column by name, or the rows where a boolean mask is true (as a DataFrame indexes)."""
        if isinstance(key, str):
            return self._cols[key]
        mask = np.asarray(key)
        n = int(mask.sum())
        if n == self._rows:  # every row: the same columns, no copy (as pandas gives; a table is never changed in place)
            return self
        return Table({name: col[mask] for name, col in self._cols.items()}, n)

    @property
    def columns(self) -> list[str]:
        return list(self._cols)

    def assign(self, **columns: Any) -> Table:
        """A new table with ``columns`` added (at the end) or replaced (in place), as ``DataFrame.assign``."""
        return Table({**self._cols, **columns}, self._rows)

    def insert_after(self, after: str, name: str, values: Any) -> Table:
        """A new table with column ``name`` right after column ``after``."""
        cols: dict[str, Any] = {}
        for key, col in self._cols.items():
            cols[key] = col
            if key == after:
                cols[name] = values
        return Table(cols, self._rows)

    def to_pandas(self) -> pd.DataFrame:
        """The DataFrame of these columns (no copy where pandas can avoid one)."""
        import pandas as pd
        return pd.DataFrame(self._cols if self._cols else None, copy=False)


def _array(col: Any) -> np.ndarray:
    """A column as an array: strings as objects, as pandas holds them (the same ``str`` objects: NumPy would make a
    fixed-width unicode copy of a list of them, and new objects from that)."""
    if isinstance(col, np.ndarray):
        return col.astype(object) if col.dtype.kind == "U" else col
    if isinstance(col, list) and col and isinstance(col[0], str):
        return np.array(col, dtype=object)
    return np.asarray(col)


def column(table: Any, name: str, dtype: Any = None) -> np.ndarray:
    """A column of a ``Table`` or a DataFrame as a NumPy array."""
    return np.asarray(table[name], dtype=dtype)
