"""A tier window operator's side of corrections (docs/windows.md, "Corrections"): rows for
windows whose state is gone are remembered in keyed state and sent to be re-derived from
InfluxDB (:class:`~metricsflow.runtime.records.CorrectionRequest` on side output
``"correct"``); results come back through the :class:`~metricsflow.windows.corrections.
CorrectionInbox` and are emitted on the next processing-time tick; requests restored from a
checkpoint are sent again."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from metricsflow.runtime.base import Output
from metricsflow.runtime.records import CorrectionRequest, CorrectionResult
from metricsflow.state.base import KeyedStateBackend
from metricsflow.windows.corrections import (
    CorrectionInbox,
    pending_entries,
    record_pending,
    settle_pending,
)
from metricsflow.windows.groups import META_CORRECTION_SEQ, STATE_META, KeyGroupState
from metricsflow.windows.kernels import Int32Array, Int64Array
from metricsflow.windows.keys import KeyMapping
from metricsflow.windows.metrics import TierWindowMetrics

logger = logging.getLogger(__name__)


@dataclass
class WindowCorrector:
    """Correction requests and results of one tier operator (``uid``)."""

    uid: str
    tier: str
    window_ns: int
    source_tier: str
    raw: bool
    metrics: TierWindowMetrics

    def request(
        self,
        backend: KeyedStateBackend,
        kg: int,
        group: KeyGroupState,
        ids: Int32Array,
        ends: Int64Array,
        output: Output,
    ) -> None:
        """Remember the (key, window) pairs in state and ask for them to be re-derived."""
        group.correction_seq += 1
        backend.put(kg, STATE_META, META_CORRECTION_SEQ, group.correction_seq)
        key_ids, window_ends = record_pending(backend, kg, ids, ends, group.correction_seq)
        group.keys.pin(key_ids)
        self._emit_request(kg, group, key_ids, window_ends, group.correction_seq, output)

    def _emit_request(
        self,
        kg: int,
        group: KeyGroupState,
        ids: Any,
        ends: Any,
        seq: int,
        output: Output,
    ) -> None:
        self.metrics.correction_requests += int(ids.shape[0])
        starts = ends.astype(np.int64) - self.window_ns
        base = group.kinds.of(group.keys.keys)
        counter = None
        if self.raw and group.declared and base is not None:
            counter = group.declared.counter_flags(group.keys.keys, base, ids, starts)
        output.emit_side(
            "correct",
            CorrectionRequest(
                key_group=kg,
                tier=self.tier,
                window_ns=self.window_ns,
                source_tier=self.source_tier,
                keys=group.keys.keys,
                key_idx=ids.astype(np.int32),
                window_start_ns=starts,
                seq=seq,
                created_ns=time.time_ns(),
                counter=counter,
            ),
        )

    def tick(
        self,
        backend: KeyedStateBackend,
        inbox: CorrectionInbox,
        groups: dict[int, KeyGroupState],
        output: Output,
    ) -> None:
        """Emit the corrections that came back, and re-request those restored from a
        checkpoint."""
        for kg in sorted(groups):
            group = groups[kg]
            if group.resubmit:
                group.resubmit = False
                self._resubmit(backend, kg, group, output)
            for result in inbox.take(kg, self.tier):
                self._apply(backend, kg, group, result, output)

    def _resubmit(
        self, backend: KeyedStateBackend, kg: int, group: KeyGroupState, output: Output
    ) -> None:
        ids, ends, seq = pending_entries(backend, kg)
        if ids.shape[0]:
            logger.info(
                "%s: requesting %d restored corrections again key_group=%d",
                self.uid,
                ids.shape[0],
                kg,
            )
            self._emit_request(kg, group, ids, ends, seq, output)

    def _apply(
        self,
        backend: KeyedStateBackend,
        kg: int,
        group: KeyGroupState,
        result: CorrectionResult,
        output: Output,
    ) -> None:
        """Emit re-derived rows (they replace the stored rows downstream) and settle the
        pending entries they answer (those not asked again since)."""
        batch = result.batch
        if len(batch):
            ids = group.keys.map(backend, kg, batch.keys, batch.key_idx, KeyMapping())
            settle_pending(backend, kg, ids, batch.window_start_ns + self.window_ns, result.seq)
            self.metrics.corrected_rows += len(batch)
            output.emit(replace(batch, keys=group.keys.keys, key_idx=ids))
        if result.empty_keys:  # nothing in InfluxDB for these (e.g. beyond raw retention)
            known = [
                (group.keys.dictionary.get(k), s)
                for k, s in zip(result.empty_keys, result.empty_window_start_ns, strict=True)
            ]
            pairs = [(k, s + self.window_ns) for k, s in known if k is not None]
            settle_pending(
                backend,
                kg,
                np.array([k for k, _ in pairs], dtype=np.int32),
                np.array([e for _, e in pairs], dtype=np.int64),
                result.seq,
            )
        lag = max(0, time.time_ns() - result.created_ns)
        self.metrics.corrections += 1
        self.metrics.correction_lag_ns_sum += lag
        self.metrics.correction_lag_ns_max = max(self.metrics.correction_lag_ns_max, lag)
