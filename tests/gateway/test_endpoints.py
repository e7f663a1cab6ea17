"""Endpoint behaviour against a real gateway process and the real broker."""

from __future__ import annotations

import gzip
import math
import re
import struct

import cramjam
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.errors import ParseError
from metricsflow.model.lineprotocol import parse_line, split_lines
from metricsflow.model.point import Point, Unsigned
from tests.gateway.conftest import GatewayFactory, read_topic, write_request_bytes

pytestmark = pytest.mark.integration


async def test_bad_lines_are_a_partial_write_naming_line_column_and_reason(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=2)
    gw = gateway_factory(topic)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post("/write?db=x", content=b"m v=1 1\nm v=2 2\ncpu,host=a v=abc 3")
        assert r.status_code == 400
        assert r.json() == {
            "error": "partial write: unable to parse 'cpu,host=a v=abc 3': invalid boolean "
            "(line 3, column 14) dropped=1"
        }
        # v2's error shape; a body with no valid line writes nothing, as InfluxDB
        r2 = await client.post("/api/v2/write?bucket=x", content=b"m,a v=1")
        assert r2.status_code == 400
        assert r2.json() == {
            "code": "invalid",
            "message": "unable to parse 'm,a v=1': missing tag value (line 1, column 4)",
        }
        r3 = await client.post("/api/v2/write?bucket=x", content=b"n v=1 1\nn v=x 2")
        assert r3.json()["code"] == "invalid"
        assert r3.json()["message"].startswith("partial write: unable to parse 'n v=x 2'")
        assert r3.json()["message"].endswith(" dropped=1")
        assert (await client.post("/write", content=b"m v=1")).json() == {
            "error": "database is required"
        }
        assert (
            await client.post("/write?db=x&precision=fortnight", content=b"m v=1")
        ).status_code == 400
        assert (
            await client.post("/api/v2/write?bucket=x&precision=h", content=b"m v=1")
        ).status_code == 400
        # retention policies: raw, autogen or none mean the raw tier; others are refused
        for rp in ("raw", "autogen", ""):
            ok = await client.post(f"/write?db=x&rp={rp}", content=f"rp{rp} v=1 1".encode())
            assert ok.status_code == 204, ok.text
        for query in ("/write?db=x&rp=weekly", "/api/v2/write?bucket=x/weekly"):
            nope = await client.post(query, content=b"m v=1 1")
            assert nope.status_code == 400
            assert "retention policy not found: weekly" in nope.text
        tier = await client.post("/write?db=x&rp=1h", content=b"m v=1 1")
        assert "retention policy not found: 1h (it holds a downsampled tier" in tier.text
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=6, timeout_s=5)
    assert sorted(p.measurement for r in records for p in r.points) == [
        "m",
        "m",
        "n",
        "rp",
        "rpautogen",
        "rpraw",
    ]


async def test_strict_mode_writes_nothing_of_a_request_with_a_bad_line(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=1)
    gw = gateway_factory(topic, partial_writes="false")
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post("/write?db=x", content=b"m v=1 1\nm v=bad 2\nm v=3 3")
        assert r.json() == {
            "error": "unable to parse 'm v=bad 2': invalid boolean (line 2, column 5)"
        }
        assert (await client.post("/write?db=x", content=b"ok v=1 1")).status_code == 204
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=1, timeout_s=5)
    assert [p.measurement for r in records for p in r.points] == ["ok"]


