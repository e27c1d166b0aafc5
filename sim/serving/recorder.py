"""What a simulation records as it runs: a row per stage execution and per micro-batch, as flat float arrays.

``Recorder`` is appended to by the replicas (``sim.serving.cluster``) and by decode stretches (``add_stretch``, a
call per stretch), and turns its logs into the tables ``sim.metrics`` reads (batches.csv and the micro-batch table).
"""

from __future__ import annotations

from array import array
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from sim.table import Table

if TYPE_CHECKING:
    import pandas as pd

# one row per stage execution (batches.csv)
STAGE_FIELDS = ("replica", "stage", "batch_id", "start", "end", "num_prefill_tokens", "num_decode_tokens",
                "batch_size", "num_prefill_items", "kv_blocks_used", "flops", "bytes")
# one row per micro-batch: when scheduling began and when the last stage finished
MICROBATCH_FIELDS = ("replica", "batch_id", "scheduled", "host_time", "completed")


#: a stretch's whole numbers (``Recorder.add_stretch``): the stage and micro-batch rows its rows go before, replica,
#: first batch id, steps, prefill tokens, decodes, batch size, prefill items
_RUN = 9
#: the columns that vary along a stretch, a value per step: start, end, kv_blocks_used, scheduled, host_time
_STEP_COLUMNS = ("start", "end", "kv_blocks_used", "scheduled", "host_time")

# columns holding whole numbers (all row fields are numbers; the others are floats)
_INT_FIELDS = {"replica", "stage", "batch_id", "num_prefill_tokens", "num_decode_tokens", "batch_size",
               "num_prefill_items", "kv_blocks_used"}


def _frame(values: array, fields: tuple[str, ...], runs: list | None = None, by: str | None = None
           ) -> tuple[Table, bool]:
    """Row-major float64 values to a table of ``fields`` (whole-number columns back to int64); ``runs``:
    (per field, the arrays that make its column; the row of ``values`` each of their rows goes before) of
    stretches recorded apart (``Recorder.add_stretch``; several rows before one row keep their order). ``by``: the
    rows in the order of that column (stable: a replica's own rows are in order already), each column built in
    place (a million-request run's table is gigabytes); also returns whether two replicas' rows tie in it."""
    a = np.frombuffer(values, dtype=float).reshape(-1, len(fields)) if len(values) else np.empty((0, len(fields)))
    if runs is None:
        cols = {f: a[:, i].astype(np.int64) if f in _INT_FIELDS else a[:, i].copy() for i, f in enumerate(fields)}
        return Table(cols, len(a)), False
    extra, before = runs
    total = len(a) + len(before)
    placed = before + np.arange(len(before))  # their rows in the table
    runs[1] = before = None  # (freed here where the caller holds no other reference: ``take_tables``)
    rest = np.ones(total, dtype=bool)
    rest[placed] = False
    rest = rest.nonzero()[0]  # the rows of ``values``

    def column(i: int) -> np.ndarray:
        col, at = np.empty(total), 0
        for part in extra[i]:
            col[placed[at:at + len(part)]] = part
            at += len(part)
        col[rest] = a[:, i]
        return col
    tied = False
    if by is not None:
        t = column(fields.index(by))
        order = np.argsort(t, kind="stable")
        t = t[order]
        same = (t[1:] == t[:-1]).nonzero()[0]  # (rare: the replica column is looked at only there)
        del t
        if len(same):
            reps = column(fields.index("replica"))[order]
            tied = bool(np.any(reps[same + 1] != reps[same]))
        where = np.empty(total, dtype=np.int64)
        where[order] = np.arange(total)  # each row's place in time order
        del order
        placed, rest = where[placed], where[rest]
        del where
    built = {}
    for i, f in enumerate(fields):
        c = column(i)
        extra[i] = []  # (its parts, freed here where the caller holds no other reference: ``take_tables``)
        built[f] = c.astype(np.int64) if f in _INT_FIELDS else c
        del c  # (before the next column is built)
    return Table(built, total), tied


