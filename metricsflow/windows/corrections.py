"""Where re-derived windows come back to the window operators (docs/windows.md, "Corrections").

A window operator that gets rows for a window whose state is gone sends a
:class:`~metricsflow.runtime.records.CorrectionRequest` on side output ``"correct"``. The sink
side (``metricsflow.sinks.corrections``) executes it once the sink has acknowledged everything
before it, and posts the :class:`~metricsflow.runtime.records.CorrectionResult` here. The
operator of that key group and tier takes it on its next processing-time tick, emits the rows
(to the sink and to the next tier) and forgets the pending request.

The mailbox holds at most what the bounded correction queue let through (the sink stops taking
requests while too many are in flight), and the source task ticks at least every 200 ms while
it runs, so it stays small; :meth:`CorrectionMailbox.rows` is part of ``correction_backlog``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Protocol

import numpy as np

from metricsflow.runtime.records import CorrectionResult
from metricsflow.state.base import KeyedStateBackend


class CorrectionInbox(Protocol):
    """What a window operator reads its corrections from."""

    def take(self, key_group: int, tier: str) -> list[CorrectionResult]:
        """Every result waiting for ``(key_group, tier)``, oldest first (removed)."""
        ...


class CorrectionMailbox:
    """Thread-safe results per ``(key group, tier)``: put by the correction thread, taken by
    the operators on the event loop."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._results: dict[tuple[int, str], deque[CorrectionResult]] = {}
        self._rows = 0

    def put(self, result: CorrectionResult) -> None:
        with self._lock:
            self._results.setdefault((result.key_group, result.tier), deque()).append(result)
            self._rows += len(result.batch)

    def take(self, key_group: int, tier: str) -> list[CorrectionResult]:
        with self._lock:
            queue = self._results.pop((key_group, tier), None)
            if not queue:
                return []
            self._rows -= sum(len(r.batch) for r in queue)
            return list(queue)

    def drop_key_groups(self, key_groups: frozenset[int]) -> None:
        """Forget the results of revoked key groups (their next owner restores the pending
        requests from the checkpoint, or replays the rows that caused them)."""
        with self._lock:
            for key in [k for k in self._results if k[0] in key_groups]:
                self._rows -= sum(len(r.batch) for r in self._results.pop(key))

    @property
    def rows(self) -> int:
        """Corrected rows waiting to be taken."""
        return self._rows


# -- the pending requests, in a window operator's keyed state ---------------------------------

STATE_PENDING = "window-corrections"
"""``be(window_end) + be32(key id)`` -> seq of the newest request for that (key, window)."""


_OFFSET = 2**63
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def encode_time(t_ns: int) -> bytes:
    """Big-endian, order-preserving 8-byte encoding of a signed time (clamped to int64)."""
    t_ns = min(max(t_ns, _INT64_MIN), _INT64_MAX)
    return (t_ns + _OFFSET).to_bytes(8, "big")


def decode_time(key: bytes) -> int:
    return int.from_bytes(key[:8], "big") - _OFFSET


def pending_key(window_end_ns: int, key_id: int) -> bytes:
    return encode_time(window_end_ns) + key_id.to_bytes(4, "big")


def record_pending(
    backend: KeyedStateBackend, kg: int, ids: Any, ends: Any, seq: int
) -> tuple[Any, Any]:
    """Store request ``seq`` for every distinct (key id, window end); return them."""
    pairs = np.unique(np.stack((ends.astype(np.int64), ids.astype(np.int64)), axis=1), axis=0)
    for end, key_id in pairs.tolist():
        backend.put(kg, STATE_PENDING, pending_key(end, key_id), seq)
    return pairs[:, 1], pairs[:, 0]


def pending_entries(backend: KeyedStateBackend, kg: int) -> tuple[Any, Any, int]:
    """Every pending (key id, window end) of a key group and the newest request seq."""
    ids: list[int] = []
    ends: list[int] = []
    seq = 0
    for key, entry_seq in backend.scan(kg, STATE_PENDING):
        ends.append(decode_time(key))
        ids.append(int.from_bytes(key[8:12], "big"))
        seq = max(seq, int(entry_seq))
    return np.array(ids, dtype=np.int64), np.array(ends, dtype=np.int64), seq


def settle_pending(backend: KeyedStateBackend, kg: int, ids: Any, ends: Any, seq: int) -> None:
    """Forget the pending entries answered by a result of request ``seq`` (not those asked
    again by a newer request since)."""
    for end, key_id in zip(ends.tolist(), ids.tolist(), strict=True):
        key = pending_key(end, key_id)
        stored = backend.get(kg, STATE_PENDING, key)
        if stored is not None and stored <= seq:
            backend.delete(kg, STATE_PENDING, key)
