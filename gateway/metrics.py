"""Prometheus metrics of one gateway app (its own registry: no import-time singletons)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class GatewayMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests", "HTTP write requests.", ["endpoint", "status"], registry=r
        )
        self.points = Counter(
            "gateway_points", "Points acknowledged by Kafka.", ["endpoint"], registry=r
        )
        self.bytes = Counter(
            "gateway_bytes", "Decoded request body bytes accepted.", ["endpoint"], registry=r
        )
        self.rejects = Counter(
            "gateway_rejects", "Rejected write requests.", ["endpoint", "reason"], registry=r
        )
        self.dropped_samples = Counter(
            "gateway_dropped_samples",
            "Remote-write samples dropped on purpose (stale markers, NaN, Inf).",
            ["reason"],
            registry=r,
        )
        self.declarations = Counter(
            "gateway_metadata_declarations",
            "Measurement kinds from remote-write metadata produced as kinds1 records (each "
            "counted once, however many partitions it went to).",
            ["kind"],
            registry=r,
        )
        self.records = Counter("gateway_kafka_records", "Kafka records produced.", registry=r)
        self.producer_resets = Counter(
            "gateway_kafka_producer_resets",
            "Kafka producers replaced after a fatal error (e.g. out-of-order sequence).",
            registry=r,
        )
        self.produce_seconds = Histogram(
            "gateway_kafka_produce_seconds",
            "Time from the first send to the last ack of one request.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "gateway_inflight_bytes", "Request bytes not yet acknowledged by Kafka.", registry=r
        )
