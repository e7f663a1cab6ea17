"""The gateway's Kafka writer replaces a producer that failed fatally.

aiokafka's idempotent producer stops its sender routine on an out-of-order sequence number
(seen after a broker restart) and fails every later send; retrying with it never succeeds.
This pure-logic test drives that failure with a stub producer; the integration proof is the
Kafka-restart test in tests/job/test_downsampling_job.py, which needs the gateway to accept
writes again after the real broker comes back.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import OutOfOrderSequenceNumber, RequestTimedOutError

from gateway.base import KafkaUnavailableError, ParsedWrite
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.settings import GatewaySettings
from metricsflow.model.declarations import DeclaredKind


class FailingProducer:
    """Acknowledges nothing: every send's future fails with ``error``."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.stopped = False

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1}

    async def send(self, topic: str, **kwargs: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(self.error)
        return future

    async def stop(self) -> None:
        self.stopped = True


def _write() -> ParsedWrite:
    return ParsedWrite("db", None, ["m,h=a"], ["m,h=a v=1 1"], 1, 11)


def _writer() -> tuple[KafkaWriter, GatewayMetrics]:
    # nothing listens there: the replacement producer keeps trying to connect in the background
    settings = GatewaySettings(bootstrap_servers="127.0.0.1:1", produce_deadline_s=1.0)
    metrics = GatewayMetrics()
    return KafkaWriter(settings, metrics), metrics


async def test_an_out_of_order_sequence_replaces_the_producer_and_answers_503() -> None:
    writer, metrics = _writer()
    broken = FailingProducer(OutOfOrderSequenceNumber())
    writer._producer = broken  # type: ignore[assignment]
    try:
        with pytest.raises(KafkaUnavailableError, match="OutOfOrderSequenceNumber"):
            await writer.write(_write(), 11)
        assert writer._producer is None
        assert metrics.producer_resets._value.get() == 1
        await asyncio.sleep(0.05)
        assert broken.stopped
        # until the new producer is connected, requests get 503 at once, not a hang
        with pytest.raises(KafkaUnavailableError, match="not connected"):
            await writer.write(_write(), 11)
    finally:
        await writer.stop()


async def test_a_retriable_kafka_error_keeps_the_producer() -> None:
    writer, metrics = _writer()
    flaky = FailingProducer(RequestTimedOutError())
    writer._producer = flaky  # type: ignore[assignment]
    try:
        with pytest.raises(KafkaUnavailableError):
            await writer.write(_write(), 11)
        assert writer._producer is flaky
        assert metrics.producer_resets._value.get() == 0
    finally:
        await writer.stop()


async def test_declarations_kafka_did_not_acknowledge_answer_503_and_are_produced_again() -> None:
    writer, metrics = _writer()
    writer._producer = FailingProducer(RequestTimedOutError())  # type: ignore[assignment]
    kinds = {"x_total": DeclaredKind.COUNTER}
    try:
        with pytest.raises(KafkaUnavailableError):
            await writer.declare("db", None, kinds, 1)
        # not remembered as produced: the client's retry produces them
        assert writer.announced.due("db", None, kinds) == kinds
        assert metrics.declarations.labels("counter")._value.get() == 0
        assert metrics.inflight_bytes._value.get() == 0
    finally:
        await writer.stop()
