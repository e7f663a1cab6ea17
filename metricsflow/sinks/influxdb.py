"""The InfluxDB sink: raw tier + one retention policy per downsampled tier, v1 write API.

Layout (docs/influxdb-layout.md, ``metricsflow/model/tiers.py``): the database is the one the
write named; inside it one retention policy per tier, named like the tier, ``raw`` being the
DEFAULT policy. The sink creates a database and its policies on first use (idempotently;
a policy that exists with another duration is altered), restricted by an optional allow-list.

Writing: the caller's thread appends encoded lines to a buffer per ``(db, rp)``; a buffer is
sealed into a request when it holds ``batch_max_points`` points or ``batch_max_bytes`` bytes,
or when it is older than ``flush_interval_s``. One writer thread sends the requests in FIFO
order (so a re-emitted window always lands after the result it replaces), gzip-compressed,
``precision=n``. Once ``max_pending_requests`` sealed requests wait, :meth:`has_capacity` is
``False``: the job's sink task awaits it (the event loop stays free) and the Kafka readers
pause their partitions, so nothing more is read. A caller that ignores it blocks in
``write_*`` past ``4 * max_pending_requests`` (a last resort that bounds memory).

Failures:

* retriable (connection errors, timeouts, 5xx, 404 "database not found" after a drop, 401/403
  while credentials get fixed) are retried forever with exponential backoff and jitter; every
  retry is logged and counted, and ``stats.blocked`` is set meanwhile;
* points older than their tier's retention are left out before sending (InfluxDB would drop
  them), and a ``partial write: points beyond retention policy dropped=N`` answer (a point
  crossed the edge in flight) is taken as written-but-N-dropped: counted per tier, summarized
  in one log line per interval, never bisected (``sinks/retention.py``);
* any other 400 (``field type conflict``, ``partial write``, unparseable) and 413: the request
  is split in halves and each half re-sent, down to single lines. Re-sending lines InfluxDB
  already accepted is an idempotent overwrite, so this isolates exactly the rejected lines,
  which go to the dead-letter file with InfluxDB's message, counted by reason. Never a retry
  loop, never a silent loss.

Fencing (:meth:`InfluxDBSink.fence`): every buffered chunk remembers its key group
(partition). When a partition is revoked, its chunks are removed from the buffers and from
the queued requests, every later attempt of a request being retried leaves it out, and the
attempt in flight is awaited (bounded by the HTTP timeout); an attempt whose outcome stays
unknown is reported. After ``fence`` returns nothing of the partition is sent again (until it
is assigned back, :meth:`InfluxDBSink.unfence`).
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from metricsflow.errors import ConfigurationError, MetricsflowError
from metricsflow.model.columnar import record_lines
from metricsflow.model.tiers import DEFAULT_TIERS, RAW_TIER, TierSpec
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch
from metricsflow.sinks.base import Sink, SinkStats
from metricsflow.sinks.deadletter import DeadLetterFile, classify_rejection
from metricsflow.sinks.influxdb_client import (
    InfluxDBClient,
    InfluxDBWriteError,
    ensure_database,
    go_duration_ns,
    influxql_duration,
    quote_ident,
)
from metricsflow.sinks.lines import aggregate_lines, aggregate_lines_sliced
from metricsflow.sinks.retention import (
    RetentionDropLog,
    drop_beyond_retention,
    retention_only_drops,
)

logger = logging.getLogger(__name__)

__all__ = [
    "InfluxDBClient",
    "InfluxDBSink",
    "InfluxDBSinkConfig",
    "InfluxDBWriteError",
    "SinkClosedError",
    "ensure_database",
    "go_duration_ns",
    "influxql_duration",
    "quote_ident",
]

T = TypeVar("T")


class DatabaseRefusedError(InfluxDBWriteError):
    """InfluxDB refused, for good, to create a database or one of its retention policies."""


class SinkClosedError(MetricsflowError):
    """The sink was closed while a write or flush was waiting."""


@dataclass(frozen=True, slots=True)
class InfluxDBSinkConfig:
    """Settings of the InfluxDB sink (the worker fills them from ``METRICSFLOW_INFLUXDB_*``)."""

    url: str
    tiers: tuple[TierSpec, ...] = DEFAULT_TIERS
    database_allowlist: tuple[str, ...] = ()
    """Shell-style patterns (``fnmatch``) of database names the sink may create and write;
    empty = any name. Points for other databases are dead-lettered (``database_not_allowed``)."""
    username: str | None = None
    password: str | None = None
    batch_max_points: int = 10_000
    batch_max_bytes: int = 2_000_000
    flush_interval_s: float = 1.0
    max_pending_requests: int = 8
    gzip_level: int = 1
    """0 disables compression."""
    request_timeout_s: float = 30.0
    retry_initial_s: float = 0.1
    retry_max_s: float = 10.0
    dead_letter_dir: Path = field(default_factory=lambda: Path("dead-letter"))
    dead_letter_max_bytes: int = 64 * 1024 * 1024
    """Size at which a dead-letter file is closed and a new one started."""
    dead_letter_max_files: int = 8
    """Dead-letter files kept (the oldest are deleted)."""
    retention_log_interval_s: float = 60.0
    """Points left out as beyond their tier's retention are summarized once per interval."""

    def __post_init__(self) -> None:
        if self.batch_max_points < 1 or self.batch_max_bytes < 1:
            raise ConfigurationError("influxdb batch limits must be positive")
        if self.max_pending_requests < 1:
            raise ConfigurationError("influxdb max_pending_requests must be >= 1")
        if not self.tiers or self.tiers[0].name != RAW_TIER:
            raise ConfigurationError(f"the first tier must be {RAW_TIER!r}")


