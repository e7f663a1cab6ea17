"""What a tier window operator keeps in memory per key group (operator.py), next to the keyed
state it mirrors, and the names of its ``window-meta`` entries."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from metricsflow.windows.aggregates import FieldKindIndex
from metricsflow.windows.counters import LastSamples
from metricsflow.windows.declared import DeclaredKinds
from metricsflow.windows.keys import WindowKeys

STATE_META = "window-meta"
META_WATERMARK = b"watermark"
META_SEQ = b"next-seq"
META_CORRECTION_SEQ = b"next-correction-seq"


@dataclass(slots=True)
class KeyGroupState:
    """One key group of one tier operator: watermark, sequence numbers, key dictionary, kinds
    and the counters' purge frontier."""

    watermark_ns: int | None = None
    next_seq: int = 0
    keys: WindowKeys = field(default_factory=WindowKeys)
    """window key string <-> int32 id (persisted in ``window-keys``, expiring); its ``keys``
    snapshot is the ``keys`` of every AggregateBatch this key group emits"""
    correction_seq: int = 0
    resubmit: bool = False
    """pending corrections restored from a checkpoint, to request again at the next tick"""
    kinds: FieldKindIndex = field(default_factory=lambda: FieldKindIndex(None))
    """gauge / counter / sketched per key id (aggregates.py)"""
    frontier: LastSamples | None = None
    """raw tier: the last sample of each counter key in the purged windows (``window-counters``)"""
    declared: DeclaredKinds = field(default_factory=DeclaredKinds)
    """raw tier: kinds declared in the log (declared.py, ``window-declared``)"""

    def kind(self) -> Any:
        """Per key id: gauge, counter (in any window: its samples are kept) or sketched;
        ``None`` without field kinds."""
        base = self.kinds.of(self.keys.keys)
        if base is None or not self.declared:
            return base
        return self.declared.ever(self.keys.keys, base)

    def any_counter(self) -> bool:
        return self.kinds.any_counter or bool(self.declared)
