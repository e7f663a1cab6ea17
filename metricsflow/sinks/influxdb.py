"""The InfluxDB sink: raw tier + one retention policy per downsampled tier, v1 write API.

Layout (design.md section 4, ``metricsflow/windows/base.py``): the database is the one the
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
* 400 (``field type conflict``, ``partial write``, points beyond retention, unparseable) and
  413: the request is split in halves and each half re-sent, down to single lines. Re-sending
  lines InfluxDB already accepted is an idempotent overwrite, so this isolates exactly the
  rejected lines, which go to the dead-letter file with InfluxDB's message, counted by
  reason. Never a retry loop, never a silent loss.
"""

from __future__ import annotations

import fnmatch
import gzip
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_exponential,
    wait_random,
)

from metricsflow.errors import ConfigurationError, MetricsflowError
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch
from metricsflow.sinks.base import Sink, SinkStats
from metricsflow.sinks.deadletter import DeadLetterFile, classify_rejection
from metricsflow.sinks.lines import aggregate_lines
from metricsflow.windows.base import DEFAULT_TIERS, RAW_TIER, TierSpec

logger = logging.getLogger(__name__)

T = TypeVar("T")


class InfluxDBWriteError(MetricsflowError):
    """A write or query failed; ``retriable`` says whether trying again may help."""

    def __init__(self, message: str, *, status: int = 0, retriable: bool) -> None:
        super().__init__(message, retriable=retriable)
        self.status = status


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

    def __post_init__(self) -> None:
        if self.batch_max_points < 1 or self.batch_max_bytes < 1:
            raise ConfigurationError("influxdb batch limits must be positive")
        if self.max_pending_requests < 1:
            raise ConfigurationError("influxdb max_pending_requests must be >= 1")
        if not self.tiers or self.tiers[0].name != RAW_TIER:
            raise ConfigurationError(f"the first tier must be {RAW_TIER!r}")


