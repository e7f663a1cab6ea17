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
   the raw tier's retention; counter and sketched fields read samples and sketch strings
   instead (correction_rows.py);
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

from metricsflow.errors import MetricsflowError
from metricsflow.model.fieldkinds import FieldKinds
from metricsflow.model.lineprotocol import parse_line, series_key
from metricsflow.model.tiers import RAW_TIER
from metricsflow.runtime.records import (
    CorrectionRequest,
    CorrectionResult,
    split_window_key,
    window_key,
)
from metricsflow.sinks.correction_rows import CorrectedRow, build_batch, rows_from_samples
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
    by_key: dict[str, list[tuple[int, int, int]]] = field(default_factory=dict)
    """window key -> owners (a counter's next window goes to the owners of the key)"""
    counter: bool | None = None
    """whether the fields are counters, as kinds declared in the log say (``None``: the
    patterns decide)"""


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
        field_kinds: FieldKinds | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self.mailbox = mailbox
        self.max_queued = max_queued
        self.max_batch_requests = max_batch_requests
        self.range_gap_windows = range_gap_windows
        self.max_range_windows = max_range_windows
        self.field_kinds = field_kinds
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
        results: dict[tuple[int, str], dict[tuple[str, int], CorrectedRow | None]] = {}
        meta: dict[tuple[int, str], tuple[int, int, int]] = {}
        for (db, measurement, source, tier, window_ns, _), group in groups.items():
            found = self._query_group(db, measurement, source, tier, window_ns, group)
            extra = [(ks, group.by_key[ks[0]]) for ks in found if ks not in group.wanted]
            for (key, start), owners in [*group.wanted.items(), *extra]:
                row = found.get((key, start))
                for kg, seq, created in owners:
                    slot = results.setdefault((kg, tier), {})
                    old = meta.get((kg, tier), (window_ns, 0, created))
                    meta[(kg, tier)] = (window_ns, max(old[1], seq), min(old[2], created))
                    slot[(key, start)] = row
        for (kg, tier), rows in sorted(results.items()):
            window_ns, seq, created = meta[(kg, tier)]
            self.mailbox.put(_result(kg, tier, window_ns, seq, created, rows))
            self.stats.rows += sum(1 for r in rows.values() if r)

    def _group(
        self, batch: list[CorrectionRequest]
    ) -> dict[tuple[str, str, str, str, int, bool | None], _Group]:
        groups: dict[tuple[str, str, str, str, int, bool | None], _Group] = {}
        for request in batch:
            starts = request.window_start_ns.tolist()
            flags: list[bool | None] = (
                [None] * len(starts) if request.counter is None else request.counter.tolist()
            )
            for k, start, counter in zip(request.key_idx.tolist(), starts, flags, strict=True):
                key = request.keys[k]
                db, series, field_key = split_window_key(key)
                measurement = self._measurement(series)
                gkey = (
                    db,
                    measurement,
                    request.source_tier,
                    request.tier,
                    request.window_ns,
                    counter,
                )
                group = groups.setdefault(gkey, _Group(counter=counter))
                group.fields.add(field_key)
                group.starts.add(start)
                owner = (request.key_group, request.seq, request.created_ns)
                group.wanted.setdefault((key, start), []).append(owner)
                group.by_key.setdefault(key, []).append(owner)
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

    def _kind(self, measurement: str, field_key: str) -> tuple[bool, bool]:
        kinds = self.field_kinds
        if kinds is None:
            return False, False
        return kinds.is_counter(measurement, field_key), kinds.has_sketch(measurement, field_key)

    def _query_group(
        self, db: str, measurement: str, source: str, tier: str, window_ns: int, group: _Group
    ) -> dict[tuple[str, int], CorrectedRow]:
        fields = sorted(group.fields)
        kinds = {f: self._kind(measurement, f) for f in fields}
        if group.counter is not None:  # declared in the log (metricsflow.windows.declared)
            kinds = {f: (group.counter, kinds[f][1] and not group.counter) for f in fields}
        if source == RAW_TIER:
            special = [f for f in fields if any(kinds[f])]
            fields = [f for f in fields if not any(kinds[f])]
        else:
            special = []
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
                # every field: a finer window of a counter declared in the log may have been
                # written before the declaration, without increase_ (windows/declared.py)
                parts += [f"sum({quote_ident('increase_' + f)})"]
                parts += [f"sum({quote_ident('resets_' + f)})"]
                parts += [f"count({quote_ident('increase_' + f)})"]
                parts += [f"count({quote_ident('count_' + f)})"]
            selects += [f'{p} AS "a{i}_{j}"' for j, p in enumerate(parts)]
        interval = f"{window_ns // _NS_PER_S}s" if window_ns % _NS_PER_S == 0 else f"{window_ns}ns"
        found: dict[tuple[str, int], CorrectedRow] = {}
        src = f"{quote_ident(source)}.{quote_ident(measurement)}"
        for lo, hi in self.ranges(group.starts, window_ns) if fields else ():
            q = (
                f"SELECT {', '.join(selects)} FROM {src}"
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
                        corrected = CorrectedRow(tuple(float(a) for a in agg))  # type: ignore[arg-type]
                        if source != RAW_TIER:
                            _coarse_counter(
                                corrected, [row[index[f"a{i}_{j}"]] for j in (6, 7, 8, 9)]
                            )
                        found[(key, start)] = corrected
        if source != RAW_TIER:
            sketched = [f for f in fields if kinds[f][1]]
            if sketched:
                self._query_sketches(db, measurement, source, window_ns, group, sketched, found)
        for f in special:
            self._query_samples(db, measurement, window_ns, group, f, kinds[f], found)
        return found

    def _series_rows(
        self, db: str, measurement: str, q: str
    ) -> Iterator[tuple[str, list[str], list[list[object]]]]:
        for tags, columns, values in self._query(db, q):
            skey = series_key(measurement, tuple(sorted((k, v) for k, v in tags if v)))
            yield skey, columns, values

    def _query_sketches(
        self,
        db: str,
        measurement: str,
        source: str,
        window_ns: int,
        group: _Group,
        fields: list[str],
        found: dict[tuple[str, int], CorrectedRow],
    ) -> None:
        """Coarser tier: the finer rows' ``sketch_f`` strings, merged per coarse window."""
        cols = ", ".join(quote_ident("sketch_" + f) for f in fields)
        src = f"{quote_ident(source)}.{quote_ident(measurement)}"
        for lo, hi in self.ranges(group.starts, window_ns):
            q = f"SELECT {cols} FROM {src} WHERE time >= {lo} AND time < {hi} GROUP BY *"
            for skey, columns, values in self._series_rows(db, measurement, q):
                index = {c: n for n, c in enumerate(columns)}
                for row in values:
                    t = int(row[index["time"]])  # type: ignore[call-overload]
                    start = t - t % window_ns
                    for f in fields:
                        text = row[index["sketch_" + f]]
                        found_row = found.get((window_key(db, skey, f), start))
                        if isinstance(text, str) and found_row is not None:
                            found_row.encoded.append(text)

    def _query_samples(
        self,
        db: str,
        measurement: str,
        window_ns: int,
        group: _Group,
        f: str,
        kind: tuple[bool, bool],
        found: dict[tuple[str, int], CorrectedRow],
    ) -> None:
        """Finest tier of a counter or sketched field: every row from the raw samples."""
        counter, sketched = kind
        q_f = quote_ident(f)
        src = f"{quote_ident(RAW_TIER)}.{quote_ident(measurement)}"
        wanted: dict[str, set[int]] = {}
        for key, start in group.wanted:
            if split_window_key(key)[2] == f:
                wanted.setdefault(key, set()).add(start)
        for lo, hi in self.ranges(group.starts, window_ns):
            previous: dict[str, float] = {}
            end = hi
            if counter:
                q = f"SELECT last({q_f}) FROM {src} WHERE time < {lo} GROUP BY *"
                for skey, _, values in self._series_rows(db, measurement, q):
                    if values and values[0][1] is not None:
                        previous[window_key(db, skey, f)] = float(values[0][1])  # type: ignore[arg-type]
                q = f"SELECT first({q_f}) FROM {src} WHERE time >= {hi} GROUP BY *"
                for skey, _, values in self._series_rows(db, measurement, q):
                    if window_key(db, skey, f) in wanted and values:
                        t = int(values[0][0])  # type: ignore[call-overload]
                        end = max(end, t - t % window_ns + window_ns)
            samples: dict[str, list[tuple[int, float]]] = {}
            q = f"SELECT {q_f} FROM {src} WHERE time >= {lo} AND time < {end} GROUP BY *"
            for skey, _, values in self._series_rows(db, measurement, q):
                key = window_key(db, skey, f)
                if key in wanted:
                    samples[key] = [
                        (int(t), float(v))  # type: ignore[call-overload, arg-type]
                        for t, v in values
                        if v is not None
                    ]
            for key, starts in wanted.items():
                in_range = {s for s in starts if lo <= s < hi}
                if not in_range:
                    continue
                rows = rows_from_samples(
                    samples.get(key, []),
                    previous.get(key),
                    in_range,
                    window_ns,
                    counter=counter,
                    sketched=sketched,
                )
                for start, row in rows.items():
                    found[(key, start)] = row

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


def _coarse_counter(corrected: CorrectedRow, parts: list[object]) -> None:
    """A coarser window has an increase when every finer window in it has one (a counter
    declared in the log straddling its switch has none: windows/declared.py)."""
    inc, resets, with_increase, rows = parts
    if inc is None or not rows or with_increase != rows:
        return
    corrected.increase = float(inc)  # type: ignore[arg-type]
    corrected.resets = int(resets) if resets is not None else 0  # type: ignore[call-overload]


def _result(
    kg: int,
    tier: str,
    window_ns: int,
    seq: int,
    created_ns: int,
    rows: dict[tuple[str, int], CorrectedRow | None],
) -> CorrectionResult:
    found = [(k, s, r) for (k, s), r in rows.items() if r is not None]
    empty = [(k, s) for (k, s), r in rows.items() if r is None]
    return CorrectionResult(
        key_group=kg,
        tier=tier,
        seq=seq,
        created_ns=created_ns,
        batch=build_batch(kg, tier, window_ns, found),
        empty_keys=tuple(k for k, _ in empty),
        empty_window_start_ns=tuple(s for _, s in empty),
    )
