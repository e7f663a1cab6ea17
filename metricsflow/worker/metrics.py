"""Prometheus ``/metrics`` of a worker: a collector that reads the live counters on scrape."""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from metricsflow.job.runner import DownsamplingRunner
from metricsflow.runtime.source import WatermarkStatus
from metricsflow.windows.watermarks import WatermarkAssigner


class WorkerCollector(Collector):
    def __init__(self, runner: DownsamplingRunner) -> None:
        self.runner = runner

    def collect(self) -> Iterator[Metric]:
        r = self.runner
        src, sink = r.source.stats, r.sink.stats
        p = "metricsflow_worker_"

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(p + name, doc, value=value)

        yield counter("records_in", "Kafka records read.", src.records_in)
        yield counter("bytes_in", "Kafka record bytes read.", src.bytes_in)
        yield counter("points_in", "Points read from Kafka.", src.points_in)
        yield counter("samples_in", "Numeric field values read.", src.samples_in)
        yield counter(
            "points_out", "Points (raw + tier rows) acknowledged by InfluxDB.", sink.points_written
        )
        yield counter("influxdb_requests", "Write requests sent to InfluxDB.", sink.requests)
        yield counter("influxdb_retries", "Retried InfluxDB requests (unavailable).", sink.retries)
        yield GaugeMetricFamily(
            p + "influxdb_blocked",
            "1 while InfluxDB writes are retrying.",
            value=1.0 if sink.blocked else 0.0,
        )
        yield GaugeMetricFamily(
            p + "influxdb_pending_requests",
            "Sealed write requests waiting (backpressure above the limit).",
            value=r.sink.pending_requests,
        )
        yield counter(
            "influxdb_hard_limit_waits",
            "Writes that blocked the event loop at the sink's hard limit (should stay 0).",
            sink.hard_limit_waits,
        )
        dl = CounterMetricFamily(
            p + "dead_letters", "Points sent to a dead letter, by reason.", labels=["reason"]
        )
        dl.add_metric(["undecodable_record"], src.dead_letters - src.poison_records)
        dl.add_metric(["poison_record"], src.poison_records)
        for reason, count in sorted(sink.dead_letter_points.items()):
            dl.add_metric([reason], count)
        yield dl
        beyond = CounterMetricFamily(
            p + "beyond_retention_points",
            "Points not sent to InfluxDB because their tier's retention policy drops them.",
            labels=["tier"],
        )
        for tier, count in sorted(sink.beyond_retention_points.items()):
            beyond.add_metric([tier], count)
        yield beyond
        yield counter(
            "influxdb_points_fenced",
            "Points of revoked partitions dropped instead of sent (the new owner replays them).",
            sink.fenced_points,
        )
        yield counter(
            "influxdb_unconfirmed_writes",
            "Writes of revoked partitions whose outcome InfluxDB never confirmed.",
            sink.unconfirmed_writes,
        )
        yield counter(
            "isolation_restarts",
            "Job restarts to isolate a record an operator failed on (not the restart "
            "strategy's; docs/security.md).",
            r.isolation_restarts,
        )
        yield counter(
            "late_points",
            "Points beyond the allowed lateness (their windows are corrected).",
            r.late.points,
        )
        refused = CounterMetricFamily(
            p + "partitions_refused_empty",
            "Assignments refused: the partition has committed offsets but no checkpoint.",
            labels=["partition"],
        )
        for kg, count in sorted(r.recovery.refused.items()):
            refused.add_metric([str(kg)], count)
        yield refused
        yield counter(
            "future_points",
            "Points more than max_future ahead of their receive time (they do not advance "
            "the watermark).",
            r.metrics.watermarks.future_points,
        )
        corrected = CounterMetricFamily(
            p + "tier_corrections",
            "Tier rows re-derived from InfluxDB because their window's state was gone.",
            labels=["tier"],
        )
        expired = CounterMetricFamily(
            p + "tier_expired_keys",
            "Series fields dropped from a tier's key dictionary: every window of theirs was "
            "purged (state expiry).",
            labels=["tier"],
        )
        declared = CounterMetricFamily(
            p + "tier_declared_kinds",
            "Measurements whose kind (counter/gauge) a declaration from remote-write metadata "
            "changed, summed over key groups.",
            labels=["tier"],
        )
        lag_sum = lag_count = lag_max = 0
        for tier, tm in r.metrics.tiers.items():
            corrected.add_metric([tier], tm.corrected_rows)
            expired.add_metric([tier], tm.expired_keys)
            declared.add_metric([tier], tm.declared_kinds)
            lag_sum += tm.correction_lag_ns_sum
            lag_count += tm.corrections
            lag_max = max(lag_max, tm.correction_lag_ns_max)
        yield corrected
        yield expired
        yield declared
        yield GaugeMetricFamily(
            p + "correction_backlog",
            "(series, window) pairs waiting to be re-derived.",
            value=r.corrections.backlog,
        )
        yield SummaryMetricFamily(
            p + "correction_lag_seconds",
            "From a late row's arrival to its corrected tier row being emitted, per tier.",
            count_value=lag_count,
            sum_value=lag_sum / 1e9,
        )
        yield GaugeMetricFamily(
            p + "correction_lag_max_seconds",
            "The largest correction lag seen.",
            value=lag_max / 1e9,
        )
        yield counter(
            "correction_queries",
            "InfluxDB queries run by corrections.",
            r.corrections.stats.queries,
        )
        yield counter(
            "correction_failures",
            "Correction batches that failed (retried after the next restore).",
            r.corrections.stats.failures,
        )
        yield counter("rebalances", "Partition assignments received.", src.rebalances)
        lag = GaugeMetricFamily(
            p + "consumer_lag", "Records behind the partition's end.", labels=["partition"]
        )
        for kg, value in sorted(r.source.lag().items()):
            lag.add_metric([str(kg)], value)
        yield lag
        wm = GaugeMetricFamily(
            p + "watermark_lag_seconds", "Wall clock minus watermark.", labels=["partition"]
        )
        state = GaugeMetricFamily(p + "state_size_bytes", "Keyed state size.", labels=["partition"])
        idle = GaugeMetricFamily(
            p + "partition_idle",
            "1 while the partition's reader reports "
            "nothing to read (its watermark may follow the clock).",
            labels=["partition"],
        )
        now = time.time_ns()
        for kg in sorted(r.job.key_groups):
            try:
                chain = r.job.source_task(kg).chain
            except KeyError:
                continue
            for op in chain.operators:
                if isinstance(op, WatermarkAssigner):
                    mark = op.current_watermark_ns(kg)
                    if mark is not None:
                        wm.add_metric([str(kg)], (now - mark) / 1e9)
            state.add_metric([str(kg)], sum(b.size_bytes() for b in chain.backends.values()))
            status = r.job.source_task(kg).watermark_status
            idle.add_metric([str(kg)], 1.0 if status is WatermarkStatus.IDLE else 0.0)
        yield wm
        yield state
        yield idle
        history = list(r.job.coordinator.history)
        completed = [h for h in history if h.status == "completed"]
        failed = [h for h in history if h.status != "completed"]
        yield counter("checkpoints_completed", "Completed checkpoints (last 100).", len(completed))
        yield counter("checkpoints_failed", "Failed checkpoints (last 100).", len(failed))
        if completed:
            last = completed[-1]
            yield GaugeMetricFamily(
                p + "checkpoint_duration_seconds",
                "Duration of the last completed checkpoint.",
                value=last.duration_ns / 1e9,
            )
            yield GaugeMetricFamily(
                p + "checkpoint_size_bytes",
                "State size of the last completed checkpoint.",
                value=last.state_size,
            )
            yield GaugeMetricFamily(
                p + "checkpoint_written_bytes",
                "Bytes the last completed checkpoint wrote (incremental: what changed).",
                value=last.written_bytes,
            )
            yield GaugeMetricFamily(
                p + "checkpoint_alignment_seconds",
                "Barrier alignment time of the last completed checkpoint.",
                value=last.alignment_duration_ns / 1e9,
            )
