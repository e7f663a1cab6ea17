"""The downsampling job graph: Kafka source -> watermarks -> tier windows -> InfluxDB sink.

Per key group (Kafka partition) one chain::

    KafkaPartitionReader -> WatermarkAssigner("watermarks")
        -> TierWindowOperator("window-1m") -> ("window-1h") -> ("window-1d")

and one sink task (``SinkOperator("influxdb-sink")``) fed by every chain. The sink taps are
``watermarks`` (its output carries the ``RawLinesBatch`` elements: the raw tier) and every
window operator (each tier's ``AggregateBatch`` goes to InfluxDB and to the next tier).
Operator uids are stable (``watermarks``, ``window-<tier>``, ``kafka-source``,
``influxdb-sink``): checkpoints and savepoints key state by them, so adding a tier at the end
of the cascade or changing the allowed lateness keeps the existing state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from metricsflow.model.fieldkinds import FieldKinds
from metricsflow.model.tiers import DEFAULT_TIERS, TierSpec, validate_tiers
from metricsflow.runtime.base import Operator
from metricsflow.runtime.graph import JobGraph
from metricsflow.runtime.records import CorrectionRequest, RecordBatch
from metricsflow.sinks.base import Sink, SinkOperator
from metricsflow.sources.kafka import KafkaSource
from metricsflow.windows.cascade import build_cascade
from metricsflow.windows.corrections import CorrectionInbox
from metricsflow.windows.metrics import TierWindowMetrics
from metricsflow.windows.watermarks import WatermarkAssigner, WatermarkMetrics, WatermarkStrategy

SOURCE_UID = "kafka-source"
WATERMARKS_UID = "watermarks"
SINK_UID = "influxdb-sink"
WINDOW_UID_PREFIX = "window"


@dataclass(frozen=True, slots=True)
class DownsamplingJobConfig:
    """What the job computes (the worker fills it from its settings)."""

    name: str = "downsampling"
    tiers: tuple[TierSpec, ...] = DEFAULT_TIERS
    max_out_of_orderness: str = "10s"
    idle_timeout: str | None = "30s"
    max_future: str | None = "10m"
    allowed_lateness_ns: int = 60_000_000_000
    channel_capacity: int = 8
    sink_flush_timeout_s: float | None = None
    field_kinds: FieldKinds | None = field(default_factory=FieldKinds)
    """counters and sketched fields (docs/counters-and-percentiles.md); ``None``: none"""

    def __post_init__(self) -> None:
        validate_tiers(self.tiers)

    @property
    def watermark_strategy(self) -> WatermarkStrategy:
        return WatermarkStrategy.of(
            self.max_out_of_orderness, self.idle_timeout, max_future=self.max_future
        )

    def window_uids(self) -> tuple[str, ...]:
        return tuple(f"{WINDOW_UID_PREFIX}-{t.name}" for t in self.tiers[1:])


@dataclass
class JobMetrics:
    """Counters shared by every chain of a worker (monotonic across restarts, rebalances)."""

    watermarks: WatermarkMetrics = field(default_factory=WatermarkMetrics)
    tiers: dict[str, TierWindowMetrics] = field(default_factory=dict)

    @classmethod
    def for_tiers(cls, tiers: Sequence[TierSpec]) -> JobMetrics:
        return cls(tiers={t.name: TierWindowMetrics() for t in tiers[1:]})


def build_chain(
    config: DownsamplingJobConfig,
    *,
    corrections: CorrectionInbox | None = None,
    metrics: JobMetrics | None = None,
) -> list[Operator]:
    """A fresh chain of operators for one key group."""
    return [
        WatermarkAssigner(
            WATERMARKS_UID,
            config.watermark_strategy,
            metrics=None if metrics is None else metrics.watermarks,
        ),
        *build_cascade(
            config.tiers,
            config.allowed_lateness_ns,
            uid_prefix=WINDOW_UID_PREFIX,
            corrections=corrections,
            metrics=None if metrics is None else metrics.tiers,
            field_kinds=config.field_kinds,
        ),
    ]


def build_graph(
    config: DownsamplingJobConfig,
    source: KafkaSource,
    sink: Sink,
    *,
    on_late: Callable[[RecordBatch, int], None] | None = None,
    on_correction: Callable[[CorrectionRequest], None] | None = None,
    corrections: CorrectionInbox | None = None,
    metrics: JobMetrics | None = None,
    key_groups: Sequence[int] = (),
) -> JobGraph:
    """The job graph; key groups are assigned at runtime by the Kafka group protocol.
    With ``corrections`` (and ``on_correction`` executing the requests), windows whose state
    is gone are re-derived from InfluxDB (docs/windows.md, "Corrections")."""

    def sink_factory() -> Operator:
        return SinkOperator(
            SINK_UID,
            sink,
            flush_timeout_s=config.sink_flush_timeout_s,
            on_late=on_late,
            on_correction=on_correction,
        )

    return JobGraph(
        name=config.name,
        source=source,
        chain_factory=lambda _kg: build_chain(config, corrections=corrections, metrics=metrics),
        sink_factory=sink_factory,
        key_groups=frozenset(key_groups),
        sink_taps=frozenset({WATERMARKS_UID, *config.window_uids()}),
        channel_capacity=config.channel_capacity,
    )