_Chunk = tuple[int, bytes, int]
"""``(key group, line protocol, points)``: what one write of one partition added."""


@dataclass(slots=True)
class _Request:
    seq: int
    db: str
    rp: str
    chunks: list[_Chunk]
    points: int
    size: int
    created: float


class _Buffer:
    __slots__ = ("chunks", "created", "points", "size")

    def __init__(self) -> None:
        self.chunks: list[_Chunk] = []
        self.points = 0
        self.size = 0
        self.created = time.monotonic()


class InfluxDBSink(Sink):
    """Buffers lines per ``(db, rp)`` and writes them from one thread (module docstring)."""

    def __init__(self, config: InfluxDBSinkConfig) -> None:
        self.config = config
        self.stats = SinkStats()
        self.dead_letters = DeadLetterFile(
            config.dead_letter_dir,
            max_bytes=config.dead_letter_max_bytes,
            max_files=config.dead_letter_max_files,
        )
        self._client = InfluxDBClient(config)
        self._tier_names = {t.name for t in config.tiers}
        self._retention_ns = {t.name: t.retention_ns for t in config.tiers}
        self._retention_log = RetentionDropLog(config.retention_log_interval_s)
        self._fenced: set[int] = set()
        self._current: _Request | None = None
        self._in_flight: frozenset[int] = frozenset()
        self._attempt_seq = 0
        self._reported_attempt = 0
        self._cond = threading.Condition()
        self._buffers: dict[tuple[str, str], _Buffer] = {}
        self._pending: deque[_Request] = deque()
        self._next_seq = 1
        self._done_seq = 0
        self._closing = False
        self._abort = threading.Event()
        self._ensured: set[str] = set()
        self._allowed: dict[str, bool] = {}
        self._thread: threading.Thread | None = None
        self._fatal: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="influxdb-sink", daemon=True)
            self._thread.start()

    def close(self, *, flush: bool = True) -> None:
        if flush and self._thread is not None and self._fatal is None:
            self.flush()
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._abort.set()
        if self._thread is not None:
            self._thread.join(timeout=self.config.request_timeout_s + 5)
        self._client.close()

    # ------------------------------------------------------------------ caller side
    def is_allowed(self, db: str) -> bool:
        allowed = self._allowed.get(db)
        if allowed is None:
            patterns = self.config.database_allowlist
            allowed = not patterns or any(fnmatch.fnmatchcase(db, p) for p in patterns)
            self._allowed[db] = allowed
        return allowed

    def write_raw(self, batch: RawLinesBatch) -> None:
        if batch.point_count == 0 and not batch.lines:
            return
        self._add(batch.key_group, batch.database, RAW_TIER, batch.lines, batch.point_count)

    def write_aggregates(self, batch: AggregateBatch) -> None:
        self._check_tier(batch)
        self._add_lines(batch, aggregate_lines(batch))

    async def write_aggregates_async(self, batch: AggregateBatch) -> None:
        """The same lines, in the same order, as :meth:`write_aggregates`; encoded in slices
        with the event loop free in between. They are buffered in one step at the end, so a
        fence (revocation) or a close that happens meanwhile applies to the whole batch."""
        self._check_tier(batch)
        encoder = aggregate_lines_sliced(batch)
        while True:
            try:
                next(encoder)
            except StopIteration as done:
                by_db: dict[str, list[bytes]] = done.value
                break
            await asyncio.sleep(0)
        self._add_lines(batch, by_db)

    def _check_tier(self, batch: AggregateBatch) -> None:
        if batch.tier not in self._tier_names:
            raise ConfigurationError(f"tier {batch.tier!r} is not configured in the sink")

    def _add_lines(self, batch: AggregateBatch, by_db: dict[str, list[bytes]]) -> None:
        for db, lines in by_db.items():
            self._add(batch.key_group, db, batch.tier, b"\n".join(lines), len(lines))

    def _add(self, key_group: int, db: str, rp: str, chunk: bytes, points: int) -> None:
        self.stats.points_in += points
        if not self.is_allowed(db):
            self.stats.add_dead_letters("database_not_allowed", points)
            self.dead_letters.write(
                db=db,
                rp=rp,
                reason="database_not_allowed",
                status=0,
                error=f"database {db!r} is not allowed by the allow-list",
                lines=record_lines(chunk),
            )
            return
        cfg = self.config
        with self._cond:
            self._check_usable()
            if key_group in self._fenced:  # revoked: the next owner writes it
                self.stats.add_fenced(points)
                return
            buf = self._buffers.get((db, rp))
            if buf is None:
                buf = self._buffers[(db, rp)] = _Buffer()
            buf.chunks.append((key_group, chunk, points))
            buf.points += points
            buf.size += len(chunk) + 1
            if buf.points >= cfg.batch_max_points or buf.size >= cfg.batch_max_bytes:
                self._seal(db, rp)
            # The job awaits has_capacity() before each element (soft limit, the event loop
            # stays free); this hard limit only stops callers that do not.
            if len(self._pending) > 4 * cfg.max_pending_requests:
                self.stats.hard_limit_waits += 1
                logger.warning(
                    "influxdb sink past its hard limit, blocking the caller pending_requests=%d",
                    len(self._pending),
                )
            while len(self._pending) > 4 * cfg.max_pending_requests:
                self._check_usable()
                self._cond.wait(0.5)

    def flush(self, timeout_s: float | None = None) -> None:
        self.wait_flushed(self.flush_marker(), timeout_s)

    def flush_marker(self) -> int:
        with self._cond:
            self._check_usable()
            for key in list(self._buffers):
                self._seal(*key)
            return self._next_seq - 1

    def has_capacity(self) -> bool:
        if self._fatal is not None or self._closing:
            return True  # the next write raises instead of waiting for ever
        return len(self._pending) < self.config.max_pending_requests

    @property
    def pending_requests(self) -> int:
        """Sealed requests waiting for the writer thread (the backpressure gauge)."""
        return len(self._pending)

    def wait_flushed(self, marker: int, timeout_s: float | None = None) -> None:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        target = marker
        with self._cond:
            while self._done_seq < target:
                self._check_usable()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"influxdb sink flush timed out after {timeout_s}s "
                        f"(last error: {self.stats.last_error})"
                    )
                self._cond.wait(0.5 if remaining is None else min(0.5, remaining))
        self.stats.flushes += 1

    # ------------------------------------------------------------------ fencing
    def fence(self, key_groups: frozenset[int], timeout_s: float | None = None) -> int:
        """Revocation barrier: from now on nothing of ``key_groups`` is sent.

        Their buffered and queued lines are dropped (the next owner replays them from the
        checkpoint); a request in flight that holds any of them is awaited, at most
        ``timeout_s`` (default: the HTTP timeout + 1 s); a retried request leaves them out of
        its next attempt. Returns the points dropped. A write whose outcome stays unknown is
        reported (log + ``unconfirmed_writes``). See docs/operations.md, "Hand-over".
        """
        gone = frozenset(key_groups)
        if not gone:
            return 0
        limit = self.config.request_timeout_s + 1 if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        with self._cond:
            self._fenced |= gone
            dropped = 0
            for buf in self._buffers.values():
                dropped += _drop_chunks(buf, gone)
            for request in self._pending:
                dropped += _drop_chunks(request, gone)
            if self._current is not None:  # the writer's: its next attempt leaves them out
                dropped += _drop_chunks(self._current, gone)
            self.stats.add_fenced(dropped)
            while self._in_flight & gone:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._reported_attempt = self._attempt_seq
                    self._unconfirmed(self._in_flight & gone, "still in flight at revocation")
                    break
                self._cond.wait(min(0.5, remaining))
        logger.info("influxdb sink fenced key_groups=%s points_dropped=%d", sorted(gone), dropped)
        return dropped

    def unfence(self, key_groups: frozenset[int]) -> None:
        """The key groups are assigned (again): their writes are sent."""
        with self._cond:
            self._fenced -= key_groups

    def _report_unconfirmed(self, attempt: int, exc: InfluxDBWriteError) -> None:
        with self._cond:
            fenced = self._in_flight & self._fenced
            if not fenced or self._reported_attempt >= attempt:
                return
            self._reported_attempt = attempt
            self._unconfirmed(fenced, repr(exc))

    def _unconfirmed(self, key_groups: frozenset[int], detail: str) -> None:
        self.stats.unconfirmed_writes += 1
        logger.error(
            "influxdb write of revoked partitions could not be confirmed; InfluxDB may still "
            "apply it after the new owner's writes key_groups=%s detail=%s",
            sorted(key_groups),
            detail,
        )

    def _check_usable(self) -> None:
        if self._fatal is not None:
            raise SinkClosedError(f"influxdb sink failed: {self._fatal!r}") from self._fatal
        if self._closing:
            raise SinkClosedError("influxdb sink is closed")

    def _seal(self, db: str, rp: str) -> None:
        """Move a buffer to the pending queue (call with the lock held)."""
        buf = self._buffers.pop((db, rp), None)
        if buf is None or not buf.chunks:
            return
        self._pending.append(
            _Request(self._next_seq, db, rp, buf.chunks, buf.points, buf.size, buf.created)
        )
        self._next_seq += 1
        self._cond.notify_all()

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    request = self._next_request()
                    if request is None:
                        return
                self._send(request)
                with self._cond:
                    self._current = None
                    self._done_seq = request.seq
                    self._cond.notify_all()
        except SinkClosedError:
            return
        except BaseException as exc:  # a bug: make callers fail loudly instead of hanging
            logger.exception("influxdb sink writer crashed")
            with self._cond:
                self._fatal = exc
                self._cond.notify_all()

    def _next_request(self) -> _Request | None:
        interval = self.config.flush_interval_s
        while not self._pending:
            if self._closing:
                return None
            now = time.monotonic()
            oldest = min((b.created for b in self._buffers.values()), default=None)
            if oldest is not None and now - oldest >= interval:
                for key, buf in list(self._buffers.items()):
                    if now - buf.created >= interval:
                        self._seal(*key)
                continue
            self._cond.wait(interval if oldest is None else interval - (now - oldest))
        self._current = self._pending.popleft()
        return self._current

    def _send(self, request: _Request) -> None:
        try:
            if request.db not in self._ensured:
                self._retrying(lambda: self._ensure(request.db))
            chunks = self._within_retention(request.rp, request.chunks)
            if chunks:
                self._write_chunks(request.db, request.rp, chunks)
        except DatabaseRefusedError as exc:
            # InfluxDB refused for good to create the database or its retention policies
            # (an invalid name, say): its lines are dead letters, the job goes on.
            lines = [ln for _, data, _ in request.chunks for ln in record_lines(data)]
            self.stats.add_dead_letters("database_refused", len(lines))
            self.dead_letters.write(
                db=request.db,
                rp=request.rp,
                reason="database_refused",
                status=exc.status,
                error=str(exc),
                lines=lines,
            )
        self._retention_log.maybe_log()

    def _ensure(self, db: str) -> None:
        try:
            ensure_database(self._client, db, self.config.tiers)
        except InfluxDBWriteError as exc:
            if exc.retriable:
                raise
            raise DatabaseRefusedError(str(exc), status=exc.status, retriable=False) from exc
        self._ensured.add(db)

    def _within_retention(self, rp: str, chunks: list[_Chunk]) -> list[_Chunk]:
        """Leave out the lines InfluxDB would drop as beyond ``rp``'s retention."""
        retention_ns = self._retention_ns.get(rp, 0)
        if not retention_ns:
            return chunks
        cutoff = time.time_ns() - retention_ns
        kept: list[_Chunk] = []
        dropped = 0
        for kg, data, points in chunks:
            body, lines, gone = drop_beyond_retention(data, cutoff)
            dropped += gone
            if gone == 0:
                kept.append((kg, data, points))
            elif lines:
                kept.append((kg, body, lines))
        if dropped:
            self._beyond_retention(rp, dropped)
        return kept

    def _beyond_retention(self, rp: str, points: int) -> None:
        self.stats.add_beyond_retention(rp, points)
        self._retention_log.add(rp, points)

    def _write_chunks(self, db: str, rp: str, chunks: list[_Chunk]) -> None:
        """Write ``chunks`` (those of partitions not revoked meanwhile); on a 400/413 bisect
        down to the rejected lines (dead letters), unless InfluxDB only dropped points beyond
        retention."""
        status, error, sent = self._retrying(lambda: self._attempt(db, rp, chunks))
        points = sum(c[2] for c in sent)
        if status == 0:
            self.stats.points_written += points
            return
        beyond = retention_only_drops(error)
        if beyond is not None:
            self.stats.points_written += max(0, points - beyond)
            self._beyond_retention(rp, beyond)
            return
        # record_lines: a string field value may hold a newline
        lines = [(kg, ln, 1) for kg, data, _ in sent for ln in record_lines(data)]
        if len(lines) <= 1:
            reason = classify_rejection(error)
            self.stats.add_dead_letters(reason, len(lines))
            self.dead_letters.write(
                db=db, rp=rp, reason=reason, status=status, error=error, lines=[c[1] for c in lines]
            )
            return
        half = len(lines) // 2
        logger.warning(
            "influxdb rejected a batch, bisecting db=%s rp=%s status=%s lines=%d error=%s",
            db,
            rp,
            status,
            len(lines),
            error[:200],
        )
        self._write_chunks(db, rp, lines[:half])
        self._write_chunks(db, rp, lines[half:])

    def _attempt(self, db: str, rp: str, chunks: list[_Chunk]) -> tuple[int, str, list[_Chunk]]:
        """One try at writing the chunks of partitions that are not fenced (revoked) now:
        ``(status, error, chunks sent)``; raises a retriable ``InfluxDBWriteError``."""
        with self._cond:
            live = [c for c in chunks if c[0] not in self._fenced]
            if not live:
                return 0, "", []
            self._attempt_seq += 1
            attempt = self._attempt_seq
            self._in_flight = frozenset(c[0] for c in live)
        try:
            status, error = self._write_once(db, rp, b"\n".join(c[1] for c in live))
        except InfluxDBWriteError as exc:
            if exc.unconfirmed:
                self._report_unconfirmed(attempt, exc)
            raise
        finally:
            with self._cond:
                self._in_flight = frozenset()
                self._cond.notify_all()
        return status, error, live

    def _write_once(self, db: str, rp: str, body: bytes) -> tuple[int, str]:
        """``(0, "")`` on success, ``(status, error)`` for a final rejection; raises a retriable
        ``InfluxDBWriteError`` otherwise."""
        if db not in self._ensured:
            self._ensure(db)
        self.stats.requests += 1
        resp = self._client.write(db, rp, body)
        code = resp.status_code
        if code in (200, 204):
            return 0, ""
        text = resp.text
        if code == 404 and "database not found" in text:
            self._ensured.discard(db)  # dropped behind our back: re-create, then retry
            raise InfluxDBWriteError(f"HTTP 404 {text[:200]}", status=code, retriable=True)
        if code in (400, 413):
            return code, text.strip()
        raise InfluxDBWriteError(
            f"HTTP {code} {text[:200]}", status=code, retriable=True, unconfirmed=code >= 500
        )

    def _retrying(self, fn: Callable[[], T]) -> T:
        retrying = Retrying(
            retry=retry_if_exception(_is_retriable),
            wait=wait_exponential(
                multiplier=self.config.retry_initial_s, max=self.config.retry_max_s
            )
            + wait_random(0, self.config.retry_initial_s),
            stop=lambda _state: self._abort.is_set(),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        try:
            result: T = retrying(fn)
        except InfluxDBWriteError as exc:
            if self._abort.is_set():
                raise SinkClosedError("influxdb sink closed while retrying") from exc
            raise
        if self.stats.blocked:
            logger.info("influxdb reachable again, resuming writes")
            self.stats.blocked = False
        return result

    def _before_sleep(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        self.stats.retries += 1
        self.stats.request_failures_retriable += 1
        self.stats.blocked = True
        self.stats.last_error = repr(exc)
        sleep = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            "influxdb unavailable, retrying attempt=%d sleep_s=%.2f error=%r",
            state.attempt_number,
            sleep,
            exc,
        )


def _drop_chunks(holder: _Buffer | _Request, key_groups: frozenset[int]) -> int:
    """Remove the chunks of ``key_groups`` (an emptied request stays: its sequence number
    still marks flushes); returns the points removed."""
    kept = [c for c in holder.chunks if c[0] not in key_groups]
    if len(kept) == len(holder.chunks):
        return 0
    dropped = holder.points - sum(c[2] for c in kept)
    holder.chunks = kept
    holder.points -= dropped
    holder.size = sum(len(c[1]) + 1 for c in kept)
    return dropped


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, MetricsflowError) and exc.retriable
