"""The Kafka source against the real Kafka broker (tests/conftest.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from metricsflow.infra.kafka import KafkaServer
from metricsflow.model.message import encode_lines
from metricsflow.runtime.isolation import FailureIsolation, PositionRange
from metricsflow.runtime.records import RawLinesBatch, RecordBatch, split_window_key
from metricsflow.runtime.source import SourceElement, WatermarkStatus
from metricsflow.sources.base import decode_offset, encode_offset
from metricsflow.sources.kafka import KafkaPartitionReader, KafkaSource, KafkaSourceConfig

pytestmark = pytest.mark.integration

TopicFactory = Callable[..., Awaitable[str]]


class RecordingListener:
    def __init__(self) -> None:
        self.assigned: set[int] = set()
        self.events: list[tuple[str, frozenset[int]]] = []

    async def on_assigned(self, key_groups: frozenset[int]) -> None:
        self.events.append(("assigned", key_groups))
        self.assigned |= key_groups

    async def on_revoked(self, key_groups: frozenset[int]) -> None:
        self.events.append(("revoked", key_groups))
        self.assigned -= key_groups


async def produce(
    bootstrap: str, topic: str, partition: int, values: list[tuple[bytes, Any]]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for value, headers in values:
            await producer.send_and_wait(topic, value=value, headers=headers, partition=partition)
    finally:
        await producer.stop()


def lp1(db: str, *lines: str) -> tuple[bytes, Any]:
    keys = [line.split(" ")[0] for line in lines]
    (record,) = encode_lines(keys, list(lines), db)
    return record.value, record.headers


SourceFactory = Callable[..., Awaitable[tuple[KafkaSource, RecordingListener]]]


@pytest.fixture
async def source_factory(kafka_broker: KafkaServer) -> AsyncIterator[SourceFactory]:
    sources: list[KafkaSource] = []

    async def make(
        topic: str, group: str | None = None, **config: Any
    ) -> tuple[KafkaSource, RecordingListener]:
        source = KafkaSource(
            "kafka-source",
            KafkaSourceConfig(
                bootstrap_servers=kafka_broker.bootstrap,
                topic=topic,
                group_id=group or f"g-{uuid.uuid4().hex[:8]}",
                **config,
            ),
        )
        listener = RecordingListener()
        await source.start(listener)
        sources.append(source)
        return source, listener

    yield make
    for source in sources:
        await source.stop()


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.05)


async def drain(
    reader: KafkaPartitionReader, want: int, timeout_s: float = 20
) -> list[SourceElement]:
    """Poll until ``want`` RecordBatches arrived."""
    out: list[SourceElement] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while sum(isinstance(e, RecordBatch) for e in out) < want:
        assert loop.time() < deadline, f"timed out, got {out}"
        element = await reader.poll()
        if element is not None:
            out.append(element)
    return out


async def dead_letters(kafka_broker: KafkaServer, topic: str) -> list[Any]:
    """The records of ``<topic>.dlq``, read from the beginning (one fetch, 10 s at most)."""
    dlq = AIOKafkaConsumer(
        f"{topic}.dlq",
        bootstrap_servers=kafka_broker.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await dlq.start()
    try:
        got = await dlq.getmany(timeout_ms=10_000)
        return [r for rs in got.values() for r in rs]
    finally:
        await dlq.stop()


async def test_a_reader_hands_out_raw_lines_then_samples_and_advances_its_position_with_the_last(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=2)
    await produce(
        kafka_broker.bootstrap,
        topic,
        1,
        [
            lp1("db1", "cpu,host=a usage=1.5,n=2i 1000", "cpu,host=b usage=3 2000"),
            lp1("db2", 'cpu,host=a usage=7,s="x" 3000'),
        ],
    )
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0, 1})
    reader = source.create_reader(1)
    reader.restore_position(None)
    first = await drain(reader, 1)
    assert [type(e).__name__ for e in first] == ["RawLinesBatch", "RawLinesBatch", "RecordBatch"]
    raw1, raw2, batch = first
    assert isinstance(raw1, RawLinesBatch)
    assert isinstance(raw2, RawLinesBatch)
    assert (raw1.database, raw1.point_count) == ("db1", 2)
    assert raw2.lines == b'cpu,host=a usage=7,s="x" 3000'
    assert isinstance(batch, RecordBatch)
    samples = sorted(
        (*split_window_key(batch.keys[k]), int(t), float(v))
        for k, t, v in zip(
            batch.key_idx.tolist(), batch.ts_ns.tolist(), batch.values.tolist(), strict=False
        )
    )
    assert samples == [
        ("db1", "cpu,host=a", "n", 1000, 2.0),
        ("db1", "cpu,host=a", "usage", 1000, 1.5),
        ("db1", "cpu,host=b", "usage", 2000, 3.0),
        ("db2", "cpu,host=a", "usage", 3000, 7.0),
    ]
    assert decode_offset(reader.snapshot_position(1)) == 2
    assert source.stats.points_in == 3


async def test_a_barrier_between_the_elements_of_one_fetch_replays_it_whole(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    await produce(kafka_broker.bootstrap, topic, 0, [lp1("db", "m v=1 1"), lp1("db", "m v=2 2")])
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0})
    reader = source.create_reader(0)
    reader.restore_position(None)
    element = None
    while element is None:
        element = await reader.poll()
    assert isinstance(element, RawLinesBatch)
    assert decode_offset(reader.snapshot_position(1)) == 0


async def test_a_fetch_of_large_records_is_cut_into_micro_batches_of_bounded_points(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    sizes = [3, 4, 1, 12, 2, 2, 5]  # points per record; 12 alone exceeds the bound
    records, t = [], 0
    for n in sizes:
        records.append(lp1("db", *(f"m v={t + i} {t + i}" for i in range(n))))
        t += n
    await produce(kafka_broker.bootstrap, topic, 0, records)
    source, listener = await source_factory(topic, max_points_per_fetch=8)
    await wait_for(lambda: listener.assigned == {0})
    reader = source.create_reader(0)
    reader.restore_position(None)
    batches: list[tuple[PositionRange | None, list[float], int]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while sum(len(values) for _, values, _ in batches) < t:
        assert loop.time() < deadline, f"timed out, got {batches}"
        element = await reader.poll()
        if isinstance(element, RecordBatch):
            position = decode_offset(reader.snapshot_position(len(batches)))
            batches.append((reader.last_range(), element.values.tolist(), position))
    ranges = [r for r, _, _ in batches]
    assert all(r is not None for r in ranges)
    # in order and contiguous, and the position advances past each micro-batch with it
    assert [(r.first, r.end) for r in ranges if r] == list(
        zip([0] + [p for _, _, p in batches[:-1]], [p for _, _, p in batches], strict=True)
    )
    assert PositionRange(3, 4) in ranges  # the record of 12 points: a micro-batch of its own
    assert all(len(v) <= 8 or len(r or ()) == 1 for r, v, _ in batches)
    assert [v for _, values, _ in batches for v in values] == [float(i) for i in range(t)]
    assert source.stats.points_in == t


async def test_a_restored_reader_resumes_at_the_checkpointed_offset(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    await produce(kafka_broker.bootstrap, topic, 0, [lp1("db", f"m v={i} {i}") for i in range(5)])
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0})
    reader = source.create_reader(0)
    reader.restore_position(encode_offset(3))
    elements = await drain(reader, 1)
    batch = elements[-1]
    assert isinstance(batch, RecordBatch)
    assert batch.values.tolist() == [3.0, 4.0]
    assert decode_offset(reader.snapshot_position(7)) == 5


async def test_a_poison_record_goes_to_the_dead_letter_topic_and_the_reader_keeps_going(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    await produce(
        kafka_broker.bootstrap,
        topic,
        0,
        [
            lp1("db", "m v=1 1"),
            (b"this is not line protocol", [("mf-format", b"lp1"), ("mf-db", b"db")]),
            (b"m v=1 1", [("mf-format", b"lp9"), ("mf-db", b"db")]),
            lp1("db", "m v=4 4"),
        ],
    )
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0})
    reader = source.create_reader(0)
    reader.restore_position(None)
    elements = await drain(reader, 1)
    batch = elements[-1]
    assert isinstance(batch, RecordBatch)
    assert batch.values.tolist() == [1.0, 4.0]
    assert source.stats.dead_letters == 2
    records = await dead_letters(kafka_broker, topic)
    assert [r.value for r in records] == [b"this is not line protocol", b"m v=1 1"]
    headers = dict(records[0].headers)
    assert headers["mf-dlq-topic"] == topic.encode()
    assert headers["mf-dlq-partition"] == b"0"
    assert headers["mf-dlq-offset"] == b"1"
    assert b"line 1" in headers["mf-dlq-error"]
    assert b"lp9" in dict(records[1].headers)["mf-dlq-error"]


async def test_a_second_consumer_in_the_group_takes_over_partitions_after_revocation(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=4)
    group = f"g-{uuid.uuid4().hex[:8]}"
    _first, one = await source_factory(topic, group)
    await wait_for(lambda: one.assigned == {0, 1, 2, 3})
    _second, two = await source_factory(topic, group)
    await wait_for(lambda: len(one.assigned) == 2 and len(two.assigned) == 2)
    assert one.assigned.isdisjoint(two.assigned)
    assert ("revoked", frozenset({0, 1, 2, 3})) in one.events


async def test_positions_are_committed_to_kafka_only_when_the_checkpoint_completes(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    await produce(kafka_broker.bootstrap, topic, 0, [lp1("db", "m v=1 1"), lp1("db", "m v=2 2")])
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0})
    reader = source.create_reader(0)
    reader.restore_position(None)
    await drain(reader, 1)
    reader.snapshot_position(1)
    tp = TopicPartition(topic, 0)
    assert await source.consumer.committed(tp) is None
    reader.notify_checkpoint_complete(1)
    await wait_for(lambda: source.stats.commits == 1)
    assert await source.consumer.committed(tp) == 2


async def poll_until_status(
    reader: KafkaPartitionReader, status: WatermarkStatus, timeout_s: float = 20
) -> list[SourceElement]:
    """Poll until a poll returns nothing and the reader reports ``status``."""
    out: list[SourceElement] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        element = await reader.poll()
        if element is not None:
            out.append(element)
        elif reader.watermark_status() is status:
            return out
        assert loop.time() < deadline, f"never {status}, got {out}"


async def test_a_reader_is_idle_only_when_caught_up_and_active_while_held_back_by_backpressure(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0})
    reader = source.create_reader(0)
    reader.restore_position(None)
    await poll_until_status(reader, WatermarkStatus.IDLE)  # empty partition: caught up
    admitted = False
    source.admission = lambda: admitted  # the sink is saturated
    await produce(kafka_broker.bootstrap, topic, 0, [lp1("db", "m v=1 1000")])
    for _ in range(20):  # data waits in Kafka: held back, never idle
        assert await reader.poll() is None
        assert reader.watermark_status() is WatermarkStatus.ACTIVE
    assert source.consumer.paused() == {reader.tp}
    admitted = True
    got = await poll_until_status(reader, WatermarkStatus.IDLE)
    assert sum(isinstance(e, RecordBatch) for e in got) == 1
    assert source.consumer.paused() == set()
    assert decode_offset(reader.snapshot_position(1)) == 1


async def test_isolation_reads_a_suspect_range_record_by_record_and_skips_dead_lettered_poison(
    kafka_broker: KafkaServer, topic_factory: TopicFactory, source_factory: SourceFactory
) -> None:
    topic = await topic_factory(partitions=1)
    await produce(kafka_broker.bootstrap, topic, 0, [lp1("db", f"m v={i} {i}") for i in range(6)])
    source, listener = await source_factory(topic)
    await wait_for(lambda: listener.assigned == {0})
    isolation = FailureIsolation()
    isolation.mark_suspect(0, PositionRange(2, 5))
    reader = source.create_reader(0)
    reader.isolate(isolation)
    reader.restore_position(None)
    fetches: list[tuple[PositionRange | None, list[float]]] = []
    while len(fetches) < 5:
        element = await reader.poll()
        if isinstance(element, RecordBatch):
            fetches.append((reader.last_range(), element.values.tolist()))
            if element.values.tolist() == [4.0]:
                await reader.dead_letter(4, "ValueError: boom")
                isolation.mark_poison(0, 4, "ValueError: boom")
    assert fetches == [
        (PositionRange(0, 2), [0.0, 1.0]),  # a fetch before the suspect range stops at it
        (PositionRange(2, 3), [2.0]),
        (PositionRange(3, 4), [3.0]),
        (PositionRange(4, 5), [4.0]),
        (PositionRange(5, 6), [5.0]),
    ]
    assert source.stats.poison_records == 1
    replay = source.create_reader(0)
    replay.isolate(isolation)
    replay.restore_position(encode_offset(3))
    values = [v for e in await drain(replay, 2) if isinstance(e, RecordBatch) for v in e.values]
    assert values == [3.0, 5.0]  # the poison record is skipped, not dead-lettered again
    assert isolation.skipped == 1
    assert source.stats.poison_records == 1
    replay.snapshot_position(7)
    replay.notify_checkpoint_complete(7)
    assert isolation.poison == {}
    assert isolation.suspects == {}
    records = await dead_letters(kafka_broker, topic)
    assert len(records) == 1
    headers = dict(records[0].headers)
    assert (headers["mf-dlq-partition"], headers["mf-dlq-offset"]) == (b"0", b"4")
    assert headers["mf-dlq-error"] == b"ValueError: boom"
