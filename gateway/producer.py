"""The Kafka side of the gateway: partition, encode ``lp1`` records, produce, await acks; and
the ``kinds1`` declarations from remote-write metadata, to every partition."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    IllegalStateError,
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)

from gateway.base import KafkaUnavailableError, OverloadedError, ParsedWrite
from gateway.declarations import AnnouncedKinds
from gateway.metrics import GatewayMetrics
from gateway.settings import GatewaySettings
from metricsflow.model.declarations import DeclaredKind, KindDeclarations, encode_declarations
from metricsflow.model.message import EncodedRecord, encode_partitioned
from metricsflow.model.native import NATIVE

logger = logging.getLogger(__name__)

#: Errors after which an idempotent producer cannot go on: its producer id or sequence
#: numbers no longer match the broker's (seen after a broker restart), and aiokafka's sender
#: routine has stopped. Only a new producer, with a new producer id, recovers; retrying
#: with the old one fails forever.
FATAL_PRODUCER_ERRORS: tuple[type[KafkaError], ...] = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    ProducerFenced,
    IllegalStateError,
)


#: Lines hashed and encoded between two turns of the event loop (about 2 ms of CPU either way).
_SLICE_LINES = 20_000 if NATIVE else 2_000


async def encode_by_partition(
    parsed: ParsedWrite, count: int
) -> list[tuple[int, list[EncodedRecord]]]:
    """The request's lines grouped by partition (``series_hash(key) % count``) and encoded,
    :data:`_SLICE_LINES` at a time with a turn of the event loop in between."""
    out: list[tuple[int, list[EncodedRecord]]] = []
    total = len(parsed.lines)
    for start in range(0, total, _SLICE_LINES):
        end = start + _SLICE_LINES
        out.extend(
            encode_partitioned(
                parsed.series_keys[start:end],
                parsed.lines[start:end],
                count,
                parsed.db,
                parsed.rp,
                received_ns=parsed.received_ns,
            )
        )
        if end < total:
            await asyncio.sleep(0)
    return out


class KafkaWriter:
    """Owns one idempotent ``acks=all`` producer; :meth:`write` returns once all acks are in.

    Backpressure: a request first reserves its body size against ``max_inflight_bytes``
    (429 beyond); the reservation is released when every record of the request is settled
    (acknowledged or failed) — not merely when the HTTP reply went out — so memory held by
    requests that timed out is counted until the producer lets go of it.
    """

    def __init__(self, settings: GatewaySettings, metrics: GatewayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.inflight_bytes = 0
        self._producer: AIOKafkaProducer | None = None
        self._connect_task: asyncio.Task[None] | None = None
        self._retiring: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self.announced = AnnouncedKinds(settings.metadata_reannounce_s)

    def _new_producer(self) -> AIOKafkaProducer:
        s = self.settings
        return AIOKafkaProducer(
            bootstrap_servers=s.bootstrap_servers,
            acks="all",
            enable_idempotence=True,
            compression_type=None if s.compression == "none" else s.compression,
            linger_ms=s.linger_ms,
            max_batch_size=s.max_batch_bytes,
            max_request_size=s.max_batch_bytes + 65_536,
            request_timeout_ms=max(1_000, int(s.produce_deadline_s * 1000)),
            client_id="metricsflow-gateway",
        )

    async def start(self) -> None:
        """Connect now if Kafka is there; otherwise keep trying in the background."""
        self._connect_task = asyncio.create_task(self._connect_loop())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._started.wait(), self.settings.produce_deadline_s)

    async def _connect_loop(self) -> None:
        delay = 0.5
        while True:
            producer = self._new_producer()
            try:
                await producer.start()
                await producer.partitions_for(self.settings.topic)
            except (KafkaError, OSError) as exc:
                logger.warning("kafka not reachable yet (%s); retrying in %.1fs", exc, delay)
                with contextlib.suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._producer = producer
            self._started.set()
            logger.info("kafka producer connected bootstrap=%s", self.settings.bootstrap_servers)
            return

    async def stop(self) -> None:
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connect_task
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """A real metadata request to the brokers succeeds within ``timeout_s``."""
        if self._producer is None:
            return False
        try:
            await asyncio.wait_for(self._producer.client.fetch_all_metadata(), timeout_s)
        except (KafkaError, OSError, TimeoutError):
            return False
        return True

    def reserve(self, nbytes: int) -> None:
        """Count ``nbytes`` as in flight, or raise :class:`OverloadedError` (429)."""
        if self.inflight_bytes and self.inflight_bytes + nbytes > self.settings.max_inflight_bytes:
            raise OverloadedError(
                f"too many bytes in flight to Kafka ({self.inflight_bytes}); retry later",
                retry_after_s=self.settings.retry_after_s,
            )
        self.inflight_bytes += nbytes
        self.metrics.inflight_bytes.set(self.inflight_bytes)

    def release(self, nbytes: int) -> None:
        self.inflight_bytes -= nbytes
        self.metrics.inflight_bytes.set(self.inflight_bytes)

    async def write(self, parsed: ParsedWrite, reserved: int) -> None:
        """Produce every line; return when all are acknowledged, else raise 503.

        Takes over the ``reserved`` bytes: they are released when all sends settle.
        """
        handed_over = False
        futures: list[asyncio.Future[Any]] = []
        try:
            if not parsed.lines:
                return
            producer = self._producer
            if producer is None:
                raise self._unavailable("not connected to Kafka")
            started = time.perf_counter()
            async with self._acknowledged(producer):
                partitions = await producer.partitions_for(self.settings.topic)
                count = len(partitions)
                # Hashing and encoding are per line: in slices, yielding to the loop.
                batches = await encode_by_partition(parsed, count)
                for partition, records in batches:
                    for rec in records:
                        fut = await producer.send(
                            self.settings.topic,
                            value=rec.value,
                            key=rec.key,
                            partition=partition,
                            headers=rec.headers,
                        )
                        futures.append(fut)
                self.metrics.records.inc(len(futures))
                self._release_when_settled(futures, reserved)
                handed_over = True
                await asyncio.gather(*(asyncio.shield(f) for f in futures))
            self.metrics.produce_seconds.observe(time.perf_counter() - started)
        finally:
            if not handed_over:
                self._release_when_settled(futures, reserved)

    async def declare(
        self,
        db: str,
        rp: str | None,
        kinds: Mapping[str, DeclaredKind],
        received_ns: int,
    ) -> int:
        """Produce, as ``kinds1`` records to every partition of the topic, the part of
        ``kinds`` this process has not produced lately (:class:`AnnouncedKinds`); return once
        Kafka acknowledged all of them (else raise 503, as :meth:`write`). Returns how many
        measurements were declared (0: nothing was due)."""
        due = self.announced.due(db, rp, kinds)
        if not due:
            return 0
        producer = self._producer
        if producer is None:
            raise self._unavailable("not connected to Kafka")
        encoded = encode_declarations(KindDeclarations(db, due, rp, received_ns))
        futures: list[asyncio.Future[Any]] = []
        try:
            async with self._acknowledged(producer):
                # every partition: a family's series are spread over all of them
                for partition in sorted(await producer.partitions_for(self.settings.topic)):
                    for value, headers in encoded:
                        fut = await producer.send(
                            self.settings.topic, value=value, partition=partition, headers=headers
                        )
                        futures.append(fut)
                self.metrics.records.inc(len(futures))
                await asyncio.gather(*(asyncio.shield(f) for f in futures))
        finally:
            self._release_when_settled(futures, 0)  # no bytes: marks late failures retrieved
        self.announced.produced(db, rp, due)
        for kind in DeclaredKind:
            n = sum(1 for k in due.values() if k is kind)
            if n:
                self.metrics.declarations.labels(kind.value).inc(n)
        logger.info(
            "declared kinds from remote-write metadata db=%s rp=%s measurements=%d partitions=%d",
            db,
            rp,
            len(due),
            len(futures) // max(1, len(encoded)),
        )
        return len(due)

    @contextlib.asynccontextmanager
    async def _acknowledged(self, producer: AIOKafkaProducer) -> AsyncIterator[None]:
        """The sends in the block must be acknowledged within ``produce_deadline_s``; a
        timeout or a Kafka error becomes :class:`KafkaUnavailableError` (503, retry), and a
        fatal producer error replaces the producer."""
        deadline = self.settings.produce_deadline_s
        try:
            async with asyncio.timeout(deadline):
                yield
        except TimeoutError:
            raise self._unavailable(
                f"Kafka did not acknowledge within {deadline:g}s; retry"
            ) from None
        except KafkaError as exc:
            if isinstance(exc, FATAL_PRODUCER_ERRORS):
                self._replace_producer(producer, exc)
            raise self._unavailable(f"Kafka error: {exc}; retry") from None

    def _replace_producer(self, broken: AIOKafkaProducer, error: KafkaError) -> None:
        """Retire a producer that failed fatally and connect a new one in the background;
        requests get 503 (retry) until it is connected. Idempotent per broken producer."""
        if self._producer is not broken:
            return  # another request already replaced it
        logger.error(
            "kafka producer failed fatally error=%r: replacing it (new producer id)", error
        )
        self._producer = None
        self._started.clear()
        self.metrics.producer_resets.inc()
        self._retiring = asyncio.create_task(self._retire(broken))
        if self._connect_task is None or self._connect_task.done():
            self._connect_task = asyncio.create_task(self._connect_loop())

    @staticmethod
    async def _retire(producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(producer.stop(), 10)

    def _release_when_settled(self, futures: list[asyncio.Future[Any]], nbytes: int) -> None:
        if not futures:
            self.release(nbytes)
            return
        remaining = len(futures)

        def done(fut: asyncio.Future[Any]) -> None:
            nonlocal remaining
            if not fut.cancelled():
                fut.exception()  # mark retrieved
            remaining -= 1
            if remaining == 0:
                self.release(nbytes)

        for fut in futures:
            fut.add_done_callback(done)

    def _unavailable(self, message: str) -> KafkaUnavailableError:
        return KafkaUnavailableError(message, retry_after_s=self.settings.retry_after_s)
