"""The InfluxDB sink against the real InfluxDB 1.6.7 server (tests/conftest.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.model.tiers import DEFAULT_TIERS, TierSpec
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, window_key
from metricsflow.sinks.deadletter import read_dead_letters
from metricsflow.sinks.influxdb import InfluxDBSink, InfluxDBSinkConfig, ensure_database

pytestmark = pytest.mark.integration

NOW_NS = (time.time_ns() // 60_000_000_000) * 60_000_000_000 - 600_000_000_000


def query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    resp = httpx.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"}, timeout=10)
    resp.raise_for_status()
    result = resp.json()["results"][0]
    assert "error" not in result, result
    return list(result.get("series", []))


def rows(url: str, db: str, q: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for series in query(url, db, q):
        for values in series.get("values", []):
            out.append(
                {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=False))}
            )
    return out


SinkFactory = Callable[..., InfluxDBSink]


@pytest.fixture
def sink_factory(influxdb_server: InfluxDBServer, tmp_path: Path) -> Iterator[SinkFactory]:
    sinks: list[InfluxDBSink] = []

    def make(**overrides: Any) -> InfluxDBSink:
        config = InfluxDBSinkConfig(
            url=influxdb_server.url,
            dead_letter_dir=tmp_path / "dead-letter",
            flush_interval_s=0.2,
            retry_max_s=1.0,
            **overrides,
        )
        sink = InfluxDBSink(config)
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close(flush=False)


def raw(db: str, *lines: str) -> RawLinesBatch:
    return RawLinesBatch(0, db, "\n".join(lines).encode(), len(lines))


def one_aggregate_row(db: str, tier: str = "1m") -> AggregateBatch:
    key = window_key(db, "cpu,host=a", "usage")
    return AggregateBatch(
        key_group=0,
        tier=tier,
        window_ns=60_000_000_000,
        keys=(key,),
        key_idx=np.array([0], dtype=np.int32),
        window_start_ns=np.array([NOW_NS], dtype=np.int64),
        count=np.array([3], dtype=np.int64),
        sum=np.array([6.5]),
        min=np.array([1.0]),
        max=np.array([3.5]),
        first_ts_ns=np.array([NOW_NS + 1], dtype=np.int64),
        first=np.array([1.0]),
        last_ts_ns=np.array([NOW_NS + 3], dtype=np.int64),
        last=np.array([2.0]),
    )


def test_ensure_database_creates_one_retention_policy_per_tier_with_raw_as_default(
    influxdb_server: InfluxDBServer, sink_factory: SinkFactory
) -> None:
    db = f"mf_schema_{time.time_ns()}"
    sink = sink_factory()
    sink.write_raw(raw(db, f"m v=1 {NOW_NS}"))
    sink.flush(30)
    policies = rows(influxdb_server.url, db, f'SHOW RETENTION POLICIES ON "{db}"')
    by_name = {p["name"]: p for p in policies}
    assert {"raw", "1m", "1h", "1d"} <= set(by_name)
    assert by_name["raw"]["default"] is True
    assert by_name["raw"]["duration"] == "168h0m0s"
    assert by_name["1m"]["duration"] == "720h0m0s"
    assert by_name["1d"]["duration"] == "0s"
    httpx.post(f"{influxdb_server.url}/query", data={"q": f'DROP DATABASE "{db}"'})


def test_ensure_database_alters_a_policy_whose_duration_changed(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
) -> None:
    db = influx_database_factory()
    sink = sink_factory()
    ensure_database(sink._client, db, DEFAULT_TIERS)
    tiers = (*DEFAULT_TIERS[:1], TierSpec("1m", "1m", "60d"), *DEFAULT_TIERS[2:])
    ensure_database(sink._client, db, tiers)
    ensure_database(sink._client, db, tiers)  # idempotent
    policies = {p["name"]: p for p in rows(influxdb_server.url, db, "SHOW RETENTION POLICIES")}
    assert policies["1m"]["duration"] == "1440h0m0s"


def test_raw_lines_and_tier_rows_are_written_with_continuous_query_field_names(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
) -> None:
    db = influx_database_factory()
    sink = sink_factory()
    sink.write_raw(raw(db, f"cpu,host=a usage=1 {NOW_NS + 1}", f'cpu,host=a s="x" {NOW_NS + 2}'))
    sink.write_aggregates(one_aggregate_row(db))
    sink.flush(30)
    assert sink.stats.points_written == 3
    raw_rows = rows(influxdb_server.url, db, 'SELECT * FROM "raw"."cpu"')
    assert [(r["time"], r["usage"], r["s"]) for r in raw_rows] == [
        (NOW_NS + 1, 1.0, None),
        (NOW_NS + 2, None, "x"),
    ]
    tier = rows(influxdb_server.url, db, 'SELECT * FROM "1m"."cpu" GROUP BY *')
    assert tier == [
        {
            "host": "a",
            "time": NOW_NS,
            "count_usage": 3,
            "sum_usage": 6.5,
            "min_usage": 1.0,
            "max_usage": 3.5,
            "mean_usage": 6.5 / 3,
            "first_usage": 1.0,
            "last_usage": 2.0,
        }
    ]


def test_a_field_type_conflict_dead_letters_only_the_conflicting_line(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    db = influx_database_factory()
    sink = sink_factory()
    good = [f"m,k=a v=1.5 {NOW_NS + i}" for i in range(10)]
    bad = f"m,k=a v=7i {NOW_NS + 100}"
    sink.write_raw(raw(db, *good[:5], bad, *good[5:]))
    sink.flush(30)
    assert sink.stats.dead_letter_points == {"field_type_conflict": 1}
    assert len(rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m"')) == 10
    records = read_dead_letters(tmp_path / "dead-letter")
    assert [r["lines"] for r in records] == [[bad]]
    assert records[0]["reason"] == "field_type_conflict"
    assert records[0]["status"] == 400


def test_a_partial_write_dead_letters_the_unparseable_line_and_keeps_the_rest(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    db = influx_database_factory()
    sink = sink_factory()
    sink.write_raw(raw(db, f"m v=1 {NOW_NS}", f"m v=oops {NOW_NS + 2}", f"m v=2 {NOW_NS + 1}"))
    sink.flush(30)
    assert sum(sink.stats.dead_letter_points.values()) == 1
    assert len(rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m"')) == 2
    assert read_dead_letters(tmp_path / "dead-letter")[0]["lines"] == [f"m v=oops {NOW_NS + 2}"]


def test_databases_outside_the_allow_list_are_dead_lettered_not_created(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
) -> None:
    sink = sink_factory(database_allowlist=("prod_*",))
    name = f"other_{time.time_ns()}"
    sink.write_raw(raw(name, f"m v=1 {NOW_NS}"))
    sink.flush(30)
    assert sink.stats.dead_letter_points == {"database_not_allowed": 1}
    dbs = rows(influxdb_server.url, "", "SHOW DATABASES")
    assert name not in {d["name"] for d in dbs}


def test_a_database_influxdb_refuses_to_create_is_dead_lettered_and_the_sink_goes_on(
    influx_database_factory: Callable[..., str], sink_factory: SinkFactory
) -> None:
    sink = sink_factory()
    good = influx_database_factory()
    sink.write_raw(raw("x" * 300, f"m v=1 {NOW_NS}"))  # InfluxDB: "name too long"
    sink.write_raw(raw(good, f"m v=2 {NOW_NS}"))
    sink.flush(30)
    assert sink.stats.dead_letter_points == {"database_refused": 1}
    letters = read_dead_letters(sink.dead_letters.path.parent)
    assert "name too long" in str(letters[0]["error"])
    assert sink.stats.points_written == 1


def test_an_influxdb_outage_blocks_the_flush_and_writes_resume_after_restart(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
) -> None:
    db = influx_database_factory()
    sink = sink_factory(max_pending_requests=1, batch_max_points=10)
    sink.write_raw(raw(db, f"m v=0 {NOW_NS}"))
    sink.flush(30)
    influxdb_server.stop()
    try:
        writer_done = threading.Event()

        def write_a_lot() -> None:
            for i in range(1, 101):
                sink.write_raw(raw(db, f"m v={i} {NOW_NS + i}"))
            sink.flush()
            writer_done.set()

        thread = threading.Thread(target=write_a_lot, daemon=True)
        thread.start()
        time.sleep(3)
        assert not writer_done.is_set(), "writes must block while InfluxDB is down"
        assert sink.stats.blocked
        assert sink.stats.retries > 0
        assert len(sink._pending) <= 5, "the pending queue is bounded (hard limit 4x)"
        assert not sink.has_capacity()
    finally:
        influxdb_server.start()
    assert writer_done.wait(60)
    assert not sink.stats.blocked
    assert len(rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m"')) == 101


def test_points_beyond_retention_are_not_sent_but_counted_per_tier(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    db = influx_database_factory()
    sink = sink_factory()
    old = NOW_NS - 30 * 86_400_000_000_000
    sink.write_raw(raw(db, *[f"m v={i} {old + i}" for i in range(50)], f"m v=2 {NOW_NS}"))
    sink.flush(30)
    assert sink.stats.beyond_retention_points == {"raw": 50}
    assert sink.stats.dead_letter_points == {}
    assert sink.stats.requests == 1, "no bisection, one request for the batch"
    assert sink.stats.points_written == 1
    assert [r["v"] for r in rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m"')] == [2]
    assert read_dead_letters(tmp_path / "dead-letter") == []


def test_a_retention_only_partial_write_is_understood_without_bisecting(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
) -> None:
    db = influx_database_factory()
    # the sink believes raw keeps everything; InfluxDB's policy says 1d (set behind its back)
    sink = sink_factory(tiers=(TierSpec("raw", "0s", "INF"), *DEFAULT_TIERS[1:]))
    sink.write_raw(raw(db, f"m v=1 {NOW_NS}"))
    sink.flush(30)
    altered = httpx.post(
        f"{influxdb_server.url}/query",
        data={"q": f'ALTER RETENTION POLICY "raw" ON "{db}" DURATION 1d SHARD DURATION 1h'},
    )
    assert "error" not in altered.text, altered.text
    old = NOW_NS - 30 * 86_400_000_000_000  # before any shard group of the database
    requests = sink.stats.requests
    sink.write_raw(raw(db, *[f"m v={i} {old + i}" for i in range(20)], f"m v=3 {NOW_NS + 1}"))
    sink.flush(30)
    assert sink.stats.requests == requests + 1
    assert sink.stats.beyond_retention_points == {"raw": 20}
    assert sink.stats.dead_letter_points == {}
    assert len(rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m"')) == 2


def _kg_raw(kg: int, db: str, *lines: str) -> RawLinesBatch:
    return RawLinesBatch(kg, db, "\n".join(lines).encode(), len(lines))


def test_fence_drops_a_revoked_partitions_queued_writes_and_keeps_the_others(
    influxdb_server: InfluxDBServer,
    sink_factory: SinkFactory,
    influx_database_factory: Callable[..., str],
) -> None:
    db = influx_database_factory()
    sink = sink_factory(batch_max_points=3)
    sink.write_raw(_kg_raw(0, db, f"m,p=0 v=0 {NOW_NS}"))
    sink.flush(30)  # database created, nothing else pending
    influxdb_server.stop()
    try:
        for i in range(1, 7):  # sealed requests (3 points each) and a buffer, two partitions
            sink.write_raw(_kg_raw(i % 2, db, f"m,p={i % 2} v={i} {NOW_NS + i}"))
        sink.flush_marker()
        assert sink.fence(frozenset({1}), timeout_s=10) == 3
        assert sink.stats.fenced_points == 3
        sink.write_raw(_kg_raw(1, db, f"m,p=1 v=99 {NOW_NS + 99}"))  # after revocation
        assert sink.stats.fenced_points == 4
    finally:
        influxdb_server.start()
    sink.flush(60)
    got = rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m" GROUP BY p')
    assert sorted((r["p"], r["v"]) for r in got) == [("0", 0), ("0", 2), ("0", 4), ("0", 6)]
    sink.unfence(frozenset({1}))
    sink.write_raw(_kg_raw(1, db, f"m,p=1 v=7 {NOW_NS + 7}"))
    sink.flush(30)
    got = rows(influxdb_server.url, db, 'SELECT v FROM "raw"."m" WHERE p = \'1\'')
    assert [r["v"] for r in got] == [7]