class Recorder:
    """Append-only logs of what happened, turned into tables by ``sim.metrics``.

    Rows are appended to flat float64 arrays (8 bytes a value; a list of tuples took ~300 bytes a stage
    row, the largest memory of a million-request run); every field is a number that float64 holds exactly.
    A decode stretch's rows are kept apart (``add_stretch``: its per-step values copied into a float64 array per
    column, what its steps share once) and put in their place, in row order, when the tables are built: one call a
    stretch rather than a Python tuple a row.
    """

    def __init__(self) -> None:
        self.stage_rows = array("d")
        self.microbatch_rows = array("d")
        self._stretch_store()
        #: several replicas' stretches were recorded as each began, not as its steps ended: tables are put in time
        #: order when built (set by ``run_cluster``)
        self.time_order = False
        #: building the tables found two replicas' rows ending at the same time after a stretch: their order in an
        #: iteration-by-iteration run is simpy's event order, which the stretches did not keep (rerun without)
        self.ambiguous = False

    def _stretch_store(self) -> None:
        """Empty stretch logs: per stretch, ``_RUN`` whole numbers (``_runs``); per step, a float64 array per
        column that varies along a stretch, and its (device time, FLOPs, bytes)."""
        self._stretch_runs = array("q")
        self._stretch_steps = [array("d") for _ in _STEP_COLUMNS]
        self._stretch_prices = array("d")

    def add_stretch(self, replica: int, first_batch: int, lo: int, hi: int, chunk: int, num_decodes: int,
                    size: int, prefills: int, decided: list[float], starts: list[float], ends: list[float],
                    hosts: list[float], used: list[int], prices: list[tuple]) -> None:
        """The rows of a stretch's steps ``lo`` to ``hi - 1`` of the lists (batch ids from ``first_batch``), as if
        each had been appended now (stage rows: ``STAGE_FIELDS``; micro-batch rows: ``MICROBATCH_FIELDS``): its
        values per step copied into the step columns, those it shares as one entry (expanded when the tables are
        built, ``_runs``)."""
        self._stretch_runs.extend((len(self.stage_rows) // len(STAGE_FIELDS),
                                   len(self.microbatch_rows) // len(MICROBATCH_FIELDS), replica, first_batch, hi - lo,
                                   chunk, num_decodes, size, prefills))
        for col, values in zip(self._stretch_steps, (starts, ends, used, decided, hosts)):
            col.extend(values if lo == 0 and hi == len(values) else values[lo:hi])
        self._stretch_prices.extend(chain.from_iterable(prices if lo == 0 and hi == len(prices) else prices[lo:hi]))

    def _runs(self) -> tuple[list, list] | None:
        """Every stretch's stage rows and micro-batch rows as ``_frame`` takes them (per field, the arrays that make
        its column; the row each of their rows goes before), or None."""
        if not len(self._stretch_runs):
            return None
        runs = np.frombuffer(self._stretch_runs, dtype=np.int64).reshape(-1, _RUN)
        counts = runs[:, 4]
        total = int(counts.sum())

        def each(i: int) -> np.ndarray:  # a value per stretch, repeated over its steps
            return np.repeat(runs[:, i].astype(float), counts)
        replica = each(2)
        batch_ids = each(3) + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
        start, end, used, decided, host = (np.frombuffer(c, dtype=float) for c in self._stretch_steps)
        prices = np.frombuffer(self._stretch_prices, dtype=float).reshape(total, 3)
        stage = [replica, np.zeros(total), batch_ids, start, end, each(5), each(6), each(7), each(8), used,
                 prices[:, 1], prices[:, 2]]
        micro = [replica, batch_ids, decided, host, end]
        return ([[[c] for c in stage], np.repeat(runs[:, 0], counts)],  # (lists: ``_frame`` lets go of their parts)
                [[[c] for c in micro], np.repeat(runs[:, 1], counts)])

    def _table(self, values: array, fields: tuple[str, ...], runs: list | None, end: str) -> Table:
        """One table; in the order of its ``end`` column where several replicas' stretches were recorded."""
        frame, tied = _frame(values, fields, runs, end if runs is not None and self.time_order else None)
        self.ambiguous |= tied
        return frame

    def stage_frame(self) -> pd.DataFrame:
        """batches.csv: one row per stage execution."""
        runs = self._runs()
        return self._table(self.stage_rows, STAGE_FIELDS, runs and runs[0], "end").to_pandas()

    def microbatch_frame(self) -> pd.DataFrame:
        """One row per micro-batch: scheduling start, host time, completion."""
        runs = self._runs()
        return self._table(self.microbatch_rows, MICROBATCH_FIELDS, runs and runs[1], "completed").to_pandas()

    def take_tables(self) -> tuple[Table, Table]:
        """Both tables, the logs emptied as each is built (a large run's peak memory holds one copy, not two)."""
        runs = self._runs()
        self._stretch_store()
        stages = self._table(self.stage_rows, STAGE_FIELDS, runs and runs[0], "end")
        self.stage_rows = array("d")
        micro = self._table(self.microbatch_rows, MICROBATCH_FIELDS, runs and runs[1], "completed")
        self.microbatch_rows = array("d")
        return stages, micro

    def take_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``take_tables`` as DataFrames."""
        stages, micro = self.take_tables()
        return stages.to_pandas(), micro.to_pandas()
