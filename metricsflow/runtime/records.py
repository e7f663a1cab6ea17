"""What flows through the job graph: columnar micro-batches, watermarks, barriers (in band).

Data moves in micro-batches (docs/architecture.md, "Micro-batches"): one ``RecordBatch`` holds
the points one source read from one partition (a key group) in one go, as NumPy columns.
Watermarks and checkpoint barriers are separate stream elements *between* batches, never inside
one, so they keep their per-record meaning while the operators work per batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.model.declarations import KindDeclarations

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]
Int32Array = npt.NDArray[np.int32]
Int8Array = npt.NDArray[np.int8]


@dataclass(frozen=True)
class SketchBins:
    """Bins of many DDSketches (``metricsflow.windows.sketches``): one row per non-empty
    (group, store, bucket index), sorted by (group, value order). ``group`` names the sketch
    (e.g. a row of an :class:`AggregateBatch`), ``store`` is 0 negative, 1 zero, 2 positive."""

    group: Int64Array
    store: Int8Array
    index: Int32Array
    count: Float64Array

    @property
    def size(self) -> int:
        return int(self.group.shape[0])

    @staticmethod
    def empty() -> SketchBins:
        return SketchBins(
            np.empty(0, np.int64), np.empty(0, np.int8), np.empty(0, np.int32), np.empty(0)
        )


@dataclass(frozen=True, slots=True)
class KindChange:
    """A ``kinds1`` record (``metricsflow.model.declarations``) read between the rows of a
    batch: it comes after rows ``[0, row)`` in the partition's log."""

    row: int
    declarations: KindDeclarations


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Numeric points of one key group (partition), column by column.

    Row ``i`` is one value of the time series ``keys[key_idx[i]]`` (database, series key and
    field key, see :func:`window_key`) at ``ts_ns[i]``.
    Rows are in arrival order: when two rows share a key and a timestamp, the later row wins
    (InfluxDB's point identity). ``keys`` may hold keys no row uses.
    """

    key_group: int
    keys: tuple[str, ...]
    key_idx: Int32Array
    ts_ns: Int64Array
    values: Float64Array
    received_ns: Int64Array | None = None
    """Per row: when the gateway received the point (header ``mf-received-ns``, else the
    Kafka record's timestamp); ``None`` when unknown. It travels with the record, so a replay
    sees the same value: the watermark ignores points far ahead of it (future points)."""
    row_watermark_ns: Int64Array | None = None
    """Per row: the key group's watermark as of that row's position in the partition's log
    (set by the watermark assigner). Lateness is judged against it, so any split of the same
    log into batches judges every row alike. ``None``: judge against the last watermark."""
    kind_changes: tuple[KindChange, ...] = ()
    """Declarations read with the batch (metricsflow.windows.declared), in log order; a batch
    may hold declarations and no rows."""

    def __len__(self) -> int:
        return int(self.ts_ns.shape[0])


KEY_SEPARATOR = "\x00"


def window_key(database: str, series_key: str, field_key: str) -> str:
    """The key of one time series: database, series key and field key, NUL-separated.

    NUL cannot occur in any of the three (line protocol forbids it), so the split is exact.
    """
    return f"{database}{KEY_SEPARATOR}{series_key}{KEY_SEPARATOR}{field_key}"


def split_window_key(key: str) -> tuple[str, str, str]:
    """Inverse of :func:`window_key`: ``(database, series_key, field_key)``."""
    database, series_key, field_key = key.split(KEY_SEPARATOR)
    return database, series_key, field_key


@dataclass(frozen=True, slots=True)
class AggregateBatch:
    """Window results (partial aggregates) of one tier for one key group, column by column.

    Row ``i`` is the aggregate of time series ``keys[key_idx[i]]`` over the tumbling window
    ``[window_start_ns[i], window_start_ns[i] + window_ns)``. A row may be a re-emission that
    replaces an earlier row of the same (key, window): consumers overwrite, never add.
    ``count``, ``min``, ``max``, ``first`` and ``last`` are exact; ``sum`` is a float sum.
    ``first``/``last`` are the values at the smallest/largest timestamp in the window.
    """

    key_group: int
    tier: str
    window_ns: int
    keys: tuple[str, ...]
    key_idx: Int32Array
    window_start_ns: Int64Array
    count: Int64Array
    sum: Float64Array
    min: Float64Array
    max: Float64Array
    first_ts_ns: Int64Array
    first: Float64Array
    last_ts_ns: Int64Array
    last: Float64Array
    increase: Float64Array | None = None
    """Counter fields (docs/counters-and-percentiles.md): the increase within the window, NaN
    for a row whose field is not a counter; ``None``: no counter row in the batch."""
    resets: Int64Array | None = None
    """Counter resets within the window (0 for a row that is not a counter)."""
    sketches: SketchBins | None = None
    """DDSketches of the sketched rows, ``group`` = row index; ``None``: none in the batch."""

    def __len__(self) -> int:
        return int(self.window_start_ns.shape[0])


@dataclass(frozen=True, slots=True)
class CorrectionRequest:
    """Windows of one tier to re-derive from InfluxDB (docs/windows.md, "Corrections").

    Sent by a window operator on side output ``"correct"`` when rows arrive for windows whose
    state is gone: tier ``tier`` (window ``window_ns``) of the series ``keys[key_idx[i]]`` over
    ``[window_start_ns[i], + window_ns)``, to be recomputed from ``source_tier`` (``raw`` for
    the finest tier, else the next finer tier) once everything the sink received before this
    request is acknowledged. ``seq`` orders the requests of one operator and key group;
    ``created_ns`` (wall clock) measures the correction lag.
    """

    key_group: int
    tier: str
    window_ns: int
    source_tier: str
    keys: tuple[str, ...]
    key_idx: Int32Array
    window_start_ns: Int64Array
    seq: int
    created_ns: int
    counter: npt.NDArray[np.bool_] | None = None
    """Per row, whether the field is a counter in that window, when kinds declared in the log
    decided it (metricsflow.windows.declared); ``None``: the sink's patterns decide."""

    def __len__(self) -> int:
        return int(self.window_start_ns.shape[0])


@dataclass(frozen=True, slots=True)
class CorrectionResult:
    """The re-derived rows of a :class:`CorrectionRequest` (or of several coalesced ones of
    the same key group and tier, ``seq`` the largest): ``batch`` holds them as partials of
    the request's tier, its keys plain window-key strings."""

    key_group: int
    tier: str
    seq: int
    created_ns: int
    batch: AggregateBatch
    empty_keys: tuple[str, ...] = ()
    """requested (key, window) pairs InfluxDB has no data for (e.g. beyond raw retention):
    settled without a row; ``empty_window_start_ns`` holds their window starts"""
    empty_window_start_ns: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RawLinesBatch:
    """Points for the raw tier, exactly as read: canonical line protocol (ns timestamps).

    The raw tier is written from these, unchanged, so that it keeps every field type
    (strings and booleans too) and InfluxDB's own identity rules apply to it.
    """

    key_group: int
    database: str
    lines: bytes
    point_count: int


@dataclass(frozen=True, slots=True)
class Watermark:
    """No more points with ``ts_ns < timestamp_ns`` are expected on this key group."""

    key_group: int
    timestamp_ns: int


@dataclass(frozen=True, slots=True)
class EndOfPartition:
    """The source of this key group has no more input (bounded sources, tests)."""

    key_group: int


SideOutput = RecordBatch | CorrectionRequest
"""What an operator may send to a side output: ``"late"`` points, ``"correct"`` requests."""

StreamElement = (
    RecordBatch | AggregateBatch | RawLinesBatch | Watermark | CheckpointBarrier | EndOfPartition
)
