"""Real clients -> real gateway process -> real Kafka: each point lands decoded and partitioned."""

from __future__ import annotations

import gzip
import subprocess
import time

import httpx
import pytest
from influxdb_client import InfluxDBClient, WriteOptions

from metricsflow.model.lineprotocol import Limits, parse
from metricsflow.model.point import Point
from tests.gateway.conftest import GatewayFactory, TopicRecord, read_topic

pytestmark = pytest.mark.integration


def java_murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` written out again for the test (independent of the gateway)."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    for i in range(0, length - length % 4, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    tail = data[length - rest :]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def expected_partition(point: Point, partitions: int) -> int:
    return (java_murmur2(point.series_key.encode()) & 0x7FFFFFFF) % partitions


def assert_in_right_partitions(
    records: list[TopicRecord], sent: list[Point], partitions: int, db: str
) -> None:
    got: list[Point] = []
    for rec in records:
        assert rec.db == db
        for p in rec.points:
            assert rec.partition == expected_partition(p, partitions), p
            got.append(p)
    assert sorted(got, key=repr) == sorted(sent, key=repr)


def test_the_java_murmur2_copy_matches_kafkas_own_test_vectors() -> None:
    assert java_murmur2(b"21") == -973932308
    assert java_murmur2(b"foobar") == -790332482
    assert java_murmur2(b"a-little-bit-long-string") == -985981536
    assert java_murmur2(b"abc") == 479470107


async def test_a_raw_v1_client_with_gzip_and_basic_auth_lands_every_point_in_its_partition(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=4)
    gw = gateway_factory(topic, tokens="secret,other")
    body = "\n".join(
        f"cpu,region=eu,host=h{i % 7} usage={i}.5,idle={i}i {1_700_000_000 + i}" for i in range(200)
    )
    sent = parse(body, precision_factor=1_000_000_000)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        r = await client.post(
            "/write",
            params={"db": "telegraf", "precision": "s"},
            content=gzip.compress(body.encode()),
            headers={"Content-Encoding": "gzip"},
            auth=("anyone", "secret"),
        )
        assert r.status_code == 204, r.text
        assert r.headers["X-Influxdb-Version"]
        denied = await client.post("/write", params={"db": "telegraf"}, content=b"m v=1")
        assert denied.status_code == 401
        assert "error" in denied.json()
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=200)
    assert_in_right_partitions(records, sent, 4, "telegraf")


async def test_the_influx_cli_inserts_through_the_v1_write_endpoint(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=3)
    gw = gateway_factory(topic)
    statements = [
        f"INSERT disk,path=/d{i},host=a used={i}i,free={100 - i}.25 {i + 1}" for i in range(5)
    ]
    port = gw.url.rsplit(":", 1)[1]
    for stmt in statements:
        out = subprocess.run(  # noqa: ASYNC221 - the CLI is the client under test
            ["influx", "-host", "127.0.0.1", "-port", port, "-database", "clidb", "-execute", stmt],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stdout + out.stderr
    sent = parse("\n".join(s.removeprefix("INSERT ") for s in statements))
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=len(sent))
    assert_in_right_partitions(records, sent, 3, "clidb")


async def test_influxdb_client_v2_batching_writes_arrive_in_kafka_decoded_equal(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=5)
    gw = gateway_factory(topic, tokens="tok", influxdb_generation="2")  # 2.x takes `5u`
    lines = [
        f"mem,host=h{i % 11},dc=fra used_percent={i / 3!r},total={i}u,"
        f"ok={'true' if i % 2 else 'false'}"
        f',note="n \\"{i}\\"" {1_700_000_000_000_000_000 + i * 1_000}'
        for i in range(1_000)
    ]
    sent = parse("\n".join(lines), limits=Limits(allow_unsigned=True))
    errors: list[object] = []
    with InfluxDBClient(url=gw.url, token="tok", org="acme") as client:
        options = WriteOptions(batch_size=300, flush_interval=100, max_retries=0)
        with client.write_api(
            write_options=options, error_callback=lambda conf, data, exc: errors.append(exc)
        ) as write_api:
            write_api.write(bucket="metrics/autogen", record=lines)
    assert errors == []
    records = await read_topic(kafka_broker.bootstrap, topic, min_points=len(sent))
    assert_in_right_partitions(records, sent, 5, "metrics")
    assert {dict(r.headers).get("mf-rp") for r in records} == {b"autogen"}
    assert all(int(dict(r.headers)["mf-received-ns"]) <= time.time_ns() for r in records)
