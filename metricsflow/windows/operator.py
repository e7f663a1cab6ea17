"""The tier window operator: one class for every tier (raw -> 1m, 1m -> 1h, 1h -> 1d, ...).

Input rows are *partials*: a raw point is a partial of count 1. A tier operator is built for
one input kind: raw points (``RecordBatch``, ``input_window_ns == 0``) or the partials of the
next finer tier (``AggregateBatch`` of window ``input_window_ns``). Semantics are described in
docs/windows.md; in short:

* identity: a raw point is (key, ts), a partial is (key, fine window start); the last arrival
  of an identity wins (a rewrite or a re-emitted partial *replaces*, never adds);
* window ``[start, end)`` fires when the key group's watermark ``>= end``;
* rows of a fired window whose ``end + allowed_lateness > watermark`` update it and it is
  re-emitted in full at the end of that batch; rows beyond go to side output ``"late"``;
* a window's rows are purged once ``watermark >= end + allowed_lateness``.

State layout, per key group, in the operator's ``KeyedStateBackend``:

``window-chunks``  key ``be(window_end) + be(seq)`` -> ``ColumnarChunk`` of the rows one batch
                   brought to one window, sorted by (key id, identity), deduplicated
``window-keys``    key ``be32(first id)`` -> ``ColumnarChunk(keys=...)``: the key dictionary
                   (window key string <-> int32 id); keys whose windows are all purged
                   expire (keys.py :class:`~metricsflow.windows.keys.WindowKeys`)
``window-meta``    ``watermark`` and ``next-seq`` (int64)
``window-counters`` raw tier: the last sample of each counter key in the purged windows

Firing is a range scan of ``window-chunks`` up to the watermark; all the work per batch and per
window is NumPy over columns (kernels.py).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from metricsflow.checkpointing.protocol import CheckpointBarrier, CheckpointType
from metricsflow.errors import ConfigurationError, StateError
from metricsflow.model.fieldkinds import FieldKinds
from metricsflow.model.tiers import RAW_TIER, TierSpec
from metricsflow.runtime.base import (
    Operator,
    OperatorContext,
    OperatorSnapshot,
    Output,
    StateInitializationContext,
)
from metricsflow.runtime.records import (
    AggregateBatch,
    RawLinesBatch,
    RecordBatch,
    SketchBins,
    Watermark,
)
from metricsflow.state.base import KeyedStateBackend, StateDescriptor
from metricsflow.state.handles import CheckpointStorage
from metricsflow.state.serializers import INT64, MSGPACK, NUMPY_COLUMNS, ColumnarChunk
from metricsflow.windows import aggregates, kernels
from metricsflow.windows.aggregates import FieldKindIndex
from metricsflow.windows.correcting import WindowCorrector
from metricsflow.windows.corrections import (
    STATE_PENDING,
    CorrectionInbox,
    decode_time,
    encode_time,
)
from metricsflow.windows.counters import LastSamples
from metricsflow.windows.declared import (
    DECLARED_KEY,
    STATE_DECLARED,
    DeclaredKinds,
    apply_declarations,
)
from metricsflow.windows.groups import (
    META_CORRECTION_SEQ,
    META_SEQ,
    META_WATERMARK,
    STATE_META,
    KeyGroupState,
)
from metricsflow.windows.kernels import Chunk, Int32Array, Int64Array
from metricsflow.windows.keys import STATE_CHUNKS, STATE_KEYS, WindowKeys
from metricsflow.windows.metrics import TierWindowMetrics

logger = logging.getLogger(__name__)

__all__ = ["STATE_CHUNKS", "STATE_KEYS", "STATE_META", "TierWindowMetrics", "TierWindowOperator"]

STATE_COUNTERS = "window-counters"
_COUNTERS_LAST = b"last"

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def chunk_key(window_end_ns: int, seq: int) -> bytes:
    return encode_time(window_end_ns) + seq.to_bytes(8, "big")


class TierWindowOperator(Operator):
    """Tumbling event-time windows of one tier over raw points or finer partials.

    ``tier``: the output tier (its ``window`` is the window size). ``allowed_lateness_ns``:
    how long after a window fired late rows still update it (must not decrease along a
    cascade, see :func:`build_cascade`). ``input_window_ns``: 0 when the input is raw points
    (``RecordBatch``), else the window size of the finer tier whose ``AggregateBatch`` rows
    come in (it must divide this tier's window). ``counter_horizon_ns``: how long (event
    time) a counter's last sample is kept for pairing after its windows are purged, which
    keeps its key too (0: for ever; :func:`build_cascade` passes the raw tier's retention).

    Emits one ``AggregateBatch`` per watermark that fired windows (then forwards the
    watermark), one per batch that updated already-fired windows, and the raw points beyond
    the lateness as ``RecordBatch`` on side output ``"late"``. Counters: :attr:`metrics`.
    """

    def __init__(
        self,
        uid: str,
        tier: TierSpec,
        allowed_lateness_ns: int = 0,
        *,
        input_window_ns: int = 0,
        input_tier: str = RAW_TIER,
        corrections: CorrectionInbox | None = None,
        metrics: TierWindowMetrics | None = None,
        field_kinds: FieldKinds | None = None,
        counter_horizon_ns: int = 0,
        kind_cache: dict[str, int] | None = None,
    ) -> None:
        super().__init__(uid)
        if tier.name == RAW_TIER or tier.window_ns <= 0:
            raise ConfigurationError(f"a window operator needs a windowed tier, got {tier!r}")
        window_ns = tier.window_ns
        if input_window_ns < 0 or (
            input_window_ns and (input_window_ns >= window_ns or window_ns % input_window_ns)
        ):
            raise ConfigurationError(
                f"tier {tier.name!r}: input window {input_window_ns} ns must be 0 (raw points) "
                f"or a proper divisor of the window {window_ns} ns"
            )
        if allowed_lateness_ns < 0:
            raise ConfigurationError(f"allowed_lateness_ns must be >= 0, got {allowed_lateness_ns}")
        self.tier = tier
        self.window_ns = window_ns
        self.allowed_lateness_ns = allowed_lateness_ns
        self.input_window_ns = input_window_ns
        self.input_tier = input_tier
        self.corrections = corrections
        self.metrics = metrics if metrics is not None else TierWindowMetrics()
        self.field_kinds = field_kinds
        self.counter_horizon_ns = counter_horizon_ns
        self.kind_cache: dict[str, int] = {} if kind_cache is None else kind_cache
        self._raw = input_window_ns == 0
        self._corrector = WindowCorrector(
            uid, tier.name, window_ns, input_tier, self._raw, self.metrics
        )
        self._unit_ns = input_window_ns or 1
        self._groups: dict[int, KeyGroupState] = {}
        self._key_groups: set[int] = set()
        self._backend: KeyedStateBackend | None = None
        self._storage: CheckpointStorage | None = None

    @property
    def is_stateful(self) -> bool:
        return True

    # -- lifecycle ------------------------------------------------------------------------
    def setup(self, ctx: OperatorContext) -> None:
        self._backend = ctx.state_backend
        self._storage = ctx.storage
        self._key_groups = set(ctx.key_groups)
        self._backend.register(StateDescriptor(STATE_CHUNKS, NUMPY_COLUMNS))
        self._backend.register(StateDescriptor(STATE_KEYS, NUMPY_COLUMNS))
        self._backend.register(StateDescriptor(STATE_META, INT64))
        self._backend.register(StateDescriptor(STATE_PENDING, INT64))
        self._backend.register(StateDescriptor(STATE_COUNTERS, NUMPY_COLUMNS))
        self._backend.register(StateDescriptor(STATE_DECLARED, MSGPACK))

    def initialize_state(self, ctx: StateInitializationContext) -> None:
        """Everything lives in the backend (restored by the runtime before this call)."""
        self._groups.clear()
        for kg in sorted(self._key_groups):
            self._groups[kg] = self._load(kg)

    def on_key_groups_assigned(
        self, key_groups: frozenset[int], ctx: StateInitializationContext
    ) -> None:
        for kg in sorted(key_groups):
            self._key_groups.add(kg)
            self._groups[kg] = self._load(kg)

    def on_key_groups_revoked(self, key_groups: frozenset[int]) -> None:
        for kg in key_groups:
            self._key_groups.discard(kg)
            self._groups.pop(kg, None)

    def snapshot_state(self, barrier: CheckpointBarrier) -> OperatorSnapshot:
        backend, storage = self._state()
        if storage is None:
            raise StateError(f"operator {self.uid!r} has no checkpoint storage")
        incremental = barrier.options.checkpoint_type is CheckpointType.CHECKPOINT
        keyed = backend.snapshot(
            barrier.checkpoint_id, sorted(self._key_groups), storage, incremental=incremental
        )
        return OperatorSnapshot(keyed=keyed, operator=())

    def finish(self, output: Output) -> None:
        """End of input: a watermark at the end of time for every key group."""
        for kg in sorted(self._key_groups):
            self.process_watermark(Watermark(kg, _INT64_MAX), output)

    def _state(self) -> tuple[KeyedStateBackend, CheckpointStorage | None]:
        if self._backend is None:
            raise StateError(f"operator {self.uid!r} used before setup()")
        return self._backend, self._storage

    def _load(self, kg: int) -> KeyGroupState:
        backend, _ = self._state()
        group = KeyGroupState(kinds=FieldKindIndex(self.field_kinds, self.kind_cache))
        stored = backend.get(kg, STATE_COUNTERS, _COUNTERS_LAST)
        group.frontier = None if stored is None else aggregates.last_from_chunk(stored.columns)
        group.watermark_ns = backend.get(kg, STATE_META, META_WATERMARK)
        group.next_seq = backend.get(kg, STATE_META, META_SEQ) or 0
        group.correction_seq = backend.get(kg, STATE_META, META_CORRECTION_SEQ) or 0
        group.resubmit = self.corrections is not None and any(
            True for _ in backend.scan(kg, STATE_PENDING)
        )
        group.keys = WindowKeys.load(backend, kg)
        group.declared = DeclaredKinds.from_state(backend.get(kg, STATE_DECLARED, DECLARED_KEY))
        return group

    def _group(self, kg: int) -> KeyGroupState:
        group = self._groups.get(kg)
        if group is None:
            self._key_groups.add(kg)
            group = self._groups[kg] = self._load(kg)
        return group

    def current_watermark_ns(self, key_group: int) -> int | None:
        group = self._groups.get(key_group)
        return None if group is None else group.watermark_ns

    # -- input ----------------------------------------------------------------------------
    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        if isinstance(batch, RawLinesBatch):
            return  # the raw tier is written from these elsewhere; nothing to aggregate
        if isinstance(batch, RecordBatch) and batch.kind_changes:
            self._declare(batch)
        if len(batch) == 0:
            return
        kg = batch.key_group
        group = self._group(kg)
        ids = group.keys.map(self._state()[0], kg, batch.keys, batch.key_idx)
        cols: Chunk
        bins = None
        if isinstance(batch, RecordBatch):
            if not self._raw:
                raise StateError(f"operator {self.uid!r} takes AggregateBatch, got RecordBatch")
            cols = {"k": ids, "t": batch.ts_ns, "v": batch.values}
        else:
            if batch.window_ns != self.input_window_ns:
                raise StateError(
                    f"operator {self.uid!r} takes partials of window {self.input_window_ns} ns, "
                    f"got tier {batch.tier!r} ({batch.window_ns} ns)"
                )
            cols = {
                "k": ids,
                "t": batch.window_start_ns,
                "c": batch.count,
                "s": batch.sum,
                "mn": batch.min,
                "mx": batch.max,
                "ft": batch.first_ts_ns,
                "f": batch.first,
                "lt": batch.last_ts_ns,
                "l": batch.last,
                **aggregates.partial_columns(batch.increase, batch.resets, batch.key_idx),
            }
            bins = batch.sketches
        self.metrics.input_rows += len(batch)
        self._ingest(kg, group, cols, bins, batch, output)

    def _declare(self, batch: RecordBatch) -> None:
        """Apply the batch's ``kinds1`` declarations (declared.py) before its rows: the rows
        are only stored now, kinds matter when windows fire, and every window a row of this
        batch could fire is at or after the effective window."""
        if not self._raw or self.field_kinds is None:
            return
        group = self._group(batch.key_group)
        changed = apply_declarations(
            group.declared, batch, group.watermark_ns, self.window_ns, self.allowed_lateness_ns
        )
        if changed:
            self.metrics.declared_kinds += changed
            backend, _ = self._state()
            backend.put(batch.key_group, STATE_DECLARED, DECLARED_KEY, group.declared.to_state())

    def _ingest(
        self,
        kg: int,
        group: KeyGroupState,
        cols: Chunk,
        bins: SketchBins | None,
        batch: RecordBatch | AggregateBatch,
        output: Output,
    ) -> None:
        backend, _ = self._state()
        wend = kernels.window_ends(cols["t"], self.window_ns)
        refire: list[int] = []
        wm = group.watermark_ns
        rows_wm = batch.row_watermark_ns if isinstance(batch, RecordBatch) else None
        limit = wm if rows_wm is None else int(rows_wm[-1])  # row watermarks never decrease
        if limit is not None and int(wend.min()) <= limit:
            if rows_wm is None:
                late = wend <= limit - self.allowed_lateness_ns
            else:  # judged at each row's own position in the log (docs/windows.md)
                late = (rows_wm > _INT64_MIN) & (wend <= rows_wm - self.allowed_lateness_ns)
            if bool(late.any()):
                moved = self._on_late(kg, group, batch, late, cols, wend, output)
                if moved and wm is not None:  # a counter's last purged sample changed
                    refire = self._fired_ends(kg, None, wm)
                keep = np.flatnonzero(~late)
                if keep.shape[0] == 0:
                    if refire:
                        self._refire(kg, group, refire, output)
                    return
                n_rows = cols["k"].shape[0]
                cols = kernels.take(cols, keep)
                bins = aggregates.select_bins(bins, keep, n_rows)
                wend = wend[keep]
            if wm is not None:
                updated = wend[wend <= wm]
                if updated.shape[0]:
                    refire = sorted(set(refire) | set(np.unique(updated).tolist()))
        seq = group.next_seq
        n_rows = cols["k"].shape[0]
        for window_end, index in kernels.split_by_window(wend):
            k = cols["k"] if index is None else cols["k"][index]
            t = cols["t"] if index is None else cols["t"][index]
            order = kernels.identity_order(k, t, self._unit_ns)
            rows_index = order if index is None else index[order]
            rows = kernels.take(cols, rows_index)
            rows = aggregates.with_bins(rows, aggregates.select_bins(bins, rows_index, n_rows))
            group.keys.touch(k, window_end)
            backend.put(kg, STATE_CHUNKS, chunk_key(window_end, seq), ColumnarChunk(rows))
            seq += 1
        group.next_seq = seq
        backend.put(kg, STATE_META, META_SEQ, seq)
        if refire:
            self._refire(kg, group, refire, output)

    def _refire(self, kg: int, group: KeyGroupState, refire: list[int], output: Output) -> None:
        """Emit fired windows again. A counter's change at ``t`` also changes the window of
        its next sample: on the raw tier every later fired window goes out again too."""
        kind = group.kind()
        wm = group.watermark_ns
        if self._raw and kind is not None and group.any_counter() and wm is not None:
            refire = sorted(set(refire) | set(self._fired_ends(kg, refire[0], wm)))
        windows = [
            (end, self._chunks(kg, encode_time(end), encode_time(end + 1))) for end in refire
        ]
        self._emit(kg, group, windows, output, reemission=True)

    def _fired_ends(self, kg: int, first_end: int | None, wm: int) -> list[int]:
        start = None if first_end is None else encode_time(first_end)
        return sorted({decode_time(key) for key, _ in self._scan(kg, start, encode_time(wm + 1))})

    def _on_late(
        self,
        kg: int,
        group: KeyGroupState,
        batch: RecordBatch | AggregateBatch,
        late: Any,
        cols: Chunk,
        wend: Int64Array,
        output: Output,
    ) -> bool:
        """Side output and corrections for rows beyond the lateness; ``True`` when a late raw
        point became the last purged sample of a counter (fired windows must go out again)."""
        ids, ends = cols["k"][late], wend[late]
        n = int(np.count_nonzero(late))
        if isinstance(batch, RecordBatch):
            self.metrics.late_points += n
            output.emit_side(
                "late",
                RecordBatch(
                    batch.key_group,
                    batch.keys,
                    batch.key_idx[late],
                    batch.ts_ns[late],
                    batch.values[late],
                ),
            )
        else:
            self.metrics.late_partials += n
            logger.info(
                "%s: %d partial rows of tier %r for windows already purged key_group=%d",
                self.uid,
                n,
                batch.tier,
                batch.key_group,
            )
        if self.corrections is not None:
            self._request_correction(kg, group, ids, ends, output)
        kind = group.kind()
        if not (self._raw and kind is not None and group.watermark_ns is not None):
            return False
        purged = ends <= group.watermark_ns - self.allowed_lateness_ns
        moved = aggregates.late_frontier(
            group.frontier, kind, ids[purged], cols["t"][late][purged], cols["v"][late][purged]
        )
        if moved is None:
            return False
        self._set_frontier(kg, group, moved)
        return True

    def _expire(self, kg: int, group: KeyGroupState, purged_through_ns: int) -> None:
        """State expiry (keys.py). A counter's last sample (``window-counters``) keeps its key
        for ``counter_horizon_ns`` (its next sample pairs with it); that state is renumbered
        with the dictionary."""
        backend, _ = self._state()
        frontier = group.frontier
        if frontier is not None and self.counter_horizon_ns and frontier.key_id.shape[0]:
            fresh = frontier.t_ns > purged_through_ns - self.counter_horizon_ns
            if not bool(fresh.all()):  # as old as raw's retention: InfluxDB forgets it too
                frontier = LastSamples(
                    frontier.key_id[fresh], frontier.t_ns[fresh], frontier.value[fresh]
                )
                self._set_frontier(kg, group, frontier)
        keep = None if frontier is None else frontier.key_id
        remap = group.keys.expire(backend, kg, purged_through_ns, keep)
        if remap is None:
            return
        self.metrics.expired_keys += int(np.count_nonzero(remap < 0))
        if frontier is not None and frontier.key_id.shape[0]:
            moved = LastSamples(remap[frontier.key_id], frontier.t_ns, frontier.value)
            self._set_frontier(kg, group, moved)

    def _set_frontier(self, kg: int, group: KeyGroupState, frontier: LastSamples | None) -> None:
        if frontier is None or frontier is group.frontier:
            return
        group.frontier = frontier
        backend, _ = self._state()
        chunk = ColumnarChunk(aggregates.last_to_chunk(frontier))
        backend.put(kg, STATE_COUNTERS, _COUNTERS_LAST, chunk)

    # -- corrections (docs/windows.md, "Corrections"; correcting.py) ----------------------
    def _request_correction(
        self, kg: int, group: KeyGroupState, ids: Int32Array, ends: Int64Array, output: Output
    ) -> None:
        self._corrector.request(self._state()[0], kg, group, ids, ends, output)

    def on_processing_time(self, now_ns: int, output: Output) -> None:
        """Emit the corrections that came back, and re-request those restored from a
        checkpoint (called by the source task on every tick)."""
        if self.corrections is not None:
            self._corrector.tick(self._state()[0], self.corrections, self._groups, output)

    # -- firing ---------------------------------------------------------------------------
    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        kg = watermark.key_group
        group = self._group(kg)
        wm = watermark.timestamp_ns
        prev = group.watermark_ns
        if prev is not None and wm <= prev:
            return
        backend, _ = self._state()
        start = None if prev is None else encode_time(prev + 1)
        windows = list(kernels.by_window(self._scan(kg, start, encode_time(wm + 1))))
        group.watermark_ns = wm
        backend.put(kg, STATE_META, META_WATERMARK, wm)
        if windows:
            self._emit(kg, group, windows, output, reemission=False)
        purge_to = encode_time(wm - self.allowed_lateness_ns + 1)
        kind = group.kind()
        if self._raw and kind is not None and group.any_counter():
            purged = self._chunks(kg, None, purge_to)
            if purged:  # their counters' last samples pair with the next windows' first
                last = aggregates.window_last(purged, kind, self._unit_ns)
                self._set_frontier(kg, group, aggregates.merge_last(group.frontier, last))
        backend.delete_range(kg, STATE_CHUNKS, None, purge_to)
        self._expire(kg, group, wm - self.allowed_lateness_ns)
        output.emit_watermark(watermark)

    def _scan(self, kg: int, start: bytes | None, stop: bytes | None) -> list[tuple[bytes, Any]]:
        backend, _ = self._state()
        return list(backend.scan(kg, STATE_CHUNKS, start, stop))

    def _chunks(self, kg: int, start: bytes | None, stop: bytes | None) -> list[Chunk]:
        return [dict(entry.columns) for _, entry in self._scan(kg, start, stop)]

    def _emit(
        self,
        kg: int,
        group: KeyGroupState,
        windows: list[tuple[int, list[Chunk]]],
        output: Output,
        *,
        reemission: bool,
    ) -> None:
        batch = self._aggregate(kg, group, windows)
        if batch is None:
            return
        if reemission:
            self.metrics.reemitted_windows += len(batch)
        else:
            self.metrics.fired_windows += len(batch)
        output.emit(batch)

    def _aggregate(
        self, kg: int, group: KeyGroupState, windows: list[tuple[int, list[Chunk]]]
    ) -> AggregateBatch | None:
        kind = group.kind()
        previous = None
        if self._raw and kind is not None and group.any_counter() and windows:
            earlier = self._chunks(kg, None, encode_time(windows[0][0]))
            previous = aggregates.merge_last(
                group.frontier, aggregates.window_last(earlier, kind, self._unit_ns)
            )
        counters = self._raw and group.any_counter()
        kind_at = None
        base = group.kinds.of(group.keys.keys)
        if self._raw and group.declared and base is not None:
            keys, declared, base_kind = group.keys.keys, group.declared, base

            def kind_at(start_ns: int) -> Any:
                return declared.at(keys, base_kind, start_ns)

        fired = aggregates.fire_windows(
            windows, self._raw, self._unit_ns, self.window_ns, kind, previous, counters, kind_at
        )
        if fired is None:
            return None
        r, all_bins = fired
        return AggregateBatch(
            key_group=kg,
            tier=self.tier.name,
            window_ns=self.window_ns,
            keys=group.keys.keys,
            key_idx=r["k"],
            window_start_ns=r["start"],
            count=r["c"],
            sum=r["s"],
            min=r["mn"],
            max=r["mx"],
            first_ts_ns=r["ft"],
            first=r["f"],
            last_ts_ns=r["lt"],
            last=r["l"],
            increase=r.get("inc"),
            resets=r.get("rs"),
            sketches=all_bins,
        )

    # -- queryable state ------------------------------------------------------------------
    def current_aggregates(self, key_group: int) -> AggregateBatch | None:
        """The aggregates of every window still held in state (open, or fired but within the
        allowed lateness), computed now: queryable state for the REST API."""
        group = self._group(key_group)
        windows = list(kernels.by_window(self._scan(key_group, None, None)))
        return self._aggregate(key_group, group, windows)
