"""Append-only key dictionaries: window key strings <-> dense int32 ids, per key group.

Mapping key *strings* to ids is the one per-key cost left in a vectorized pipeline: a fresh
string (one a decoder just made) must be hashed and compared byte by byte against the
dictionary's copy, which is memory-bound. The classes here make that happen once per key and
process instead of once per key and batch:

* :class:`KeyDictionary` - an append-only ``str -> id`` dictionary. Its :attr:`~KeyDictionary.keys`
  is a :class:`KeyTuple`: an immutable snapshot that carries the dictionary's *lineage* token.
  Two snapshots of one lineage are prefixes of each other (the dictionary only grows), so a
  consumer can tell in O(1) that a new tuple extends one it has already mapped.
* :class:`KeyMapping` - the consumer side (the tier window operator): maps the key tuple an
  upstream hands over to the ids of its own dictionary, cached by identity and lineage, so that
  only keys it has never seen cost anything.
* :class:`WindowKeyIndex` - the source side (one per Kafka partition reader): turns decoded
  records (:func:`metricsflow.model.columnar.decode_columnar` with a persistent
  :class:`~metricsflow.model.columnar.KeyInterner`, so series and field ids are stable across
  records) into window key ids with NumPy only; Python work is per *new* (db, series, field).

Everything is append-only: a series that stops reporting stays in the dictionaries until the
process restarts or the key group moves (see docs/windows.md, "Not done yet").
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from metricsflow.model.columnar import ColumnarChunk, KeyInterner
from metricsflow.runtime.records import window_key

Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]

_FIELD_BITS = 24
_FIELD_MASK = (1 << _FIELD_BITS) - 1
_EMPTY_IDS: Int32Array = np.empty(0, dtype=np.int32)


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
    """Append-only ``key -> id`` dictionary (ids are 0, 1, 2, ... in order of first add)."""

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
    """Maps the key tuples one upstream hands over to the ids of a target dictionary.

    Cached: the same tuple object costs nothing; a tuple that extends the previous one (a
    :class:`KeyTuple` of the same lineage, or a plain tuple whose prefix compares equal) costs
    only its new suffix; anything else is mapped in full. The target dictionary may differ from
    the upstream's (e.g. after a restore the operator's ids come from its state).
    """

    __slots__ = ("_map", "_source")

    def __init__(self) -> None:
        self._source: tuple[str, ...] | None = None
        self._map: Int32Array = _EMPTY_IDS

    def map(self, keys: tuple[str, ...], target: KeyDictionary) -> Int32Array:
        prev = self._source
        if keys is prev:
            return self._map
        n = 0 if prev is None else len(prev)
        if isinstance(keys, KeyTuple) and keys.extends(prev):
            if len(keys) < n:  # an older snapshot of the same dictionary: a prefix
                return self._map[: len(keys)]
            mapping = self._extend(keys, n, target)
        elif prev is not None and len(keys) > n and keys[:n] == prev:
            mapping = self._extend(keys, n, target)
        else:
            mapping = target.ids(keys)
        self._source, self._map = keys, mapping
        return mapping

    def _extend(self, keys: tuple[str, ...], n: int, target: KeyDictionary) -> Int32Array:
        if len(keys) == n:
            return self._map
        tail = target.ids(keys[n:])
        return tail if n == 0 else np.concatenate((self._map, tail))


class WindowKeyIndex:
    """Window key ids for the decoded records of one partition (source side).

    Decode every record of the partition with :attr:`interner`
    (``decode_columnar(value, interner)``): series and field ids are then stable across
    records, and :meth:`ids` maps ``(db, series id, field id)`` to the id of
    ``window_key(db, series, field)`` in :attr:`dictionary` with a sorted-array lookup
    (``np.searchsorted``); only pairs never seen before build a key string. Hand
    ``dictionary.keys`` to the operators as the batch's ``keys``.
    """

    __slots__ = ("_tables", "dictionary", "interner")

    def __init__(self) -> None:
        self.interner = KeyInterner()
        self.dictionary = KeyDictionary()
        # per database: sorted composite codes (series << 24 | field) and their key ids
        self._tables: dict[str, tuple[Int64Array, Int32Array]] = {}

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
        if table is not None:
            found = _lookup(table, codes)
            if found is not None:
                return found
        table = self._add(db, table, np.unique(codes), columns)
        found = _lookup(table, codes)
        assert found is not None
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
