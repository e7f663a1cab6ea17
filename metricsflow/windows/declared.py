"""Kinds declared in the log: counters and gauges from Prometheus remote-write metadata.

The gateway turns remote-write metadata into ``kinds1`` records in every partition
(``metricsflow.model.declarations``); the Kafka reader hands them to the chain inside the
:class:`~metricsflow.runtime.records.RecordBatch` of their micro-batch, at their row position
(:class:`~metricsflow.runtime.records.KindChange`). The finest tier's window operator applies
them (docs/counters-and-percentiles.md, "Types from remote-write metadata"):

* **When.** A declaration takes effect at the first window of the finest tier that has not
  fired when the declaration is read (the window holding ``max(watermark, row watermark at the
  declaration)``) and whose previous window is still in state (not purged: within the allowed
  lateness), so the previous samples of the keys that reported there are kept. Windows that
  already fired keep what they were written with; every later window (on time or late) uses
  the declared kind. The switch is a *transition* kept in keyed
  state (``window-declared``, checkpointed with the key group), so a key group moved to another
  worker or restored keeps it.
* **What.** A declared counter makes every field of the measurement (in that database) a
  counter; a declared gauge turns a field the patterns call a counter back into a gauge (a
  sketched field stays sketched). A repeat of the current kind changes nothing; a new kind
  adds a transition (at most one per window: a second one in the same window replaces it).
* **Coarser tiers** need nothing: a window of a coarser tier adds the finer increases, and a
  finer window written as a gauge has no increase (NaN), so a coarser window that straddles
  the switch has no ``increase_`` either, and every coarser window after it is exact.
* **The first counter window** pairs its first sample with the key's previous sample, which is
  in the window before (still in state at the declaration) or later; a key silent for that whole
  window whose previous sample was purged while it was a gauge starts like a new series there
  (its first sample contributes nothing).

Replays read the declarations at the same log positions; only idle watermark advances (wall
clock) can move the switch by a window, as they can move lateness (docs/windows.md).
"""

from __future__ import annotations

import bisect
import logging

import numpy as np
import numpy.typing as npt

from metricsflow.errors import StateError
from metricsflow.model.declarations import DeclaredKind, KindDeclarations
from metricsflow.runtime.records import RecordBatch, split_window_key
from metricsflow.windows.aggregates import COUNTER, GAUGE, measurement_of
from metricsflow.windows.keys import KeyTuple

Int8Array = npt.NDArray[np.int8]
Int32Array = npt.NDArray[np.int32]
Int64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

logger = logging.getLogger(__name__)

STATE_DECLARED = "window-declared"
DECLARED_KEY = b"d"

_KIND_CODE = {DeclaredKind.COUNTER: COUNTER, DeclaredKind.GAUGE: GAUGE}

Measurement = tuple[str, str]
"""(database, measurement)"""


