"""The Kafka broker is real: aiokafka produces, consumes, commits and survives restarts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from metricsflow.infra.kafka import KafkaServer
from metricsflow.infra.process import read_pid_file

pytestmark = pytest.mark.integration


async def _produce(bootstrap: str, topic: str, values: Sequence[bytes], **kw: object) -> None:
    """Produce with acks=all and idempotence; every send is awaited (acknowledged)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, **kw
    )
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(topic, value, key=value)
    finally:
        await producer.stop()


async def _consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0
) -> list[bytes]:
    """Read ``expected`` messages from the beginning of every partition (no group)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(timeout_s):
            while len(seen) < expected:
                batches = await consumer.getmany(timeout_ms=500)
                for records in batches.values():
                    seen.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return seen


async def test_a_message_produced_with_acks_all_and_idempotence_is_consumed_back(
    kafka_broker: KafkaServer, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=3)
    values = [f"point-{i}".encode() for i in range(50)]
    await _produce(kafka_broker.bootstrap, topic, values)
    assert sorted(await _consume_all(kafka_broker.bootstrap, topic, len(values))) == sorted(values)


async def test_topic_factory_creates_a_unique_topic_with_the_requested_partitions(
    kafka_broker: KafkaServer, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    first = await topic_factory(partitions=4)
    second = await topic_factory(partitions=2)
    assert first != second
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics([first, second])}
    finally:
        await admin.close()
    assert len(described[first]["partitions"]) == 4
    assert len(described[second]["partitions"]) == 2


async def test_a_second_consumer_in_the_same_group_resumes_after_the_committed_offset(
    kafka_broker: KafkaServer, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=1)
    values = [f"m{i}".encode() for i in range(20)]
    await _produce(kafka_broker.bootstrap, topic, values)
    group = f"{topic}-group"
    tp = TopicPartition(topic, 0)

    first = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await first.start()
    try:
        consumed: list[bytes] = []
        async with asyncio.timeout(30):
            while len(consumed) < 12:
                record = await first.getone()
                consumed.append(record.value or b"")
        await first.commit({tp: 12})  # the next offset to read
    finally:
        await first.stop()
    assert consumed == values[:12]

    second = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_broker.bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await second.start()
    try:
        async with asyncio.timeout(30):
            resumed = [(await second.getone()).value for _ in range(8)]
        assert await second.committed(tp) == 12
    finally:
        await second.stop()
    assert resumed == values[12:]


async def test_every_acknowledged_message_survives_a_broker_stop_and_a_crash(
    kafka_broker_factory: Callable[[], KafkaServer],
) -> None:
    broker = await asyncio.to_thread(kafka_broker_factory)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("durable", num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()
    bootstrap = broker.bootstrap

    before_stop = [f"a{i}".encode() for i in range(100)]
    await _produce(bootstrap, "durable", before_stop)
    assert await broker.stop_async() is True  # SIGTERM: clean shutdown
    assert not broker.is_running()
    assert await broker.start_async() is True
    assert broker.bootstrap == bootstrap  # same ports, same data dir

    before_crash = [f"b{i}".encode() for i in range(100)]
    await _produce(bootstrap, "durable", before_crash)
    assert await broker.kill_async() is True  # SIGKILL: no clean shutdown
    assert await broker.start_async() is True

    everything = before_stop + before_crash
    assert sorted(await _consume_all(bootstrap, "durable", len(everything))) == sorted(everything)


async def test_the_session_broker_restarts_on_the_same_port_with_its_topics(
    kafka_broker: KafkaServer, topic_factory: Callable[..., Awaitable[str]]
) -> None:
    topic = await topic_factory(partitions=1)
    await _produce(kafka_broker.bootstrap, topic, [b"kept"])
    old = read_pid_file(kafka_broker.pid_file)
    bootstrap = kafka_broker.bootstrap

    await kafka_broker.stop_async()
    assert not await kafka_broker.health_async()
    await kafka_broker.start_async()

    assert kafka_broker.bootstrap == bootstrap
    assert read_pid_file(kafka_broker.pid_file) != old
    assert await _consume_all(bootstrap, topic, 1) == [b"kept"]


def test_starting_a_healthy_broker_again_starts_nothing(kafka_broker: KafkaServer) -> None:
    pid = read_pid_file(kafka_broker.pid_file)
    assert kafka_broker.start() is False
    assert read_pid_file(kafka_broker.pid_file) == pid
    assert kafka_broker.health()