async def test_size_and_shape_limits_answer_413_and_400_and_gzip_bombs_are_refused(
    topic_factory, gateway_factory: GatewayFactory
) -> None:
    topic = await topic_factory()
    gw = gateway_factory(topic, max_body_bytes="10000", max_tags="2", tokens="t")
    auth = {"Authorization": "Token t"}
    async with httpx.AsyncClient(base_url=gw.url, headers=auth) as client:
        big = await client.post("/write?db=x", content=b"m v=1\n" * 2000)
        assert big.status_code == 413
        bomb = gzip.compress(b"m v=1\n" * 100_000)
        assert len(bomb) < 10_000
        r = await client.post("/write?db=x", content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413
        r = await client.post(
            "/api/v2/write?bucket=x", content=bomb, headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 413
        assert r.json()["code"] == "request too large"
        r = await client.post("/write?db=x", content=b"m,a=1,b=2,c=3 v=1")
        assert r.status_code == 400
        assert "more than 2 tags" in r.json()["error"]
        r = await client.post(
            "/write?db=x", content=b"garbage", headers={"Content-Encoding": "gzip"}
        )
        assert r.status_code == 400
        r = await client.post(
            "/api/v2/write?bucket=x", content=b"m v=1", headers={"Authorization": "Token wrong"}
        )
        assert r.status_code == 401
        assert r.json()["code"] == "unauthorized"
        r = await client.post(
            "/write?db=x&u=me&p=t", content=b"m v=1", headers={"Authorization": ""}
        )
        assert r.status_code == 204
        anonymous_query = await client.get(
            "/query", params={"q": "SHOW DATABASES"}, headers={"Authorization": ""}
        )
        assert anonymous_query.status_code == 401
        assert anonymous_query.json()["error"].startswith("authorization failed")


async def test_the_json_endpoint_writes_typed_fields_and_names_the_bad_point(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=3)
    gw = gateway_factory(topic)
    doc = {
        "points": [
            {
                "measurement": "job",
                "tags": {"name": "backup"},
                "fields": {
                    "secs": 12,
                    "files": {"int": 7},
                    "seq": {"uint": 3},
                    "ok": True,
                    "msg": "done",
                },
                "time": 1700000000000,
            },
            {"measurement": "job", "fields": {"secs": 1.5}, "time": 1700000000001},
        ]
    }
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post("/api/v1/json?db=scripts&precision=ms", content=orjson.dumps(doc))
        assert r.status_code == 204, r.text
        bad = await client.post(
            "/api/v1/json?db=s",
            json={"points": [doc["points"][1], {"measurement": "m", "fields": {"v": None}}]},
        )
        assert bad.status_code == 400
        assert bad.json()["error"].startswith("point 2 (points[1].fields.v)")
        syntax = await client.post("/api/v1/json?db=s", content=b'{"points": [\n  {,}]}')
        assert syntax.json()["error"].startswith("line 2, column 4")
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=2)
    got = sorted((p for r in records for p in r.points), key=lambda p: p.time_ns)
    assert got == [
        Point.make(
            "job",
            {"name": "backup"},
            {"secs": 12.0, "files": 7, "seq": Unsigned(3), "ok": True, "msg": "done"},
            1_700_000_000_000_000_000,
        ),
        Point.make("job", {}, {"secs": 1.5}, 1_700_000_000_001_000_000),
    ]


def remote_write_body(series: list[tuple[dict[str, str], list[tuple[float, int]]]]) -> bytes:
    return bytes(cramjam.snappy.compress_raw(write_request_bytes(series)))


async def test_remote_write_maps_name_to_measurement_and_drops_stale_markers_on_purpose(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=2)
    gw = gateway_factory(topic, prometheus_db="prom")
    stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
    body = remote_write_body(
        [
            ({"__name__": "up", "job": "node", "instance": "a:9100"}, [(1.0, 1000), (stale, 2000)]),
            (
                {"__name__": "temp", "job": "node"},
                [(21.5, 1500), (math.nan, 1600), (math.inf, 1700)],
            ),
        ]
    )
    headers = {
        "Content-Encoding": "snappy",
        "Content-Type": "application/x-protobuf",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post("/api/v1/write", content=body, headers=headers)
        assert r.status_code == 204, r.text
        nameless = remote_write_body([({"job": "x"}, [(1.0, 1)])])
        assert (
            await client.post("/api/v1/write", content=nameless, headers=headers)
        ).status_code == 400
        junk = bytes(cramjam.snappy.compress_raw(b"\xff\xff\xff"))
        assert (
            await client.post("/api/v1/write", content=junk, headers=headers)
        ).status_code == 400
        metrics = (await client.get("/metrics")).text
    assert 'gateway_dropped_samples_total{reason="stale"} 1.0' in metrics
    assert 'gateway_dropped_samples_total{reason="nan"} 1.0' in metrics
    assert 'gateway_dropped_samples_total{reason="inf"} 1.0' in metrics
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=2)
    assert {r.db for r in records} == {"prom"}
    got = sorted((p for r in records for p in r.points), key=lambda p: p.time_ns)
    assert got == [
        Point.make("up", {"job": "node", "instance": "a:9100"}, {"value": 1.0}, 1_000_000_000),
        Point.make("temp", {"job": "node"}, {"value": 21.5}, 1_500_000_000),
    ]


async def test_ping_health_and_metrics_answer_like_the_apis_they_imitate(
    topic_factory, gateway_factory: GatewayFactory
) -> None:
    topic = await topic_factory()
    gw = gateway_factory(topic)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for method in ("GET", "HEAD"):
            r = await client.request(method, "/ping")
            assert r.status_code == 204
            assert r.headers["X-Influxdb-Version"].startswith("1.")
        assert (await client.get("/health")).json()["status"] == "pass"
        await client.post("/write?db=x", content=b"m v=1\nm v=2")
        await client.post("/write?db=x", content=b"m v=")
        text = (await client.get("/metrics")).text
    assert 'gateway_points_total{endpoint="v1_write"} 2.0' in text
    assert 'gateway_rejects_total{endpoint="v1_write",reason="parse"} 1.0' in text
    assert "gateway_kafka_produce_seconds_bucket" in text


def _refused_lines(body: str) -> list[int]:
    refused = []
    for n, line in split_lines(body):
        try:
            parse_line(line, default_time_ns=1)
        except ParseError:
            refused.append(n)
    return refused


chars = st.sampled_from([*list('ab=, "\\1.0-9eiu#\tT\n'), "é", "\r"])
bodies = st.one_of(
    st.text(chars, max_size=60),
    st.lists(st.sampled_from(["m v=1", "cpu,h=a u=2i 5", 'x s="q" 1', "m v=1 99"]), max_size=5)
    .map("\n".join)
    .flatmap(
        lambda b: st.tuples(st.just(b), st.integers(0, max(len(b), 1)), st.text(chars, max_size=3))
    )
    .map(lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]),
)


async def test_random_and_mutated_bodies_never_get_a_5xx_and_every_400_names_the_bad_lines(
    topic_factory, gateway_factory: GatewayFactory
) -> None:
    topic = await topic_factory()
    gw = gateway_factory(topic)
    client = httpx.Client(base_url=gw.url)  # hypothesis drives a sync client

    @given(bodies)
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def check(body: str) -> None:
        r = client.post("/write?db=fuzz", content=body.encode())
        assert r.status_code in (204, 400), r.text
        refused = _refused_lines(body)
        if r.status_code == 204:
            assert refused == [], (body, r.text)
            return
        error = r.json()["error"]
        named = [int(n) for n in re.findall(r"\(line (\d+), column \d+\)", error)]
        assert named == refused[:20], (body, error)
        if error.startswith("partial write: "):
            assert error.endswith(f" dropped={len(refused)}")

    with client:
        check()
