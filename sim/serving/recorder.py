"""What a simulation records as it runs: a row per stage execution and per micro-batch, as flat float arrays.

``Recorder`` is appended to by the replicas (``sim.serving.cluster``) and by decode stretches (``add_stretch``, a
call per stretch), and turns its logs into the tables ``sim.metrics`` reads (batches.csv and the micro-batch table).
"""

from __future__ import annotations

from array import array
from itertools import chain, islice
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
    A decode stretch's rows are kept as the lists it computed (``add_stretch``) and put in their place, in
    row order, when the tables are built: one call a stretch rather than a Python tuple a row.
    """

    #: stretch rows kept as Python lists before they are packed into arrays (bounded memory in long runs)
    PACK_ROWS = 1 << 16

    def __init__(self) -> None:
        self.stage_rows = array("d")
        self.microbatch_rows = array("d")
        self._stretches: list[tuple] = []
        self._stretch_rows = 0
        # earlier stretches' packed rows, a growing array per column (and the row each goes before), stage rows then
        # micro-batch rows: one buffer per column, large enough that the allocator maps it apart and gives it back
        # to the system when the tables are built (a million-request run's peak; many small parts it kept)
        self._packed: tuple[list[array], list[array]] = self._no_packed()
        #: several replicas' stretches were recorded as each began, not as its steps ended: tables are put in time
        #: order when built (set by ``run_cluster``)
        self.time_order = False
        #: building the tables found two replicas' rows ending at the same time after a stretch: their order in an
        #: iteration-by-iteration run is simpy's event order, which the stretches did not keep (rerun without)
        self.ambiguous = False

    def add_stretch(self, replica: int, first_batch: int, lo: int, hi: int, chunk: int, num_decodes: int,
                    size: int, prefills: int, decided: list[float], starts: list[float], ends: list[float],
                    hosts: list[float], used: list[int], prices: list[tuple]) -> None:
        """The rows of a stretch's steps ``lo`` to ``hi - 1`` of the lists (batch ids from ``first_batch``), as if
        each had been appended now (stage rows: ``STAGE_FIELDS``; micro-batch rows: ``MICROBATCH_FIELDS``)."""
        self._stretches.append((len(self.stage_rows), len(self.microbatch_rows), replica, first_batch, hi - lo, chunk,
                                num_decodes, size, prefills, decided, starts, ends, hosts, used, prices, lo))
        self._stretch_rows += hi - lo
        if self._stretch_rows >= self.PACK_ROWS:
            for store, (cols, before) in zip(self._packed, self._pack()):
                for buf, col in zip(store, [*cols, before]):
                    buf.frombytes(memoryview(np.ascontiguousarray(col)).cast("B"))  # (prices' columns: strided)
            self._stretches, self._stretch_rows = [], 0

    @staticmethod
    def _no_packed() -> tuple[list[array], list[array]]:
        """Empty packed stores: a float64 buffer per field, then an int64 one for the rows they go before."""
        return tuple([array("d") for _ in fields] + [array("q")]  # type: ignore[return-value]
                     for fields in (STAGE_FIELDS, MICROBATCH_FIELDS))

    def _runs(self) -> tuple[list, list] | None:
        """Every stretch's stage rows and micro-batch rows as ``_frame`` takes them (per field, the packed arrays in
        order, not joined: each column is built once, in its table), or None."""
        fresh = self._pack() if self._stretches else None
        if fresh is None and not len(self._packed[0][-1]):
            return None
        out = []
        for j, store in enumerate(self._packed):
            parts = [[np.frombuffer(buf, dtype=float)] if len(buf) else [] for buf in store[:-1]]
            before = np.frombuffer(store[-1], dtype=np.int64)
            if fresh is not None:
                cols, more = fresh[j]
                for part, col in zip(parts, cols):
                    part.append(col)
                before = np.concatenate((before, more)) if len(before) else more
            out.append([parts, before])
        return tuple(out)  # type: ignore[return-value]

    def _pack(self) -> tuple[tuple[list[np.ndarray], np.ndarray], tuple[list[np.ndarray], np.ndarray]]:
        """The kept stretches' stage rows and micro-batch rows as arrays: (columns, the row each goes before)."""
        runs = self._stretches
        counts = np.array([r[4] for r in runs], dtype=np.int64)
        total = int(counts.sum())

        def steps(r: tuple, i: int) -> islice:  # a stretch's list i, its k values from lo
            return islice(r[i], r[15], r[15] + r[4])

        def column(i: int) -> np.ndarray:
            return np.fromiter(chain.from_iterable(steps(r, i) for r in runs), float, total)

        def each(i: int) -> np.ndarray:  # a value per stretch, repeated over its steps
            return np.repeat(np.array([r[i] for r in runs], dtype=float), counts)
        replica = each(2)
        batch_ids = each(3) + (np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts))
        prices = np.fromiter(chain.from_iterable(chain.from_iterable(steps(r, 14) for r in runs)), float,
                             3 * total).reshape(total, 3)
        ends = column(11)
        stage = [replica, np.zeros(total), batch_ids, column(10), ends, each(5), each(6), each(7), each(8),
                 column(13), prices[:, 1], prices[:, 2]]
        micro = [replica, batch_ids, column(9), column(12), ends]
        before = np.repeat(np.array([r[0] for r in runs], dtype=np.int64) // len(STAGE_FIELDS), counts)
        before_micro = np.repeat(np.array([r[1] for r in runs], dtype=np.int64) // len(MICROBATCH_FIELDS), counts)
        return (stage, before), (micro, before_micro)

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
        self._stretches, self._stretch_rows, self._packed = [], 0, self._no_packed()
        stages = self._table(self.stage_rows, STAGE_FIELDS, runs and runs[0], "end")
        self.stage_rows = array("d")
        micro = self._table(self.microbatch_rows, MICROBATCH_FIELDS, runs and runs[1], "completed")
        self.microbatch_rows = array("d")
        return stages, micro

    def take_frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``take_tables`` as DataFrames."""
        stages, micro = self.take_tables()
        return stages.to_pandas(), micro.to_pandas()
