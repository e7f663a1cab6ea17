"""Gateway fixtures: a real gateway process per test, and a reader of the real topic."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from gateway.remote_write import WriteRequest
from metricsflow.infra.gateway import GatewayConfig, GatewayServer
from metricsflow.infra.kafka import KafkaServer
from metricsflow.infra.process import free_port
from metricsflow.model.declarations import (
    FORMAT_KINDS1,
    DeclaredKind,
    decode_declarations,
    record_format,
)
from metricsflow.model.message import decode_points, read_headers
from metricsflow.model.point import Point

GatewayFactory = Callable[..., GatewayServer]


@pytest.fixture
def gateway_factory(kafka_broker: KafkaServer, tmp_path: Path) -> Iterator[GatewayFactory]:
    """``gw = gateway_factory(topic, **GATEWAY_settings)``: start ``python -m gateway`` on a
    free port against the session broker, wait for ``/health``; stopped by PID at teardown."""
    started: list[GatewayServer] = []

    def make(topic: str, workers: int = 1, **settings: str) -> GatewayServer:
        env = {f"GATEWAY_{k.upper()}": str(v) for k, v in settings.items()}
        server = GatewayServer(
            GatewayConfig(
                data_dir=tmp_path / f"gateway-{len(started)}",
                port=free_port(),
                bootstrap_servers=kafka_broker.bootstrap,
                topic=topic,
                workers=workers,
                env=env,
            )
        )
        started.append(server)
        server.start()
        return server

    yield make
    for server in reversed(started):
        server.stop()


@dataclass(frozen=True)
class TopicRecord:
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]

    @property
    def is_declaration(self) -> bool:
        """A ``kinds1`` record (declarations from remote-write metadata), not points."""
        return record_format(self.headers) == FORMAT_KINDS1.encode()

    @property
    def points(self) -> list[Point]:
        return [] if self.is_declaration else decode_points(self.value)

    @property
    def kinds(self) -> dict[str, DeclaredKind]:
        """What a ``kinds1`` record declares (``{}`` for a record of points)."""
        if not self.is_declaration:
            return {}
        return dict(decode_declarations(self.value, self.headers).kinds)

    @property
    def db(self) -> str:
        if self.is_declaration:
            return decode_declarations(self.value, self.headers).db
        return read_headers(self.headers).db


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    min_points: int,
    timeout_s: float = 30.0,
    min_declarations: int = 0,
) -> list[TopicRecord]:
    """Every record of ``topic`` from the beginning, once at least ``min_points`` points and
    ``min_declarations`` ``kinds1`` records are there (or at the timeout, with what there
    is)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = sorted(consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[TopicRecord] = []
        points = declarations = 0
        deadline = time.monotonic() + timeout_s
        while (
            points < min_points or declarations < min_declarations
        ) and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    rec = TopicRecord(tp.partition, m.offset, m.key, m.value, list(m.headers))
                    records.append(rec)
                    points += len(rec.points)
                    declarations += rec.is_declaration
        # anything more that is already there (duplicates from retries, for example)
        for _ in range(2):
            batch = await consumer.getmany(timeout_ms=300)
            for tp, msgs in batch.items():
                for m in msgs:
                    records.append(
                        TopicRecord(tp.partition, m.offset, m.key, m.value, list(m.headers))
                    )
        return records
    finally:
        await asyncio.shield(consumer.stop())


def write_request_bytes(series: list[tuple[dict[str, str], list[tuple[float, int]]]]) -> bytes:
    """A serialized ``prometheus.WriteRequest`` of ``(labels, [(value, t_ms)])`` series."""
    req = WriteRequest()
    for labels, samples in series:
        ts = req.timeseries.add()
        for k, v in labels.items():
            ts.labels.add(name=k, value=v)
        for value, t_ms in samples:
            ts.samples.add(value=value, timestamp=t_ms)
    return bytes(req.SerializeToString())
