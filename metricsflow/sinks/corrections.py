"""Corrections: re-derive tier windows from InfluxDB (docs/windows.md, "Corrections").

A window operator that gets rows for a window whose state is gone (points beyond the allowed
lateness, or a corrected finer window whose coarse window is gone) sends a
:class:`CorrectionRequest` down its channel to the sink task. The sink operator hands it to
this service *after* every element that preceded it in the channel (the late points' raw
lines, earlier emissions of those windows) has been given to the InfluxDB sink.

One thread executes the requests, oldest first, in batches:

1. take every queued request (up to ``max_batch_requests``);
2. seal the sink's buffers and wait until InfluxDB acknowledged them: the late points' own raw
   writes, and every earlier (stale) emission of the windows, are then durable;
3. per (database, measurement, source tier, tier), merge the windows into a few time ranges
   and run one InfluxQL query per range: the finest tier from the raw tier
   (``count/sum/min/max/first/last(f) ... GROUP BY time(<tier>), *``), a coarser tier from the
   next finer tier's stored rows (``sum(count_f), sum(sum_f), min(min_f), max(max_f),
   first(first_f), last(last_f)``), so a coarse window never depends on raw data older than
   the raw tier's retention;
4. post the rows, per key group and tier, to the :class:`CorrectionMailbox`; the operator of
   that key group emits them (to the sink, *after* everything it emitted before, so a
   correction is never overwritten by the stale version it replaces) and hands them to the
   next tier, which replaces its stored partial or asks for its own correction.

Bounded: :meth:`CorrectionService.has_capacity` is part of the Kafka readers' admission, so a
backlog of ``max_queued`` requests stops reading (nothing is lost: requests already in the
channels are still taken). Retriable InfluxDB errors are retried with backoff, forever;
others are logged and counted, and the request stays pending in the operator's state (asked
again after the next restore).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from metricsflow.errors import MetricsflowError
from metricsflow.model.lineprotocol import parse_line, series_key
from metricsflow.model.tiers import RAW_TIER
from metricsflow.runtime.records import (
    AggregateBatch,
    CorrectionRequest,
    CorrectionResult,
    split_window_key,
    window_key,
)
from metricsflow.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig
from metricsflow.sinks.influxdb_client import InfluxDBClient, quote_ident
from metricsflow.windows.corrections import CorrectionMailbox

logger = logging.getLogger(__name__)

_NS_PER_S = 1_000_000_000


@dataclass
class CorrectionStats:
    """Counters of the correction service (monotonic; the worker's ``/metrics``)."""

    requests: int = 0
    windows_requested: int = 0
    queries: int = 0
    rows: int = 0
    failures: int = 0
    retries: int = 0
    last_error: str = ""


@dataclass
class _Group:
    """The windows of one (db, measurement, source tier, tier) wanted by one batch."""

    fields: set[str] = field(default_factory=set)
    starts: set[int] = field(default_factory=set)
    wanted: dict[tuple[str, int], list[tuple[int, int, int]]] = field(default_factory=dict)
    """(window key, window start) -> [(key group, seq, created_ns)]"""


class CorrectionService:
    """Executes correction requests on one thread (module docstring)."""

    def __init__(
        self,
        config: InfluxDBSinkConfig,
        sink: InfluxDBSink,
        mailbox: CorrectionMailbox,
        *,
        max_queued: int = 64,
        max_batch_requests: int = 512,
        range_gap_windows: int = 8,
        max_range_windows: int = 1440,
    ) -> None:
        self.config = config
        self.sink = sink
        self.mailbox = mailbox
        self.max_queued = max_queued
        self.max_batch_requests = max_batch_requests
        self.range_gap_windows = range_gap_windows
        self.max_range_windows = max_range_windows
        self.stats = CorrectionStats()
        self._client = InfluxDBClient(config)
        self._cond = threading.Condition()
        self._queue: deque[CorrectionRequest] = deque()
        self._queued_windows = 0
        self._busy_windows = 0
        self._closing = False
        self._thread: threading.Thread | None = None
        self._measurements: dict[str, str] = {}

    # ------------------------------------------------------------------ caller side
    def open(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="corrections", daemon=True)
            self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.config.request_timeout_s + 5)
        self._client.close()

    def submit(self, request: CorrectionRequest) -> None:
        """Queue ``request`` (the sink already holds everything that preceded it)."""
        with self._cond:
            self._queue.append(request)
            self._queued_windows += len(request)
            self.stats.requests += 1
            self.stats.windows_requested += len(request)
            self._cond.notify_all()

    def has_capacity(self) -> bool:
        """``False`` while ``max_queued`` requests wait: the Kafka readers pause."""
        return len(self._queue) < self.max_queued

    @property
    def backlog(self) -> int:
        """(key, window) pairs requested and not yet handed back to their operator."""
        return self._queued_windows + self._busy_windows + self.mailbox.rows

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closing:
                    self._cond.wait(0.5)
                if self._closing:
                    return
                batch = [
                    self._queue.popleft()
                    for _ in range(min(len(self._queue), self.max_batch_requests))
                ]
                windows = sum(len(r) for r in batch)
                self._queued_windows -= windows
                self._busy_windows = windows
            try:
                self._execute(batch)
            except _ClosingError:
                return
            except Exception as exc:  # a bug or a refused query: visible, and pending in state
                self.stats.failures += 1
                self.stats.last_error = repr(exc)
                logger.exception("corrections failed requests=%d", len(batch))
            finally:
                self._busy_windows = 0

    def _execute(self, batch: list[CorrectionRequest]) -> None:
        # everything the sink received before these requests: the late points' raw lines and
        # every earlier emission of their windows, acknowledged before we read
        marker = self.sink.flush_marker()
        while True:
            try:
                self.sink.wait_flushed(marker, timeout_s=1.0)
                break
            except TimeoutError:
                if self._closing:
                    raise _ClosingError() from None
        groups = self._group(batch)
        results: dict[tuple[int, str], dict[tuple[str, int], tuple[float, ...]]] = {}
        meta: dict[tuple[int, str], tuple[int, int, int]] = {}
        for (db, measurement, source, tier, window_ns), group in groups.items():
            found = self._query_group(db, measurement, source, tier, window_ns, group)
            for (key, start), owners in group.wanted.items():
                row = found.get((key, start))
                for kg, seq, created in owners:
                    slot = results.setdefault((kg, tier), {})
                    old = meta.get((kg, tier), (window_ns, 0, created))
                    meta[(kg, tier)] = (window_ns, max(old[1], seq), min(old[2], created))
                    slot[(key, start)] = row if row is not None else ()
        for (kg, tier), rows in sorted(results.items()):
            window_ns, seq, created = meta[(kg, tier)]
            self.mailbox.put(_result(kg, tier, window_ns, seq, created, rows))
            self.stats.rows += sum(1 for r in rows.values() if r)

    def _group(
        self, batch: list[CorrectionRequest]
    ) -> dict[tuple[str, str, str, str, int], _Group]:
        groups: dict[tuple[str, str, str, str, int], _Group] = {}
        for request in batch:
            starts = request.window_start_ns.tolist()
            for k, start in zip(request.key_idx.tolist(), starts, strict=True):
                key = request.keys[k]
                db, series, field_key = split_window_key(key)
                measurement = self._measurement(series)
                gkey = (db, measurement, request.source_tier, request.tier, request.window_ns)
                group = groups.setdefault(gkey, _Group())
                group.fields.add(field_key)
                group.starts.add(start)
                group.wanted.setdefault((key, start), []).append(
                    (request.key_group, request.seq, request.created_ns)
                )
        return groups

    def _measurement(self, series: str) -> str:
        name = self._measurements.get(series)
        if name is None:
            point = parse_line(series + " x=1 0")
            name = point.measurement if point is not None else series
            if len(self._measurements) > 100_000:
                self._measurements.clear()
            self._measurements[series] = name
        return name

    def ranges(self, starts: set[int], window_ns: int) -> Iterator[tuple[int, int]]:
        """Merge window starts into ``[lo, hi)`` ranges: neighbours closer than
        ``range_gap_windows`` share a range, no range spans more than ``max_range_windows``."""
        ordered = sorted(starts)
        lo = hi = ordered[0]
        for start in ordered[1:]:
            gap = (start - hi) // window_ns
            if gap > self.range_gap_windows or (start - lo) // window_ns >= self.max_range_windows:
                yield lo, hi + window_ns
                lo = start
            hi = start
        yield lo, hi + window_ns

    def _query_group(
        self, db: str, measurement: str, source: str, tier: str, window_ns: int, group: _Group
    ) -> dict[tuple[str, int], tuple[float, ...]]:
        fields = sorted(group.fields)
        selects: list[str] = []
        for i, f in enumerate(fields):
            if source == RAW_TIER:
                q = quote_ident(f)
                parts = [f"count({q})", f"sum({q})", f"min({q})", f"max({q})"]
                parts += [f"first({q})", f"last({q})"]
            else:
                parts = [f"sum({quote_ident('count_' + f)})", f"sum({quote_ident('sum_' + f)})"]
                parts += [f"min({quote_ident('min_' + f)})", f"max({quote_ident('max_' + f)})"]
                parts += [f"first({quote_ident('first_' + f)})"]
                parts += [f"last({quote_ident('last_' + f)})"]
            selects += [f'{p} AS "a{i}_{j}"' for j, p in enumerate(parts)]
        interval = f"{window_ns // _NS_PER_S}s" if window_ns % _NS_PER_S == 0 else f"{window_ns}ns"
        found: dict[tuple[str, int], tuple[float, ...]] = {}
        for lo, hi in self.ranges(group.starts, window_ns):
            q = (
                f"SELECT {', '.join(selects)} FROM {quote_ident(source)}.{quote_ident(measurement)}"
                f" WHERE time >= {lo} AND time < {hi} GROUP BY time({interval}), * fill(none)"
            )
            for tags, columns, values in self._query(db, q):
                skey = series_key(measurement, tuple(sorted((k, v) for k, v in tags if v)))
                index = {c: n for n, c in enumerate(columns)}
                for row in values:
                    start = int(row[index["time"]])  # type: ignore[call-overload]
                    for i, f in enumerate(fields):
                        key = window_key(db, skey, f)
                        if (key, start) not in group.wanted:
                            continue
                        agg = [row[index[f"a{i}_{j}"]] for j in range(6)]
                        if not agg[0] or any(a is None for a in agg):
                            continue
                        found[(key, start)] = tuple(float(a) for a in agg)  # type: ignore[arg-type]
        return found

    def _query(
        self, db: str, q: str
    ) -> Iterator[tuple[list[tuple[str, str]], list[str], list[list[object]]]]:
        delay = self.config.retry_initial_s
        while True:
            try:
                self.stats.queries += 1
                results = self._client.query(q, db=db, epoch="ns")
                break
            except MetricsflowError as exc:
                if not exc.retriable or self._closing:
                    raise
                self.stats.retries += 1
                self.stats.last_error = repr(exc)
                logger.warning("correction query failed, retrying db=%s error=%r", db, exc)
                time.sleep(delay)
                delay = min(delay * 2, self.config.retry_max_s)
        for result in results:
            for series in result.get("series", []):  # type: ignore[attr-defined]
                tags = list((series.get("tags") or {}).items())
                yield tags, list(series["columns"]), list(series.get("values", []))


