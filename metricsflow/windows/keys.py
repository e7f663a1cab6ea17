"""Key dictionaries: window key strings <-> dense int32 ids, per key group, with expiry.

Mapping key *strings* to ids is the one per-key cost left in a vectorized pipeline: a fresh
string (one a decoder just made) must be hashed and compared byte by byte against the
dictionary's copy, which is memory-bound. The classes here make that happen once per key and
process instead of once per key and batch:

* :class:`KeyDictionary` - a ``str -> id`` dictionary, append-only between compactions. Its
  :attr:`~KeyDictionary.keys` is a :class:`KeyTuple`: an immutable snapshot that carries the
  dictionary's *lineage* token. Two snapshots of one lineage are prefixes of each other, so a
  consumer can tell in O(1) that a new tuple extends one it has already mapped.
  :meth:`~KeyDictionary.compact` keeps only some keys (ids renumbered in order) and starts a
  new lineage.
* :class:`KeyMapping` - the consumer side: maps the ids an upstream's key tuple uses to the ids
  of its own dictionary, lazily (only ids a batch uses, once per lineage of either side).
* :class:`WindowKeys` - the dictionary of one key group of a window operator, persisted in its
  keyed state (``window-keys``), and its **expiry**: the last window end that references each
  key id is tracked; once the watermark has purged that window (``end + allowed lateness``),
  the key is dead. When at least a quarter of the keys are dead, the dictionary is compacted
  and every state that holds key ids (``window-chunks``, pending corrections) is renumbered,
  so the dictionary holds at most 4/3 of the live keys (docs/windows.md, "State expiry").
* :class:`WindowKeyIndex` - the source side (one per Kafka partition reader): turns decoded
  records (:func:`metricsflow.model.columnar.decode_columnar` with a persistent
  :class:`~metricsflow.model.columnar.KeyInterner`, so series and field ids are stable across
  records) into window key ids with NumPy only; Python work is per *new* (db, series, field).
  It is a cache, not state: it forgets everything (:meth:`WindowKeyIndex.sweep`) when a
  quarter of its keys were not used during the last sweep period (10 minutes of receive time).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from operator import itemgetter
from typing import Any

import numpy as np
import numpy.typing as npt

from metricsflow.errors import StateError
from metricsflow.model.columnar import ColumnarChunk, KeyInterner
from metricsflow.runtime.records import window_key
from metricsflow.state.base import KeyedStateBackend
from metricsflow.state.serializers import ColumnarChunk as StateChunk
from metricsflow.windows.corrections import STATE_PENDING, decode_time, pending_key

logger = logging.getLogger(__name__)

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]

_FIELD_BITS = 24
_FIELD_MASK = (1 << _FIELD_BITS) - 1
_EMPTY_IDS: Int32Array = np.empty(0, dtype=np.int32)
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

STATE_CHUNKS = "window-chunks"
"""``be(window_end) + be(seq)`` -> ``ColumnarChunk`` of window rows; column ``k`` holds key ids"""
STATE_KEYS = "window-keys"
"""``be32(first id)`` -> ``ColumnarChunk(keys=...)``: the keys with ids ``first, first + 1, ...``"""


class KeyTuple(tuple[str, ...]):
    """A snapshot of a :class:`KeyDictionary`: key ``i`` has id ``i``.

    ``lineage`` identifies the dictionary it came from: of two ``KeyTuple`` with the same
    lineage, the shorter is a prefix of the longer. It is a plain tuple otherwise.
    """

    lineage: object

    def __new__(cls, keys: Iterable[str], lineage: object) -> KeyTuple:
        self = super().__new__(cls, keys)
        self.lineage = lineage
        return self

    def extends(self, other: tuple[str, ...] | None) -> bool:
        """Whether ``other`` is known to be a prefix of this tuple (same lineage, shorter or
        equal), without comparing the elements."""
        return (
            other is not None
            and getattr(other, "lineage", None) is self.lineage
            and len(other) <= len(self)
        )


class KeyDictionary:
    """``key -> id`` dictionary (ids are 0, 1, 2, ... in order of first add), append-only
    until :meth:`compact`."""

    __slots__ = ("_ids", "_keys", "_lineage", "_snapshot")

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys: list[str] = []
        self._ids: dict[str, int] = {}
        self._lineage = object()
        self._snapshot: KeyTuple | None = None
        self.add(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._ids

    def key(self, key_id: int) -> str:
        return self._keys[key_id]

    @property
    def lineage(self) -> object:
        """Changes when :meth:`compact` renumbers the ids (snapshots carry it)."""
        return self._lineage

    def compact(self, keep: npt.NDArray[np.bool_]) -> Int32Array:
        """Keep the keys whose ``keep`` is true (ids renumbered in their order, so sorted ids
        stay sorted), start a new lineage; return old id -> new id (-1: dropped)."""
        remap = np.full(len(self._keys), -1, dtype=np.int32)
        kept = np.flatnonzero(keep[: len(self._keys)])
        remap[kept] = np.arange(kept.shape[0], dtype=np.int32)
        keys = self._keys
        self._keys = [keys[i] for i in kept.tolist()]
        self._ids = dict(zip(self._keys, range(len(self._keys)), strict=True))
        self._lineage = object()
        self._snapshot = None
        return remap

    def get(self, key: str) -> int | None:
        return self._ids.get(key)

    def id_of(self, key: str) -> int:
        """The id of ``key``, added if new."""
        i = self._ids.get(key)
        if i is None:
            i = self._ids[key] = len(self._keys)
            self._keys.append(key)
            self._snapshot = None
        return i

    def add(self, keys: Iterable[str]) -> list[str]:
        """Add the keys not in the dictionary yet (in order, once each); returns them."""
        ids = self._ids
        new = [k for k in dict.fromkeys(keys) if k not in ids]
        if new:
            first = len(self._keys)
            self._keys.extend(new)
            ids.update(zip(new, range(first, first + len(new)), strict=True))
            self._snapshot = None
        return new

    def ids(self, keys: Sequence[str]) -> Int32Array:
        """The id of every key of ``keys`` (new keys are added first, in order)."""
        if not keys:
            return _EMPTY_IDS
        get = self._ids.__getitem__
        try:  # the common case: every key is known (one C-level pass, no list)
            return np.fromiter(map(get, keys), dtype=np.int32, count=len(keys))
        except KeyError:
            pass
        self.add(keys)
        return np.fromiter(map(get, keys), dtype=np.int32, count=len(keys))

    def keys_from(self, first: int) -> list[str]:
        """The keys with ids ``first, first + 1, ...`` (what was added since ``len`` was
        ``first``)."""
        return self._keys[first:]

    @property
    def keys(self) -> KeyTuple:
        """The current snapshot (the same object until a key is added)."""
        snapshot = self._snapshot
        if snapshot is None:
            snapshot = self._snapshot = KeyTuple(self._keys, self._lineage)
        return snapshot


class KeyMapping:
    """Maps the ids of the key tuples one upstream hands over to the ids of a target dictionary.

    Lazy and cached: only the upstream ids a batch uses are looked up, once, as long as the
    upstream's tuples extend each other (the same object, or a :class:`KeyTuple` of the same
    lineage) and the target keeps its lineage (no compaction); anything else starts over.
    """

    __slots__ = ("_map", "_source", "_target_lineage")

    def __init__(self) -> None:
        self._source: tuple[str, ...] | None = None
        self._target_lineage: object = None
        self._map: Int32Array = _EMPTY_IDS

    def map(self, keys: tuple[str, ...], key_idx: Int32Array, target: KeyDictionary) -> Int32Array:
        """The target id of every row (``key_idx`` indexes ``keys``); new keys are added."""
        prev = self._source
        if (
            prev is None
            or target.lineage is not self._target_lineage
            or not (keys is prev or (isinstance(keys, KeyTuple) and keys.extends(prev)))
        ):
            self._map = np.full(len(keys), -1, dtype=np.int32)
            self._target_lineage = target.lineage
        elif len(keys) > len(self._map):
            grow = np.full(len(keys) - len(self._map), -1, dtype=np.int32)
            self._map = np.concatenate((self._map, grow))
        self._source = keys
        if len(key_idx) == 0:
            return _EMPTY_IDS
        ids: Int32Array = self._map[key_idx]
        missing = ids < 0
        if bool(missing.any()):
            wanted = np.zeros(len(keys), dtype=np.bool_)
            wanted[key_idx[missing]] = True
            need = np.flatnonzero(wanted)
            if need.shape[0] == len(keys):  # all of them: no gather
                self._map = target.ids(keys)
            else:
                got = itemgetter(*need.tolist())(keys)
                self._map[need] = target.ids((got,) if need.shape[0] == 1 else got)
            ids = self._map[key_idx]
        return ids


class WindowKeys:
    """The key dictionary of one key group of a window operator, in its keyed state, with expiry.

    * :meth:`map` turns an upstream batch's key ids into ids of :attr:`dictionary` and persists
      new keys in ``window-keys`` (entries ``be32(first id) -> keys``).
    * :meth:`touch` records that rows of key ids were stored in a window; :meth:`pin` that a
      correction is pending for them (kept until it is settled).
    * :meth:`expire`, after the operator purged every window ending at or before
      ``purged_through_ns``: keys none of whose windows is left (and with no pending
      correction) are dead; once they are at least a quarter of the dictionary, it is compacted
      and ``window-chunks``, ``window-corrections`` and ``window-keys`` are rewritten with the
      new ids. Any other state that holds key ids must be renumbered with the map
      :meth:`expire` returns.

    The tracking is memory only: :meth:`load` rebuilds it from the state (the window ends of
    the chunks left, the pending corrections), so a restored operator expires the same keys.
    """

    __slots__ = ("_last_end", "_pinned", "dictionary", "mapping")

    def __init__(self) -> None:
        self.dictionary = KeyDictionary()
        self.mapping = KeyMapping()
        """the upstream's key tuples -> ids of ``dictionary``"""
        self._last_end: Int64Array = np.empty(0, dtype=np.int64)
        self._pinned: npt.NDArray[np.bool_] = np.empty(0, dtype=np.bool_)

    def __len__(self) -> int:
        return len(self.dictionary)

    @property
    def keys(self) -> KeyTuple:
        return self.dictionary.keys

    @classmethod
    def load(cls, backend: KeyedStateBackend, kg: int) -> WindowKeys:
        self = cls()
        for _, entry in backend.scan(kg, STATE_KEYS):
            self.dictionary.add(entry.keys)
        self._grow()
        for key, entry in backend.scan(kg, STATE_CHUNKS):
            self.touch(entry.columns["k"], decode_time(key))
        ids, _ = _pending(backend, kg)
        self.pin(ids)
        return self

    def _grow(self) -> None:
        n = len(self.dictionary)
        have = self._last_end.shape[0]
        if n > have:
            size = max(n, 2 * have)
            self._last_end = np.concatenate(
                (self._last_end, np.full(size - have, _INT64_MIN, dtype=np.int64))
            )
            self._pinned = np.concatenate((self._pinned, np.zeros(size - have, dtype=np.bool_)))

    def map(
        self,
        backend: KeyedStateBackend,
        kg: int,
        keys: tuple[str, ...],
        key_idx: Int32Array,
        mapping: KeyMapping | None = None,
    ) -> Int32Array:
        """Ids of the rows (``keys[key_idx]``) through ``mapping`` (default: the upstream's
        cached one; pass a fresh one for tuples of another origin); new keys are persisted."""
        dictionary = self.dictionary
        first = len(dictionary)
        ids = (self.mapping if mapping is None else mapping).map(keys, key_idx, dictionary)
        if len(dictionary) > first:
            new = dictionary.keys_from(first)
            backend.put(kg, STATE_KEYS, first.to_bytes(4, "big"), StateChunk({}, tuple(new)))
            self._grow()
        return ids

    def touch(self, ids: Int32Array, window_end_ns: int) -> None:
        """Rows of ``ids`` were stored in the window ending at ``window_end_ns``."""
        last = self._last_end
        last[ids] = np.maximum(last[ids], window_end_ns)

    def pin(self, ids: npt.NDArray[Any]) -> None:
        """A correction is pending for ``ids``: they stay until a compaction finds it settled."""
        self._pinned[ids] = True

    def expire(
        self,
        backend: KeyedStateBackend,
        kg: int,
        purged_through_ns: int,
        keep_ids: npt.NDArray[Any] | None = None,
    ) -> Int32Array | None:
        """Compact if at least a quarter of the keys are dead (see the class); ``keep_ids``
        are kept whatever their windows (the caller holds other state for them). Returns
        ``None`` or, after a compaction, old id -> new id (-1: expired): a caller that keeps
        other state indexed by key id renumbers it with this."""
        n = len(self.dictionary)
        if n == 0:
            return None
        through = min(max(purged_through_ns, _INT64_MIN), _INT64_MAX)
        gone = self._last_end[:n] <= through
        held = self._pinned[:n]
        if keep_ids is not None and keep_ids.shape[0]:
            held = held.copy()
            held[keep_ids] = True
        dead = int(np.count_nonzero(gone & ~held))
        if dead == 0 or 4 * dead < n:
            return None
        pending_ids, pending = _pending(backend, kg)
        pinned = np.zeros(n, dtype=np.bool_)
        pinned[pending_ids] = True
        keep = ~gone | pinned
        if keep_ids is not None:
            keep[keep_ids] = True
        remap = self.dictionary.compact(keep)
        self._last_end = self._last_end[:n][keep]
        self._pinned = pinned[keep]
        self.mapping = KeyMapping()
        chunks = list(backend.scan(kg, STATE_CHUNKS))
        for key, entry in chunks:
            columns = dict(entry.columns)
            columns["k"] = remap[columns["k"]]
            if columns["k"].shape[0] and int(columns["k"].min()) < 0:
                raise StateError(
                    f"key group {kg}: a chunk of window end {decode_time(key)} holds a key "
                    f"whose windows ended at or before {through} (purged)"
                )
            backend.put(kg, STATE_CHUNKS, key, StateChunk(columns))
        for key, _ in pending:
            backend.delete(kg, STATE_PENDING, key)
        for key, seq in pending:
            new_id = int(remap[int.from_bytes(key[8:12], "big")])
            backend.put(kg, STATE_PENDING, pending_key(decode_time(key), new_id), seq)
        backend.delete_range(kg, STATE_KEYS)
        if len(self.dictionary):
            backend.put(kg, STATE_KEYS, bytes(4), StateChunk({}, tuple(self.dictionary.keys)))
        logger.info(
            "key dictionary compacted key_group=%d expired=%d kept=%d chunks=%d",
            kg,
            n - len(self.dictionary),
            len(self.dictionary),
            len(chunks),
        )
        return remap


