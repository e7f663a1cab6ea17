"""The InfluxDB server is real: databases, retention policies, line protocol, InfluxQL, and
the exact error replies the sink has to handle."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.infra.process import read_pid_file

pytestmark = pytest.mark.integration


def _query(server: InfluxDBServer, q: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q, "epoch": "ns"}
    if db:
        params["db"] = db
    response = httpx.post(f"{server.url}/query", data=params, timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert "error" not in body["results"][0], body
    return body


def _rows(body: dict[str, Any]) -> list[list[Any]]:
    series = body["results"][0].get("series", [])
    return [row for s in series for row in s["values"]]


def _write(server: InfluxDBServer, db: str, lines: str, rp: str | None = None) -> httpx.Response:
    params = {"db": db, "precision": "ns"}
    if rp:
        params["rp"] = rp
    return httpx.post(f"{server.url}/write", params=params, content=lines.encode(), timeout=10)


def test_ping_answers_204_with_the_influxdb_version(influxdb_server: InfluxDBServer) -> None:
    response = httpx.get(f"{influxdb_server.url}/ping", timeout=5)
    assert response.status_code == 204
    assert response.headers["X-Influxdb-Version"].startswith("1.")


def test_there_is_no_v2_api_so_the_sink_must_speak_v1(influxdb_server: InfluxDBServer) -> None:
    response = httpx.post(f"{influxdb_server.url}/api/v2/write", content=b"m v=1", timeout=5)
    assert response.status_code == 404


def test_a_database_gets_one_retention_policy_per_tier(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    for name, duration in [("raw", "7d"), ("1m", "30d"), ("1h", "365d"), ("1d", "INF")]:
        _query(
            influxdb_server,
            f'CREATE RETENTION POLICY "{name}" ON "{db}" DURATION {duration} REPLICATION 1',
        )
    policies = {
        row[0]: row[1]
        for row in _rows(_query(influxdb_server, f'SHOW RETENTION POLICIES ON "{db}"'))
    }
    assert policies["raw"] == "168h0m0s"
    assert policies["1m"] == "720h0m0s"
    assert policies["1d"] == "0s"  # INF


def test_line_protocol_written_to_a_retention_policy_reads_back_with_influxql(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    _query(influxdb_server, f'CREATE RETENTION POLICY "raw" ON "{db}" DURATION 7d REPLICATION 1')
    t0 = (time.time_ns() // 60_000_000_000 - 10) * 60_000_000_000  # inside the 7d retention
    lines = "\n".join(
        f"cpu,host=h{i % 2},region=eu usage={i}.5,count={i}i {t0 + i * 1_000_000_000}"
        for i in range(10)
    )
    response = _write(influxdb_server, db, lines, rp="raw")
    assert response.status_code == 204, response.text

    rows = _rows(
        _query(
            influxdb_server,
            'SELECT count(usage), sum("count"), max(usage) FROM "raw"."cpu" GROUP BY host',
            db=db,
        )
    )
    assert sorted(r[1:] for r in rows) == [[5, 20, 8.5], [5, 25, 9.5]]
    # Same series key + timestamp = same point: a second write replaces the field value.
    assert (
        _write(influxdb_server, db, f"cpu,host=h0,region=eu usage=100 {t0}", rp="raw").status_code
        == 204
    )
    rows = _rows(_query(influxdb_server, 'SELECT usage FROM "raw"."cpu" WHERE host=\'h0\'', db=db))
    assert rows[0] == [t0, 100.0]
    assert len(rows) == 5


def test_a_batch_mixing_float_and_integer_for_one_field_is_a_field_type_conflict(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    t0 = 1_700_000_000_000_000_000
    response = _write(influxdb_server, db, f"mem used=1.5 {t0}\nmem used=2i {t0 + 1}")
    assert response.status_code == 400
    assert "field type conflict" in response.json()["error"]


def test_a_point_older_than_its_retention_policy_is_dropped_as_a_partial_write(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    _query(influxdb_server, f'CREATE RETENTION POLICY "short" ON "{db}" DURATION 1h REPLICATION 1')
    old = time.time_ns() - 3 * 3600 * 1_000_000_000
    response = _write(influxdb_server, db, f"m v=1 {old}\nm v=2 {time.time_ns()}", rp="short")
    assert response.status_code == 400
    assert "points beyond retention policy dropped=1" in response.json()["error"]


def test_an_unparseable_line_is_a_partial_write_and_the_valid_points_are_written(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    t0 = 1_700_000_000_000_000_000
    lines = f"disk free=1 {t0}\nthis is not line protocol\ndisk free=2 {t0 + 1}"
    response = _write(influxdb_server, db, lines)
    assert response.status_code == 400
    assert "partial write" in response.json()["error"]
    rows = _rows(_query(influxdb_server, "SELECT free FROM disk", db=db))
    assert [r[1] for r in rows] == [1.0, 2.0]


def test_continuous_queries_can_be_created_for_side_by_side_comparison(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    _query(influxdb_server, f'CREATE RETENTION POLICY "1m" ON "{db}" DURATION 30d REPLICATION 1')
    _query(
        influxdb_server,
        f'CREATE CONTINUOUS QUERY "cq_1m" ON "{db}" BEGIN '
        f'SELECT mean(*) INTO "{db}"."1m".:MEASUREMENT FROM /.*/ GROUP BY time(1m), * END',
    )
    body = _query(influxdb_server, "SHOW CONTINUOUS QUERIES")
    names = [row[0] for s in body["results"][0]["series"] if s["name"] == db for row in s["values"]]
    assert names == ["cq_1m"]


def test_the_session_influxdb_restarts_on_the_same_url_and_keeps_its_data(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    assert _write(influxdb_server, db, "up v=1 1700000000000000000").status_code == 204
    url, old = influxdb_server.url, read_pid_file(influxdb_server.pid_file)

    assert influxdb_server.stop() is True
    assert not influxdb_server.health()
    assert influxdb_server.start() is True

    assert influxdb_server.url == url
    assert read_pid_file(influxdb_server.pid_file) != old
    assert _rows(_query(influxdb_server, "SELECT v FROM up", db=db)) == [
        [1_700_000_000_000_000_000, 1.0]
    ]