_GO_DURATION = re.compile(r"(\d+)(ns|us|µs|ms|h|m|s)")
_GO_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def go_duration_ns(text: str) -> int:
    """``"720h0m0s"`` (as ``SHOW RETENTION POLICIES`` prints it) -> ns; ``"0s"`` = INF = 0."""
    return sum(int(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(text))


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_duration(tier: TierSpec) -> str:
    ns = tier.retention_ns
    return "INF" if ns == 0 else f"{ns // 1_000_000_000}s"


@dataclass(slots=True)
class _Request:
    seq: int
    db: str
    rp: str
    chunks: list[bytes]
    points: int
    size: int
    created: float


class _Buffer:
    __slots__ = ("chunks", "created", "points", "size")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.points = 0
        self.size = 0
        self.created = time.monotonic()


class InfluxDBClient:
    """The few v1 HTTP calls the sink needs (``/query``, ``/write``); no retries here."""

    def __init__(self, config: InfluxDBSinkConfig) -> None:
        self.config = config
        auth = (config.username, config.password or "") if config.username else None
        self._http = httpx.Client(
            base_url=config.url.rstrip("/"), timeout=config.request_timeout_s, auth=auth
        )

    def close(self) -> None:
        self._http.close()

    def query(self, q: str, db: str | None = None) -> list[dict[str, object]]:
        """Run InfluxQL (POST /query); returns the statement results; raises on any error."""
        params = {"q": q, **({"db": db} if db else {})}
        try:
            resp = self._http.post("/query", data=params)
        except httpx.TransportError as exc:
            raise InfluxDBWriteError(f"query failed: {exc!r}", retriable=True) from exc
        if resp.status_code >= 500 or resp.status_code in (401, 403):
            raise InfluxDBWriteError(
                f"query {q!r}: HTTP {resp.status_code} {resp.text[:200]}",
                status=resp.status_code,
                retriable=True,
            )
        body = resp.json()
        results: list[dict[str, object]] = body.get("results", [])
        for result in results:
            if "error" in result:
                raise InfluxDBWriteError(f"query {q!r}: {result['error']}", retriable=False)
        if resp.status_code != 200:
            raise InfluxDBWriteError(
                f"query {q!r}: HTTP {resp.status_code} {body}",
                status=resp.status_code,
                retriable=False,
            )
        return results

    def write(self, db: str, rp: str, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.config.gzip_level:
            body = gzip.compress(body, compresslevel=self.config.gzip_level)
            headers["Content-Encoding"] = "gzip"
        try:
            return self._http.post(
                "/write",
                params={"db": db, "rp": rp, "precision": "n"},
                content=body,
                headers=headers,
            )
        except httpx.TransportError as exc:
            raise InfluxDBWriteError(f"write failed: {exc!r}", retriable=True) from exc


def ensure_database(client: InfluxDBClient, db: str, tiers: Sequence[TierSpec]) -> None:
    """Create ``db`` and one retention policy per tier (``raw`` DEFAULT); alter a policy whose
    duration differs from the tier's retention. Idempotent."""
    client.query(f"CREATE DATABASE {quote_ident(db)}")
    results = client.query(f"SHOW RETENTION POLICIES ON {quote_ident(db)}")
    existing: dict[str, tuple[int, bool]] = {}
    for result in results:
        for series in result.get("series", []):  # type: ignore[attr-defined]
            columns = series["columns"]
            for row in series.get("values", []):
                rec = dict(zip(columns, row, strict=False))
                existing[str(rec["name"])] = (
                    go_duration_ns(str(rec["duration"])),
                    bool(rec["default"]),
                )
    for tier in tiers:
        default = " DEFAULT" if tier.name == RAW_TIER else ""
        duration = influxql_duration(tier)
        name = quote_ident(tier.name)
        if tier.name not in existing:
            client.query(
                f"CREATE RETENTION POLICY {name} ON {quote_ident(db)} DURATION {duration} "
                f"REPLICATION 1{default}"
            )
            logger.info("created retention policy db=%s rp=%s duration=%s", db, tier.name, duration)
        elif existing[tier.name][0] != tier.retention_ns or (
            default and not existing[tier.name][1]
        ):
            client.query(
                f"ALTER RETENTION POLICY {name} ON {quote_ident(db)} DURATION {duration}{default}"
            )
            logger.info("altered retention policy db=%s rp=%s duration=%s", db, tier.name, duration)


class InfluxDBSink(Sink):
    """Buffers lines per ``(db, rp)`` and writes them from one thread (module docstring)."""

    def __init__(self, config: InfluxDBSinkConfig) -> None:
        self.config = config
        self.stats = SinkStats()
        self.dead_letters = DeadLetterFile(config.dead_letter_dir)
        self._client = InfluxDBClient(config)
        self._tier_names = {t.name for t in config.tiers}
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
        self._add(batch.database, RAW_TIER, batch.lines, batch.point_count)

    def write_aggregates(self, batch: AggregateBatch) -> None:
        if batch.tier not in self._tier_names:
            raise ConfigurationError(f"tier {batch.tier!r} is not configured in the sink")
        for db, lines in aggregate_lines(batch).items():
            self._add(db, batch.tier, b"\n".join(lines), len(lines))

    def _add(self, db: str, rp: str, chunk: bytes, points: int) -> None:
        self.stats.points_in += points
        if not self.is_allowed(db):
            self.stats.add_dead_letters("database_not_allowed", points)
            self.dead_letters.write(
                db=db,
                rp=rp,
                reason="database_not_allowed",
                status=0,
                error=f"database {db!r} is not allowed by the allow-list",
                lines=chunk.split(b"\n"),
            )
            return
        cfg = self.config
        with self._cond:
            self._check_usable()
            buf = self._buffers.get((db, rp))
            if buf is None:
                buf = self._buffers[(db, rp)] = _Buffer()
            buf.chunks.append(chunk)
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
        return self._pending.popleft()

    def _send(self, request: _Request) -> None:
        body = b"\n".join(request.chunks)
        if request.db not in self._ensured:
            self._retrying(lambda: self._ensure(request.db))
        self._write_lines(request.db, request.rp, body, request.points)

    def _ensure(self, db: str) -> None:
        ensure_database(self._client, db, self.config.tiers)
        self._ensured.add(db)

    def _write_lines(self, db: str, rp: str, body: bytes, points: int) -> None:
        """Write ``body``; on a 400/413 bisect down to the rejected lines (dead letters)."""
        status, error = self._retrying(lambda: self._write_once(db, rp, body))
        if status == 0:
            self.stats.points_written += points
            return
        lines = [ln for ln in body.split(b"\n") if ln]
        if len(lines) <= 1:
            reason = classify_rejection(error)
            self.stats.add_dead_letters(reason, len(lines))
            self.dead_letters.write(
                db=db, rp=rp, reason=reason, status=status, error=error, lines=lines
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
        self._write_lines(db, rp, b"\n".join(lines[:half]), half)
        self._write_lines(db, rp, b"\n".join(lines[half:]), len(lines) - half)

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
        raise InfluxDBWriteError(f"HTTP {code} {text[:200]}", status=code, retriable=True)

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


def _is_retriable(exc: BaseException) -> bool:
    return isinstance(exc, MetricsflowError) and exc.retriable
