"""``sim.table.Table``: the run's tables as NumPy columns, read the way the summary reads DataFrames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sim.table import Table, column


def test_columns_rows_masks_and_assign_read_as_a_dataframe_does():
    ids = ["a", "b", "c"]
    t = Table({"id": ids, "n": [3, 1, 2], "x": np.array([0.5, np.nan, 2.0])})
    df = pd.DataFrame({"id": ids, "n": [3, 1, 2], "x": [0.5, np.nan, 2.0]})
    assert len(t) == len(df) == 3 and t.columns == list(df.columns)
    assert t["id"].dtype == object and t["id"][1] is ids[1]  # the same str objects, as pandas holds them
    some = t[column(t, "n") > 1]
    assert some.columns == t.columns and column(some, "n").tolist() == [3, 2] and some["id"].tolist() == ["a", "c"]
    assert t[np.ones(3, dtype=bool)] is t  # every row: no copy (pandas' shallow copy)
    u = t.assign(n=[9, 9, 9], y=[1.0, 2.0, 3.0])  # replaced in place, added at the end
    assert u.columns == ["id", "n", "x", "y"] and column(u, "n").tolist() == [9, 9, 9] and column(t, "n")[0] == 3
    v = t.insert_after("id", "z", [7, 8, 9])
    assert v.columns == ["id", "z", "n", "x"]
    pd.testing.assert_frame_equal(t.to_pandas(), df)
    assert len(Table()) == 0 and Table().to_pandas().empty


def test_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="different lengths"):
        Table({"a": [1, 2], "b": [1]})