class DeclaredKinds:
    """Transitions ``(effective window start ns, kind)`` per declared (database, measurement)
    of one key group, and the kinds they give the keys of its dictionary."""

    def __init__(self, transitions: dict[Measurement, list[tuple[int, int]]] | None = None) -> None:
        self.transitions: dict[Measurement, list[tuple[int, int]]] = transitions or {}
        self._slot_of: dict[Measurement, int] = {}
        self._effective: list[int] = []
        self._renumber()
        self._keys: tuple[str, ...] = ()
        self._slots: Int32Array = np.zeros(0, np.int32)
        self._cache: dict[tuple[object, ...], Int8Array] = {}

    def __bool__(self) -> bool:
        return bool(self.transitions)

    # -- declaring -----------------------------------------------------------------------
    def declare(self, declarations: KindDeclarations, effective_ns: int) -> int:
        """Apply one ``kinds1`` record from window start ``effective_ns`` on; the number of
        measurements whose kind changed."""
        changed = 0
        for measurement, declared in sorted(declarations.kinds.items()):
            kind = _KIND_CODE[declared]
            history = self.transitions.setdefault((declarations.db, measurement), [])
            if history and history[-1][1] == kind:
                continue
            if history and history[-1][0] >= effective_ns:
                history[-1] = (history[-1][0], kind)
                if len(history) > 1 and history[-2][1] == kind:
                    history.pop()
            else:
                history.append((effective_ns, kind))
            changed += 1
        if changed:
            self._renumber()
        return changed

    def _renumber(self) -> None:
        self._slot_of = {m: i for i, m in enumerate(sorted(self.transitions))}
        self._effective = sorted({e for history in self.transitions.values() for e, _ in history})
        self._keys = ()
        self._cache = {}

    # -- state ----------------------------------------------------------------------------
    def to_state(self) -> list[list[object]]:
        return [
            [db, measurement, [list(t) for t in history]]
            for (db, measurement), history in sorted(self.transitions.items())
        ]

    @classmethod
    def from_state(cls, stored: list[list[object]] | None) -> DeclaredKinds:
        transitions: dict[Measurement, list[tuple[int, int]]] = {}
        for db, measurement, history in stored or ():
            if not (isinstance(db, str) and isinstance(measurement, str)):
                raise StateError(f"window-declared: bad entry {db!r}/{measurement!r}")
            if not isinstance(history, list):
                raise StateError(f"window-declared: bad transitions {history!r}")
            transitions[(db, measurement)] = [(int(e), int(k)) for e, k in history]
        return cls(transitions)

    # -- kinds of keys --------------------------------------------------------------------
    def _slots_of(self, keys: tuple[str, ...]) -> Int32Array:
        """Per key id, the index of its declared measurement (``len(slots)``: none)."""
        if keys is self._keys:
            return self._slots
        start = len(self._keys)
        if not (isinstance(keys, KeyTuple) and keys.extends(self._keys)):
            start = 0
        fresh = np.fromiter(
            (self._slot(k) for k in keys[start:]), dtype=np.int32, count=len(keys) - start
        )
        self._slots = fresh if start == 0 else np.concatenate((self._slots[:start], fresh))
        self._keys = keys
        self._cache = {}
        return self._slots

    def _slot(self, key: str) -> int:
        """The key's declared measurement, or ``len(slots)`` (the "none" entry of the
        per-slot tables) when it has none."""
        db, series, _ = split_window_key(key)
        return self._slot_of.get((db, measurement_of(series)), len(self._slot_of))

    def ever(self, keys: tuple[str, ...], base: Int8Array) -> Int8Array:
        """``base`` with every key that is a counter in some window made a counter: whose last
        samples the operator must keep (previous samples, purge frontier)."""
        if not self.transitions:
            return base
        slots = self._slots_of(keys)
        cache_key: tuple[object, ...] = ("ever", id(base))
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        per_slot = np.full(len(self._slot_of) + 1, -1, dtype=np.int8)  # the last: no slot
        for measurement, slot in self._slot_of.items():
            if any(kind == COUNTER for _, kind in self.transitions[measurement]):
                per_slot[slot] = COUNTER
        out = np.where(per_slot[slots] == COUNTER, np.int8(COUNTER), base).astype(np.int8)
        self._cache[cache_key] = out
        return out

    def at(self, keys: tuple[str, ...], base: Int8Array, window_start_ns: int) -> Int8Array:
        """The kinds of ``keys`` in the window starting at ``window_start_ns``."""
        if not self.transitions:
            return base
        slots = self._slots_of(keys)
        # the kinds depend only on which transitions are in effect: on the window's place
        # among the distinct effective times
        place = bisect.bisect_right(self._effective, window_start_ns)
        cache_key: tuple[object, ...] = ("at", id(base), place)
        found = self._cache.get(cache_key)
        if found is not None:
            return found
        per_slot = np.full(len(self._slot_of) + 1, -1, dtype=np.int8)  # the last: no slot
        for measurement, slot in self._slot_of.items():
            kind = _kind_at(self.transitions[measurement], window_start_ns)
            if kind is not None:
                per_slot[slot] = kind
        declared = per_slot[slots]
        out = base.copy()
        out[declared == COUNTER] = COUNTER
        out[(declared == GAUGE) & (base == COUNTER)] = GAUGE
        if len(self._cache) > 64:
            self._cache.clear()
        self._cache[cache_key] = out
        return out

    def counter_flags(
        self, keys: tuple[str, ...], base: Int8Array, key_ids: Int32Array, starts: Int64Array
    ) -> BoolArray:
        """Per (key id, window start): whether it is a counter there (correction requests)."""
        out = np.zeros(starts.shape[0], dtype=np.bool_)
        for start in np.unique(starts).tolist():
            rows = starts == start
            out[rows] = self.at(keys, base, start)[key_ids[rows]] == COUNTER
        return out


def apply_declarations(
    declared: DeclaredKinds,
    batch: RecordBatch,
    watermark_ns: int | None,
    window_ns: int,
    allowed_lateness_ns: int,
) -> int:
    """Apply the ``kinds1`` records of ``batch`` in order, each from the effective window at
    its position (:func:`effective_window_start`); the number of measurements changed."""
    changed = 0
    for change in batch.kind_changes:
        row_wm = None
        if batch.row_watermark_ns is not None and change.row > 0:
            row_wm = int(batch.row_watermark_ns[change.row - 1])
        effective = effective_window_start(watermark_ns, row_wm, window_ns, allowed_lateness_ns)
        changed += declared.declare(change.declarations, effective)
        logger.info(
            "kinds declared key_group=%d db=%s measurements=%d effective_ns=%d",
            batch.key_group,
            change.declarations.db,
            len(change.declarations.kinds),
            effective,
        )
    return changed


def _kind_at(history: list[tuple[int, int]], window_start_ns: int) -> int | None:
    kind = None
    for effective_ns, k in history:
        if effective_ns > window_start_ns:
            break
        kind = k
    return kind


def effective_window_start(
    watermark_ns: int | None, row_watermark_ns: int | None, window_ns: int, allowed_lateness_ns: int
) -> int:
    """The first window a declaration read at this position may switch: one that has not fired
    yet, and whose previous window is still in state (not purged), so that the previous sample
    of every key that reported in it is kept from then on (``window_last`` of a key that is a
    counter in any window)."""
    known = [w for w in (watermark_ns, row_watermark_ns) if w is not None and w > -(2**63)]
    if not known:
        return -(2**63)
    wm = max(known)
    unfired = (wm // window_ns) * window_ns
    kept = ((wm - allowed_lateness_ns) // window_ns) * window_ns  # the oldest window in state
    return max(unfired, kept + window_ns)