class _ClosingError(Exception):
    pass


def _result(
    kg: int,
    tier: str,
    window_ns: int,
    seq: int,
    created_ns: int,
    rows: dict[tuple[str, int], tuple[float, ...]],
) -> CorrectionResult:
    found = [(k, s, r) for (k, s), r in rows.items() if r]
    empty = [(k, s) for (k, s), r in rows.items() if not r]
    keys = tuple(k for k, _, _ in found)
    starts = np.array([s for _, s, _ in found], dtype=np.int64)
    agg = np.array([r for _, _, r in found], dtype=np.float64).reshape(len(found), 6)
    batch = AggregateBatch(
        key_group=kg,
        tier=tier,
        window_ns=window_ns,
        keys=keys,
        key_idx=np.arange(len(found), dtype=np.int32),
        window_start_ns=starts,
        count=agg[:, 0].astype(np.int64),
        sum=agg[:, 1].copy(),
        min=agg[:, 2].copy(),
        max=agg[:, 3].copy(),
        first_ts_ns=starts.copy(),  # not stored by InfluxDB's tiers: the window start
        first=agg[:, 4].copy(),
        last_ts_ns=starts + (window_ns - 1),
        last=agg[:, 5].copy(),
    )
    return CorrectionResult(
        key_group=kg,
        tier=tier,
        seq=seq,
        created_ns=created_ns,
        batch=batch,
        empty_keys=tuple(k for k, _ in empty),
        empty_window_start_ns=tuple(s for _, s in empty),
    )
