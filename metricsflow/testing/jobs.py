"""Ready-made job graphs for tests: the metrics pipeline over an in-memory source.

``source -> WatermarkAssigner -> tier 1m -> 1h -> 1d (...) -> CollectingSink``, one chain per
key group; every tier's results (and the raw points) also go to the sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from metricsflow.model.tiers import DEFAULT_TIERS, TierSpec
from metricsflow.runtime.base import Operator
from metricsflow.runtime.graph import JobGraph, StateBackendFactory
from metricsflow.runtime.source import Source
from metricsflow.state.base import KeyedStateBackend
from metricsflow.state.config import StateBackendConfig
from metricsflow.testing.faults import FailOnValue
from metricsflow.testing.sinks import CollectedResults, CollectingSink
from metricsflow.testing.sources import InMemorySource
from metricsflow.time.base import Clock, ManualClock
from metricsflow.windows.cascade import build_cascade
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkStrategy

WATERMARK_UID = "watermarks"
FAULT_UID = "fail-on-value"


def tier_job_graph(
    source: Source,
    results: CollectedResults,
    *,
    tiers: Sequence[TierSpec] = DEFAULT_TIERS,
    allowed_lateness_ns: int = 0,
    max_out_of_orderness_ns: int = 0,
    clock: Clock | None = None,
    sink_factory: Callable[[], Operator] | None = None,
    name: str = "metrics",
    channel_capacity: int = 8,
    key_groups: Iterable[int] | None = None,
    fail_on_value: float | None = None,
) -> JobGraph:
    """The metrics pipeline for ``source``'s key groups; sink results go to ``results``.
    ``fail_on_value``: a :class:`~metricsflow.testing.faults.FailOnValue` operator right after
    the watermark assigner (not a sink tap) fails on every batch holding that value."""
    wm_clock: Clock = clock if clock is not None else ManualClock()
    strategy = WatermarkStrategy(max_out_of_orderness_ns)

    def chain(key_group: int) -> list[Operator]:
        ops: list[Operator] = [WatermarkAssigner(WATERMARK_UID, strategy, wm_clock)]
        if fail_on_value is not None:
            ops.append(FailOnValue(FAULT_UID, fail_on_value))
        ops.extend(build_cascade(tiers, allowed_lateness_ns))
        return ops

    probe = chain(0)
    if key_groups is None:
        key_groups = source.key_groups if isinstance(source, InMemorySource) else ()
    return JobGraph(
        name=name,
        source=source,
        chain_factory=chain,
        sink_factory=sink_factory or (lambda: CollectingSink(results=results)),
        key_groups=frozenset(key_groups),
        sink_taps=frozenset(op.uid for op in probe if op.uid != FAULT_UID),
        channel_capacity=channel_capacity,
    )


def backend_factory(config: StateBackendConfig) -> StateBackendFactory:
    """``(uid, key group) -> backend`` from a :class:`StateBackendConfig`."""

    def make(uid: str, key_group: int) -> KeyedStateBackend:
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in uid)
        return config.build(f"{safe}.kg-{key_group}")  # one local directory per instance

    return make
