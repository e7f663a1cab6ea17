"""The Kafka source: one consumer group for all workers, one reader per assigned partition.

* **A partition is a key group** (docs/architecture.md, "Key groups"): reader ``k`` reads
  partition ``k`` of the topic; its position (next offset) is checkpointed operator state
  (:func:`~metricsflow.sources.base.encode_offset`).
* **Assignment comes from Kafka's group protocol.** The consumer subscribes with a
  rebalance listener that forwards ownership changes to the job's
  :class:`~metricsflow.sources.base.AssignmentListener` (restore + seek on assignment; stop,
  drain and drop on revocation, awaited before the consumer re-joins the group).
* **Kafka's committed offsets are for lag monitoring only**: a reader commits the position of
  checkpoint *n* when *n* completes; resuming always uses the position in the checkpoint, or
  the earliest offset when no checkpoint holds the partition. ``enable_auto_commit=False``.
* **Micro-batches**: ``poll`` fetches what one ``getmany`` returns for its partition (at most
  ``max_records_per_fetch`` records), cuts it into micro-batches of at most
  ``max_points_per_fetch`` points (:func:`micro_batches`; a record's points are its lines,
  counted before decoding; a single larger record is a micro-batch of its own), keeps the
  records of the later micro-batches and decodes one micro-batch per ``poll``, with a turn of
  the event loop before each held one: one ``poll`` never holds the loop for more than one
  bounded micro-batch, whatever the records hold. For each micro-batch it decodes
  every record with :func:`metricsflow.model.columnar.decode_columnar` (headers checked by
  :func:`metricsflow.model.message.read_headers`) and hands out, in order,
  one :class:`RawLinesBatch` per database (the raw tier, lines unchanged) and then one
  :class:`RecordBatch` (numeric samples, keys ``window_key(db, series, field)``, and per
  sample its receive time, see :func:`received_ns`). The position
  advances past the micro-batch's records only with that last element, so a barrier between the
  elements of one micro-batch replays the raw lines (an idempotent overwrite) but never counts a
  sample twice; a barrier between two micro-batches of one fetch snapshots the position between
  them (the records held for later are dropped on restore, revocation and close: the consumer
  seeks to the restored position).
* **Backpressure**: aiokafka fetches a partition again only after its previous fetch was
  drained, so an unread reader holds at most ``max_partition_fetch_bytes`` in memory. While
  the source's ``admission`` says no (the sink is saturated), a reader **pauses** its partition
  (aiokafka drops the prefetched records and fetches nothing; the position is kept) and keeps
  calling ``getmany``, so the consumer stays a live group member however long the outage; it
  resumes the partition as soon as admission returns.
* **Idleness** (:meth:`KafkaPartitionReader.watermark_status`): a reader is ``IDLE`` only when
  a *fresh* fetch response (younger than ``idle_freshness_ms``) reported a high watermark at or
  below its position: caught up, nothing to read. Paused by backpressure, not positioned yet,
  records pending, lag, or no recent fetch response (broker unreachable: the reader cannot
  know what is waiting) are all ``ACTIVE``: the watermark then waits for the data instead of
  following the wall clock, so nothing that is merely delayed becomes late.
* **Poison records** (anything the headers check or the decoder rejects, and records no operator
  could process: a database name InfluxDB refuses, a sample outside the pipeline's time range,
  see :mod:`metricsflow.model.limits`) are counted, logged with
  topic/partition/offset, produced to the dead-letter topic ``<topic>.dlq`` (value and key
  unchanged, original headers plus ``mf-dlq-error``, ``mf-dlq-topic``, ``mf-dlq-partition``,
  ``mf-dlq-offset``, ``mf-dlq-time-ns``) and skipped. Producing the dead letter is awaited
  (and retried) before the reader moves on. A record whose decoding raises anything else is
  dead-lettered the same way (decoding is per record and changes no state).
* **Failure isolation** (:mod:`metricsflow.runtime.isolation`): the elements of one micro-batch
  come from offsets ``[first record, last record + 1)`` (``last_range``); inside a suspect range a
  reader fetches one record at a time (and a fetch before it stops at its start), skips the
  poison offsets, and ``dead_letter`` produces the poison record of the last micro-batch to the
  dead-letter topic like an undecodable one (``poison_records`` in the stats).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from metricsflow.errors import ConfigurationError, SerializationError
from metricsflow.model.columnar import ColumnarChunk, decode_columnar
from metricsflow.model.declarations import FORMAT_KINDS1, decode_declarations, record_format
from metricsflow.model.limits import check_key, check_record
from metricsflow.model.message import read_headers
from metricsflow.runtime.isolation import FailureIsolation, PositionRange
from metricsflow.runtime.records import KindChange, RawLinesBatch, RecordBatch
from metricsflow.runtime.source import Source, SourceElement, SourceReader, WatermarkStatus
from metricsflow.sources.base import AssignmentListener, SourceStats, decode_offset, encode_offset
from metricsflow.windows.keys import WindowKeyIndex

logger = logging.getLogger(__name__)


_KINDS1 = FORMAT_KINDS1.encode("ascii")


@dataclass(frozen=True, slots=True)
class KafkaSourceConfig:
    """Settings of the Kafka source (the worker fills them from ``METRICSFLOW_KAFKA_*``)."""

    bootstrap_servers: str
    topic: str
    group_id: str = "metricsflow"
    dead_letter_topic: str = ""
    """Empty = ``<topic>.dlq``."""
    client_id: str = "metricsflow-worker"
    max_records_per_fetch: int = 2_000
    """Records per ``getmany`` per partition."""
    max_points_per_fetch: int = 100_000
    """Points per micro-batch (a fetch is cut into several; one larger record is one)."""
    max_partition_fetch_bytes: int = 4 * 1024 * 1024
    fetch_max_wait_ms: int = 100
    poll_timeout_ms: int = 50
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 1_000
    max_poll_interval_ms: int = 300_000
    rebalance_timeout_ms: int = 30_000
    idle_freshness_ms: int = 2_000
    """How recent the fetch response must be that shows a partition caught up for the reader
    to report it idle (fetches of a caught-up partition return every ``fetch_max_wait_ms``)."""

    def __post_init__(self) -> None:
        if not self.topic:
            raise ConfigurationError("the Kafka source needs a topic (METRICSFLOW_KAFKA_TOPIC)")
        if self.max_records_per_fetch < 1:
            raise ConfigurationError("max_records_per_fetch must be >= 1")
        if self.max_points_per_fetch < 1:
            raise ConfigurationError(
                f"max_points_per_fetch must be >= 1, got {self.max_points_per_fetch}"
            )

    @property
    def dlq_topic(self) -> str:
        return self.dead_letter_topic or f"{self.topic}.dlq"


_UNKNOWN_RECEIVED = 2**63 - 1


def record_points(value: bytes | None) -> int:
    """The points of an ``lp1`` record value, counted without decoding: one per line (an
    empty value or a tombstone has none). The decoding work of a record is proportional."""
    return value.count(b"\n") + 1 if value else 0


def micro_batches(points: Sequence[int], max_points: int) -> list[tuple[int, int]]:
    """Cut consecutive records (``points[i]`` points each) into ``[start, end)`` slices, in
    order and covering all of them, greedily: each slice holds at most ``max_points`` points,
    except a slice of one record that alone holds more."""
    out: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, n in enumerate(points):
        if i > start and total + n > max_points:
            out.append((start, i))
            start, total = i, 0
        total += n
    if start < len(points):
        out.append((start, len(points)))
    return out


def received_ns(header_ns: int | None, record: Any) -> int:
    """When the point was received: the gateway's ``mf-received-ns`` header, else the Kafka
    record's timestamp (ms; the producer's send time). Both are stored in the log, so a replay
    judges future points exactly as the live run did."""
    if header_ns is not None:
        return header_ns
    timestamp_ms = getattr(record, "timestamp", None)
    if isinstance(timestamp_ms, int) and timestamp_ms >= 0:
        return timestamp_ms * 1_000_000
    return _UNKNOWN_RECEIVED  # never treated as a future point


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        await self.source._on_revoked(frozenset(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        await self.source._on_assigned(frozenset(tp.partition for tp in assigned))


class KafkaSource(Source):
    """Owns the group consumer and the dead-letter producer; creates per-partition readers."""

    def __init__(self, uid: str, config: KafkaSourceConfig) -> None:
        super().__init__(uid)
        self.config = config
        self.stats = SourceStats()
        self.listener: AssignmentListener | None = None
        self.assigned: frozenset[int] = frozenset()
        self.readers: dict[int, KafkaPartitionReader] = {}
        self.admission: Callable[[], bool] | None = None
        """While this returns ``False`` (e.g. the sink is saturated) readers fetch nothing:
        backpressure that leaves the event loop free (heartbeats, checkpoints)."""
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self, listener: AssignmentListener) -> None:
        """Create the dead-letter topic if needed, start the producer, join the group."""
        self.listener = listener
        cfg = self.config
        await self._ensure_dlq_topic()
        self._producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap_servers, acks="all", client_id=f"{cfg.client_id}-dlq"
        )
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap_servers,
            group_id=cfg.group_id,
            client_id=cfg.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            max_poll_interval_ms=cfg.max_poll_interval_ms,
            rebalance_timeout_ms=cfg.rebalance_timeout_ms,
        )
        self._consumer.subscribe(topics=[cfg.topic], listener=_Listener(self))
        await self._consumer.start()
        logger.info("kafka source started topic=%s group=%s", cfg.topic, cfg.group_id)

    async def stop(self) -> None:
        """Leave the group (partitions are revoked first, through the listener)."""
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def _ensure_dlq_topic(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.config.bootstrap_servers)
        await admin.start()
        try:
            topics = await admin.list_topics()
            if self.config.dlq_topic not in topics:
                await admin.create_topics(
                    [NewTopic(name=self.config.dlq_topic, num_partitions=1, replication_factor=1)]
                )
                logger.info("created dead-letter topic topic=%s", self.config.dlq_topic)
        except TopicAlreadyExistsError:
            pass
        finally:
            await admin.close()

    def partition_count(self) -> int | None:
        """Partitions of the topic as the consumer's metadata knows them; ``None`` before the
        source is started or while the consumer has no metadata for the topic."""
        consumer = self._consumer
        if consumer is None:
            return None
        parts = consumer.partitions_for_topic(self.config.topic)
        return len(parts) if parts else None

    @property
    def consumer(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            raise RuntimeError("the Kafka source is not started")
        return self._consumer

    # ------------------------------------------------------------------ group protocol
    async def _on_assigned(self, key_groups: frozenset[int]) -> None:
        new = key_groups - self.assigned
        self.assigned = key_groups
        self.stats.rebalances += 1
        logger.info(
            "partitions assigned topic=%s partitions=%s new=%s",
            self.config.topic,
            sorted(key_groups),
            sorted(new),
        )
        if new and self.listener is not None:
            await self.listener.on_assigned(frozenset(new))

    async def _on_revoked(self, key_groups: frozenset[int]) -> None:
        logger.info(
            "partitions revoked topic=%s partitions=%s", self.config.topic, sorted(key_groups)
        )
        # Eager rebalance protocol: everything is revoked, then (mostly) re-assigned. Keep the
        # state of what comes back: revoke for real only what is not re-assigned. The listener
        # cannot know yet, so it is told now and re-assignment restores from the checkpoint.
        self.assigned = self.assigned - key_groups
        if key_groups and self.listener is not None:
            await self.listener.on_revoked(key_groups)
        for kg in key_groups:
            reader = self.readers.pop(kg, None)
            if reader is not None:
                reader.close()

    async def committed_offsets(self, key_groups: frozenset[int]) -> dict[int, int | None]:
        """The consumer group's committed offset per partition (``None``: never committed).
        Offsets are committed only after a completed checkpoint, so one that exists means
        the partition's state was checkpointed once."""
        consumer = self.consumer
        return {
            kg: await consumer.committed(TopicPartition(self.config.topic, kg))
            for kg in sorted(key_groups)
        }

    # ------------------------------------------------------------------ readers
    def create_reader(self, key_group: int) -> KafkaPartitionReader:
        reader = KafkaPartitionReader(self, key_group)
        self.readers[key_group] = reader
        return reader

    def lag(self) -> dict[int, int]:
        """Consumer lag per assigned partition: high watermark minus the next offset to read
        (only partitions with a known high watermark)."""
        out: dict[int, int] = {}
        consumer = self._consumer
        if consumer is None:
            return out
        for kg, reader in self.readers.items():
            try:
                high = consumer.highwater(TopicPartition(self.config.topic, kg))
            except Exception:  # not assigned any more
                continue
            if high is not None and reader.next_offset is not None:
                out[kg] = max(0, int(high) - reader.next_offset)
        return out

    async def produce_dead_letter(self, record: Any, error: str) -> None:
        """Send an undecodable record to the dead-letter topic; retried until it is acked."""
        headers = list(record.headers or ())
        headers += [
            ("mf-dlq-error", error.encode("utf-8", "replace")[:4000]),
            ("mf-dlq-topic", record.topic.encode()),
            ("mf-dlq-partition", str(record.partition).encode()),
            ("mf-dlq-offset", str(record.offset).encode()),
            ("mf-dlq-time-ns", str(time.time_ns()).encode()),
        ]
        delay = 0.1
        while True:
            producer = self._producer
            if producer is None:
                raise RuntimeError("the Kafka source is stopped")
            try:
                await producer.send_and_wait(
                    self.config.dlq_topic,
                    value=record.value or b"",
                    key=record.key,
                    headers=headers,
                )
                return
            except KafkaError as exc:
                logger.warning(
                    "dead-letter produce failed, retrying topic=%s error=%r",
                    self.config.dlq_topic,
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class KafkaPartitionReader(SourceReader):
    """Reads one partition of the source's consumer (see the module docstring)."""

    def __init__(self, source: KafkaSource, key_group: int) -> None:
        self.source = source
        self.key_group = key_group
        self.tp = TopicPartition(source.config.topic, key_group)
        self.next_offset: int | None = None
        self._seek_to: int | None = None
        self._seek_pending = True
        self._pending: deque[SourceElement] = deque()
        self._pending_end_offset: int | None = None
        self._held: deque[Sequence[Any]] = deque()
        """The later micro-batches of the last fetch, not decoded yet (module docstring)."""
        self._checkpoint_offsets: dict[int, int] = {}
        self._closed = False
        self._paused = False
        self._caught_up = False
        # One key dictionary per partition: batches carry ids into a key tuple that grows,
        # so the window operator maps only keys it has not seen (a new reader after
        # reassignment starts fresh; the operator maps into its own restored ids). It forgets
        # its keys when many stopped reporting (WindowKeyIndex.sweep, after each fetch).
        self._keys = WindowKeyIndex()
        self._nul_series: set[int] = set()
        self._nul_fields: set[int] = set()
        self._isolation: FailureIsolation | None = None
        self._fetched: Sequence[Any] = ()
        self._fetch_range: PositionRange | None = None

    def restore_position(self, position: bytes | None) -> None:
        self._seek_to = None if position is None else decode_offset(position)
        self._seek_pending = True
        self._pending.clear()
        self._held.clear()

    async def _seek(self) -> None:
        consumer = self.source.consumer
        if self.tp in consumer.paused():  # a previous reader (before a restart) paused it
            consumer.resume(self.tp)
        if self._seek_to is None:
            await consumer.seek_to_beginning(self.tp)
        else:
            consumer.seek(self.tp, self._seek_to)
        self.next_offset = int(await consumer.position(self.tp))
        self._seek_pending = False
        logger.info(
            "reader positioned topic=%s partition=%d offset=%d restored=%s",
            self.tp.topic,
            self.key_group,
            self.next_offset,
            self._seek_to is not None,
        )

    async def poll(self) -> SourceElement | None:
        self._caught_up = False
        if self._closed:
            return None
        if self._pending:
            return self._take()
        if self._seek_pending:
            await self._seek()
        consumer = self.source.consumer
        cfg = self.source.config
        admission = self.source.admission
        if admission is not None and not admission():
            if not self._paused:
                consumer.pause(self.tp)
                self._paused = True
                logger.info("partition paused (backpressure) partition=%d", self.key_group)
            # keep polling: the consumer stays a live member of the group (max.poll.interval)
            await consumer.getmany(self.tp, timeout_ms=cfg.poll_timeout_ms, max_records=1)
            return None
        if self._paused:
            consumer.resume(self.tp)
            self._paused = False
            logger.info("partition resumed partition=%d", self.key_group)
        if self._held:
            await asyncio.sleep(0)  # the loop's turn (heartbeats, barriers) between batches
            if self._closed or not self._held:
                return None
            await self._decode(self._held.popleft())
            return self._take() if self._pending else None
        fetched = await consumer.getmany(
            self.tp, timeout_ms=cfg.poll_timeout_ms, max_records=self._fetch_limit()
        )
        records = fetched.get(self.tp, [])
        if self._closed:
            return None
        if not records:
            self._caught_up = self._is_caught_up()
            return None
        points = [record_points(r.value) for r in records]
        cuts = micro_batches(points, cfg.max_points_per_fetch)
        self._held.extend(records[start:end] for start, end in cuts[1:])
        first, end = cuts[0]
        await self._decode(records[first:end])
        return self._take() if self._pending else None

    def _fetch_limit(self) -> int:
        """Records for the next fetch: one inside a suspect range, up to its start before it."""
        limit = self.source.config.max_records_per_fetch
        isolation, position = self._isolation, self.next_offset
        span = None if isolation is None else isolation.suspects.get(self.key_group)
        if span is None or position is None or position >= span.end:
            return limit
        if position >= span.first:
            return 1
        return max(1, min(limit, span.first - position))

    def last_range(self) -> PositionRange | None:
        return self._fetch_range

    def isolate(self, isolation: FailureIsolation) -> None:
        self._isolation = isolation

    async def dead_letter(self, position: int, error: str) -> None:
        record = next((r for r in self._fetched if r.offset == position), None)
        if record is None:
            raise LookupError(f"offset {position} is not in the last fetch of {self.tp}")
        self.source.stats.dead_letters += 1
        self.source.stats.poison_records += 1
        await self.source.produce_dead_letter(record, error)

    def _is_caught_up(self) -> bool:
        """A fresh fetch response says there is nothing beyond our position."""
        consumer = self.source._consumer
        if (
            consumer is None
            or self._paused
            or self._pending
            or self._held
            or self.next_offset is None
        ):
            return False
        try:
            high = consumer.highwater(self.tp)
            fetched_ms = consumer.last_poll_timestamp(self.tp)
        except Exception:  # not assigned any more
            return False
        if high is None or fetched_ms is None:
            return False
        fresh = time.time() * 1000 - fetched_ms <= self.source.config.idle_freshness_ms
        return fresh and int(high) <= self.next_offset

    def watermark_status(self) -> WatermarkStatus:
        """``IDLE`` only right after a poll that found the partition caught up (module
        docstring); anything else (backpressure, lag, an unreachable broker) is ``ACTIVE``."""
        return WatermarkStatus.IDLE if self._caught_up else WatermarkStatus.ACTIVE

    def _take(self) -> SourceElement:
        element = self._pending.popleft()
        if not self._pending and self._pending_end_offset is not None:
            self.next_offset = self._pending_end_offset
            self._pending_end_offset = None
        return element

    async def _decode(self, records: Sequence[Any]) -> None:
        stats = self.source.stats
        raw_by_db: dict[str, tuple[list[bytes], int]] = {}
        idx_parts: list[np.ndarray[Any, np.dtype[np.int32]]] = []
        ts_parts: list[np.ndarray[Any, np.dtype[np.int64]]] = []
        val_parts: list[np.ndarray[Any, np.dtype[np.float64]]] = []
        rec_parts: list[np.ndarray[Any, np.dtype[np.int64]]] = []
        self._fetched = records
        self._fetch_range = PositionRange(int(records[0].offset), int(records[-1].offset) + 1)
        isolation = self._isolation
        newest_received = None
        changes: list[KindChange] = []
        rows = 0
        for record in records:
            if isolation is not None and isolation.is_poison(self.key_group, int(record.offset)):
                isolation.note_skipped()  # dead-lettered when it was judged; never again
                continue
            stats.records_in += 1
            value = record.value
            stats.bytes_in += len(value or b"")
            try:
                if record_format(record.headers) == _KINDS1:
                    changes.append(KindChange(rows, decode_declarations(value, record.headers)))
                    stats.declarations_in += 1
                    continue
                if value is None:
                    raise SerializationError("record has no value (tombstone)")
                meta = read_headers(record.headers)
                interner = self._keys.interner
                known = len(interner.series_keys), len(interner.field_keys)
                cols = decode_columnar(value, interner)
                check_record(meta.db, cols.time_ns)  # what no operator could process
                self._check_keys(cols, *known)
            except Exception as exc:  # SerializationError, LimitError, or a decoder's bug
                stats.dead_letters += 1
                logger.error(
                    "undecodable record sent to the dead-letter topic topic=%s partition=%d "
                    "offset=%d dlq=%s error=%s",
                    record.topic,
                    record.partition,
                    record.offset,
                    self.source.config.dlq_topic,
                    exc,
                )
                await self.source.produce_dead_letter(record, str(exc))
                continue
            stats.points_in += cols.point_count
            lines, count = raw_by_db.get(meta.db, ([], 0))
            lines.append(cols.raw)
            raw_by_db[meta.db] = (lines, count + cols.point_count)
            n = len(cols)
            if n == 0:
                continue
            stats.samples_in += n
            rows += n
            idx_parts.append(self._keys.ids(meta.db, cols))
            ts_parts.append(cols.time_ns)
            val_parts.append(cols.values)
            received = received_ns(meta.received_ns, record)
            rec_parts.append(np.full(n, received, dtype=np.int64))
            if received < _UNKNOWN_RECEIVED and (newest_received or 0) < received:
                newest_received = received
        for db, (lines, count) in raw_by_db.items():
            self._pending.append(RawLinesBatch(self.key_group, db, b"\n".join(lines), count))
        if idx_parts:
            self._pending.append(
                RecordBatch(
                    key_group=self.key_group,
                    keys=self._keys.keys,
                    key_idx=np.concatenate(idx_parts).astype(np.int32, copy=False),
                    ts_ns=np.concatenate(ts_parts),
                    values=np.concatenate(val_parts),
                    received_ns=np.concatenate(rec_parts),
                    kind_changes=tuple(changes),
                )
            )
        elif changes:  # declarations alone: an empty batch carries them
            self._pending.append(
                RecordBatch(
                    key_group=self.key_group,
                    keys=self._keys.keys,
                    key_idx=np.empty(0, np.int32),
                    ts_ns=np.empty(0, np.int64),
                    values=np.empty(0, np.float64),
                    received_ns=np.empty(0, np.int64),
                    kind_changes=tuple(changes),
                )
            )
        # series churn: the batches keep the tuple they carry; the interner ids go with it
        if newest_received is not None and self._keys.sweep(newest_received):
            self._nul_series.clear()
            self._nul_fields.clear()
        end = int(records[-1].offset) + 1
        if self._pending:
            self._pending_end_offset = end
        else:
            self.next_offset = end

    def _check_keys(self, cols: ColumnarChunk, known_series: int, known_fields: int) -> None:
        """``KeySeparatorError`` when a sample of ``cols`` has a key holding NUL. The interner
        keeps every key (append-only until the key index sweeps, which clears these ids), so
        new keys are checked once and the ids of the bad ones remembered; a record is looked
        at only while there are such ids."""
        for i in range(known_series, len(cols.series_keys)):
            if "\x00" in cols.series_keys[i]:
                self._nul_series.add(i)
        for i in range(known_fields, len(cols.field_keys)):
            if "\x00" in cols.field_keys[i]:
                self._nul_fields.add(i)
        for bad, idx, keys in (
            (self._nul_series, cols.series_idx, cols.series_keys),
            (self._nul_fields, cols.field_idx, cols.field_keys),
        ):
            if bad:
                hits = np.isin(idx, np.fromiter(bad, dtype=np.int64))
                if hits.any():
                    check_key(keys[int(idx[int(np.argmax(hits))])])

    def snapshot_position(self, checkpoint_id: int) -> bytes:
        # Not positioned yet: the restored offset, or 0, which the consumer resolves to the
        # earliest offset still in the log (auto_offset_reset="earliest"), like a fresh start.
        offset = self.next_offset if self.next_offset is not None else (self._seek_to or 0)
        self._checkpoint_offsets[checkpoint_id] = offset
        return encode_offset(offset)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        offset = self._checkpoint_offsets.get(checkpoint_id)
        for cid in [c for c in self._checkpoint_offsets if c <= checkpoint_id]:
            del self._checkpoint_offsets[cid]
        if offset is None or self._closed:
            return
        if self._isolation is not None:
            self._isolation.prune(self.key_group, offset)
        asyncio.get_running_loop().create_task(self._commit(offset))

    async def _commit(self, offset: int) -> None:
        """Commit for lag monitoring only; failures (e.g. after a rebalance) are harmless."""
        consumer = self.source._consumer
        if consumer is None:
            return
        try:
            await consumer.commit({self.tp: offset})
            self.source.stats.commits += 1
        except Exception as exc:
            self.source.stats.commit_failures += 1
            logger.info(
                "offset commit failed (lag metric only) partition=%d offset=%d error=%r",
                self.key_group,
                offset,
                exc,
            )

    def close(self) -> None:
        self._closed = True
        self._pending.clear()
        self._held.clear()
