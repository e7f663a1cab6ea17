"""A test-only fault: an operator that fails on a given value, like a record no operator can
process (failure isolation, ``metricsflow.runtime.isolation``)."""

from __future__ import annotations

import numpy as np

from metricsflow.errors import MetricsflowError
from metricsflow.runtime.base import Operator, Output
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, RecordBatch


class InjectedFaultError(MetricsflowError):
    """Raised by :class:`FailOnValue` (an ordinary, non-fatal processing failure)."""


class FailOnValue(Operator):
    """Forwards a ``RecordBatch`` unchanged, except that a batch holding ``value`` is
    forwarded only up to the row before it (what follows in the chain sees half of the batch,
    as when a real operator fails mid-batch) and then ``InjectedFaultError`` is raised."""

    def __init__(self, uid: str, value: float) -> None:
        super().__init__(uid)
        self.value = value

    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        if isinstance(batch, RecordBatch):
            hits = np.flatnonzero(batch.values == self.value)
            if hits.size:
                cut = int(hits[0])
                if cut:
                    output.emit(
                        RecordBatch(
                            batch.key_group,
                            batch.keys,
                            batch.key_idx[:cut],
                            batch.ts_ns[:cut],
                            batch.values[:cut],
                            None if batch.received_ns is None else batch.received_ns[:cut],
                            None
                            if batch.row_watermark_ns is None
                            else batch.row_watermark_ns[:cut],
                        )
                    )
                raise InjectedFaultError(f"injected fault on value {self.value}")
        output.emit(batch)