def _pending(backend: KeyedStateBackend, kg: int) -> tuple[Int64Array, list[tuple[bytes, int]]]:
    entries = [(key, int(seq)) for key, seq in backend.scan(kg, STATE_PENDING)]
    ids = np.array([int.from_bytes(key[8:12], "big") for key, _ in entries], dtype=np.int64)
    return ids, entries


class WindowKeyIndex:
    """Window key ids for the decoded records of one partition (source side).

    Decode every record of the partition with :attr:`interner`
    (``decode_columnar(value, interner)``): series and field ids are then stable across
    records, and :meth:`ids` maps ``(db, series id, field id)`` to the id of
    ``window_key(db, series, field)`` in :attr:`dictionary` with a sorted-array lookup
    (``np.searchsorted``); only pairs never seen before build a key string. Hand
    ``dictionary.keys`` to the operators as the batch's ``keys``.

    Series churn: the index is a cache (ids mean nothing beyond the batches that carry their
    key tuple), so :meth:`sweep`, called after each fetch with the newest receive time of its
    records, forgets everything (a new interner and dictionary, a new lineage) when a sweep
    period is over - ``sweep_period_ns`` of receive time, which unlike event time neither
    jumps back with a backfill nor ahead with a future point, and is replayed as it was - and
    a quarter or more of the keys were not used in it. Memory stays O(series reporting within
    a period); a series reporting less often is interned again (a cost, not an error).
    """

    __slots__ = (
        "_period_start_ns",
        "_tables",
        "_used",
        "dictionary",
        "interner",
        "sweep_period_ns",
        "sweeps",
    )

    def __init__(self, *, sweep_period_ns: int = 600 * 10**9) -> None:
        self.sweep_period_ns = sweep_period_ns
        self.sweeps = 0
        """how many times the index forgot its keys"""
        self._period_start_ns: int | None = None
        self._reset()

    def _reset(self) -> None:
        self.interner = KeyInterner()
        self.dictionary = KeyDictionary()
        # per database: sorted composite codes (series << 24 | field) and their key ids
        self._tables: dict[str, tuple[Int64Array, Int32Array]] = {}
        self._used: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)

    def sweep(self, now_ns: int) -> bool:
        """At the end of a sweep period (``now_ns``: the receive time of the newest record),
        forget every key if a quarter or more were not used in it (the next records start a
        new dictionary); returns whether it did."""
        start = self._period_start_ns
        if start is None or now_ns < start:
            self._period_start_ns = now_ns
            return False
        if now_ns - start < self.sweep_period_ns:
            return False
        self._period_start_ns = now_ns
        n = len(self.dictionary)
        used = int(np.count_nonzero(self._used))
        self._used[:] = False
        if 4 * (n - used) < n:
            return False
        logger.info("source key index forgot its keys keys=%d used=%d", n, used)
        self.sweeps += 1
        self._reset()
        return True

    @property
    def keys(self) -> KeyTuple:
        return self.dictionary.keys

    def ids(self, db: str, columns: ColumnarChunk) -> Int32Array:
        """The window key id of every sample of ``columns`` (decoded with :attr:`interner`)."""
        if len(columns) == 0:
            return _EMPTY_IDS
        if len(columns.field_keys) > _FIELD_MASK:
            raise ValueError(f"more than {_FIELD_MASK} distinct field keys in one partition")
        codes = (columns.series_idx.astype(np.int64) << _FIELD_BITS) | columns.field_idx
        table = self._tables.get(db)
        found = None if table is None else _lookup(table, codes)
        if found is None:
            table = self._add(db, table, np.unique(codes), columns)
            found = _lookup(table, codes)
            assert found is not None
            if len(self._used) < len(self.dictionary):
                grow = max(len(self.dictionary), 2 * len(self._used)) - len(self._used)
                self._used = np.concatenate((self._used, np.zeros(grow, dtype=np.bool_)))
        self._used[found] = True
        return found

    def _add(
        self,
        db: str,
        table: tuple[Int64Array, Int32Array] | None,
        candidates: Int64Array,
        columns: ColumnarChunk,
    ) -> tuple[Int64Array, Int32Array]:
        if table is not None:
            pos = np.minimum(np.searchsorted(table[0], candidates), len(table[0]) - 1)
            candidates = candidates[table[0][pos] != candidates]
        series, fields, dictionary = columns.series_keys, columns.field_keys, self.dictionary
        new_ids = np.fromiter(
            (
                dictionary.id_of(window_key(db, series[c >> _FIELD_BITS], fields[c & _FIELD_MASK]))
                for c in candidates.tolist()
            ),
            dtype=np.int32,
            count=len(candidates),
        )
        if table is None:
            codes, ids = candidates, new_ids
        else:
            codes = np.concatenate((table[0], candidates))
            ids = np.concatenate((table[1], new_ids))
            order = np.argsort(codes, kind="stable")
            codes, ids = codes[order], ids[order]
        self._tables[db] = (codes, ids)
        return codes, ids


def _lookup(table: tuple[Int64Array, Int32Array], codes: Int64Array) -> Int32Array | None:
    """Ids of ``codes`` from a sorted table, or ``None`` if any code is missing."""
    known, ids = table
    if len(known) == 0:
        return None
    pos = np.searchsorted(known, codes)
    np.minimum(pos, len(known) - 1, out=pos)
    if not bool((known[pos] == codes).all()):
        return None
    out: Int32Array = ids[pos]
    return out
