"""Prometheus remote-write metadata: decoded, expanded, and produced as kinds1 declarations
to every partition, once, before the samples of the same request."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import cramjam
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.base import KafkaUnavailableError, ParsedWrite
from gateway.declarations import AnnouncedKinds, declared_kinds
from gateway.decoding import remote_write_to_line_protocol, shutdown_decoder
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.remote_write import decode_write_request
from gateway.settings import GatewaySettings
from metricsflow.model.declarations import DeclaredKind, PromMetricType
from metricsflow.model.lineprotocol import DEFAULT_LIMITS
from tests.gateway.conftest import GatewayFactory, read_topic, write_request_bytes

C, G = DeclaredKind.COUNTER, DeclaredKind.GAUGE


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def metadata_bytes(entries: list[tuple[int, str, str, str]]) -> bytes:
    """``WriteRequest.metadata`` (field 3) encoded by hand from prometheus/prompb/types.proto:
    ``MetricMetadata {MetricType type = 1; string metric_family_name = 2; string help = 4;
    string unit = 5}`` (independent of the gateway's descriptor)."""
    out = b""
    for metric_type, family, help_text, unit in entries:
        body = b""
        if metric_type:
            body += _varint(1 << 3 | 0) + _varint(metric_type)
        for number, text in ((2, family), (4, help_text), (5, unit)):
            if text:
                body += _field(number, text.encode())
        out += _field(3, body)
    return out


samples_bytes = write_request_bytes


entries_st = st.lists(
    st.tuples(st.integers(0, 12), st.text(max_size=30), st.text(max_size=30), st.text(max_size=10)),
    max_size=20,
)


@settings(max_examples=150, deadline=None)
@given(entries=entries_st, with_samples=st.booleans(), samples_first=st.booleans())
def test_every_metadata_entry_with_a_family_is_decoded_alongside_the_samples(
    entries: list[tuple[int, str, str, str]], with_samples: bool, samples_first: bool
) -> None:
    samples = (
        samples_bytes([({"__name__": "up", "job": "j"}, [(1.0, 1000)])]) if with_samples else b""
    )
    meta = metadata_bytes(entries)
    # protobuf fields may come in any order; concatenated messages merge
    payload = samples + meta if samples_first else meta + samples
    out: list[tuple[str, int]] = []
    keys, lines = decode_write_request(payload, {}, metadata=out)
    assert out == [(family, t) for t, family, _, _ in entries if family]
    assert lines == (["up,job=j value=1.0 1000000000"] if with_samples else [])
    assert keys == (["up,job=j"] if with_samples else [])


def test_metadata_is_not_collected_unless_asked_and_overlong_families_are_skipped() -> None:
    payload = metadata_bytes(
        [(1, "a" * (DEFAULT_LIMITS.max_key_length + 1), "", ""), (2, "ok", "h", "u")]
    )
    assert decode_write_request(payload, {}) == ([], [])
    out: list[tuple[str, int]] = []
    decode_write_request(payload, {}, metadata=out)
    assert out == [("ok", 2)]


def test_the_decoding_child_returns_the_metadata_only_when_asked() -> None:
    payload = metadata_bytes([(PromMetricType.COUNTER, "x", "", "")])
    assert remote_write_to_line_protocol(payload, DEFAULT_LIMITS, 10**6, True) == (
        b"",
        {},
        [("x", 1)],
    )
    assert remote_write_to_line_protocol(payload, DEFAULT_LIMITS, 10**6) == (b"", {}, [])


def test_a_request_declares_the_measurements_of_its_families_later_entries_winning() -> None:
    kinds = declared_kinds(
        [
            ("http_requests", PromMetricType.COUNTER),
            ("rpc", PromMetricType.HISTOGRAM),
            ("build_info", PromMetricType.INFO),
            ("mystery", 99),
            ("http_requests_total", PromMetricType.GAUGE),
        ]
    )
    assert kinds == {
        "http_requests": C,
        "http_requests_total": G,
        "rpc_bucket": C,
        "rpc_count": C,
        "rpc_sum": C,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_declaration_is_due_when_new_changed_or_not_produced_for_reannounce_s() -> None:
    clock = Clock()
    announced = AnnouncedKinds(3600, clock)
    assert announced.due("db", None, {"a": C, "b": G}) == {"a": C, "b": G}
    assert announced.due("db", None, {"a": C}) == {"a": C}  # nothing acknowledged yet
    announced.produced("db", None, {"a": C, "b": G})
    clock.now = 3599.0
    assert announced.due("db", None, {"a": C, "b": G}) == {}
    assert announced.due("db", None, {"a": G, "b": G}) == {"a": G}
    assert announced.due("db", "other_rp", {"a": C}) == {"a": C}
    assert announced.due("db2", None, {"a": C}) == {"a": C}
    announced.produced("db", None, {"a": G})
    clock.now = 3600.0
    assert announced.due("db", None, {"a": G, "b": G}) == {"b": G}
    clock.now = 3599.0 + 3600.0
    assert announced.due("db", None, {"a": G, "b": G}) == {"a": G, "b": G}


def test_remembered_declarations_are_bounded() -> None:
    announced = AnnouncedKinds(3600, Clock(), max_remembered=3)
    announced.produced("db", None, {"a": C, "b": C})
    announced.produced("db", None, {"c": C})
    assert len(announced) == 3
    announced.produced("db", None, {"d": C})
    assert len(announced) == 1
    assert announced.due("db", None, {"a": C, "d": C}) == {"a": C}


HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "User-Agent": "Prometheus/2.42.0",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}


def snappy(payload: bytes) -> bytes:
    return bytes(cramjam.snappy.compress_raw(payload))


class RecordingWriter(KafkaWriter):
    """Records what the route asks of Kafka, in order (no Kafka: the real one is below)."""

    def __init__(self, settings: GatewaySettings, fail: bool = False) -> None:
        super().__init__(settings, GatewayMetrics())
        self.calls: list[tuple[str, object]] = []
        self.fail = fail

    async def declare(
        self, db: str, rp: str | None, kinds: Mapping[str, DeclaredKind], received_ns: int
    ) -> int:
        if self.fail:
            raise KafkaUnavailableError("Kafka did not acknowledge; retry", retry_after_s=2)
        self.calls.append(("declare", (db, rp, dict(kinds))))
        return len(kinds)

    async def write(self, parsed: ParsedWrite, reserved: int) -> None:
        self.calls.append(("write", parsed.lines))
        self.release(reserved)


Post = Callable[["RecordingWriter", bytes], Awaitable[httpx.Response]]


@pytest.fixture
async def post_to() -> AsyncIterator[Post]:
    """``await post_to(writer, payload)``: a remote-write request to an in-process app whose
    Kafka writer is ``writer``."""

    async def post(writer: RecordingWriter, payload: bytes) -> httpx.Response:
        app = create_app(writer.settings)
        app.state.writer = writer
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            return await client.post("/api/v1/write?db=p", content=snappy(payload), headers=HEADERS)

    yield post
    shutdown_decoder()


async def test_the_route_declares_before_writing_and_not_at_all_when_turned_off(
    post_to: Post,
) -> None:
    payload = metadata_bytes([(PromMetricType.GAUGE, "temp", "", "")]) + samples_bytes(
        [({"__name__": "temp"}, [(1.5, 1000)])]
    )
    on = RecordingWriter(GatewaySettings())
    assert (await post_to(on, payload)).status_code == 204
    assert on.calls == [
        ("declare", ("p", None, {"temp": G})),
        ("write", ["temp value=1.5 1000000000"]),
    ]
    off = RecordingWriter(GatewaySettings(remote_write_metadata=False))
    assert (await post_to(off, payload)).status_code == 204
    assert off.calls == [("write", ["temp value=1.5 1000000000"])]
    alone = RecordingWriter(GatewaySettings())
    assert (await post_to(alone, metadata_bytes([(1, "x", "", "")]))).status_code == 204
    assert alone.calls == [("declare", ("p", None, {"x": C, "x_total": C}))]


async def test_declarations_kafka_refused_answer_503_and_write_no_samples(post_to: Post) -> None:
    payload = metadata_bytes([(PromMetricType.GAUGE, "temp", "", "")]) + samples_bytes(
        [({"__name__": "temp"}, [(1.5, 1000)])]
    )
    failing = RecordingWriter(GatewaySettings(), fail=True)
    answer = await post_to(failing, payload)
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "2"
    assert failing.calls == []
    assert failing.inflight_bytes == 0


@pytest.mark.integration
async def test_metadata_lands_once_in_every_partition_and_before_the_samples_of_its_request(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=3)
    gw = gateway_factory(topic, prometheus_db="prom")
    # what Prometheus 2.42 sends every metadata_config.send_interval: metadata, no samples
    first = metadata_bytes(
        [
            (PromMetricType.COUNTER, "http_requests_total", "Requests.", ""),
            (PromMetricType.GAUGE, "temperature", "Temperature.", "celsius"),
            (PromMetricType.HISTOGRAM, "rpc_seconds", "Latency.", "seconds"),
            (PromMetricType.INFO, "build_info", "Build.", ""),
            (PromMetricType.UNKNOWN, "untyped", "", ""),
        ]
    )
    series = [
        ({"__name__": "jobs_total", "instance": f"i{i}"}, [(float(i), 1_700_000_000_000 + i)])
        for i in range(24)
    ]
    third = metadata_bytes(
        [
            (PromMetricType.GAUGE, "temperature", "Temperature.", "celsius"),
            (PromMetricType.COUNTER, "jobs", "Jobs.", ""),
        ]
    ) + samples_bytes(series)
    async with httpx.AsyncClient(base_url=gw.url) as client:
        for payload in (first, first, third):
            r = await client.post("/api/v1/write", content=snappy(payload), headers=HEADERS)
            assert r.status_code == 204, r.text
        metrics = (await client.get("/metrics")).text
    records = await read_topic(
        kafka_broker.bootstrap, topic, min_points=len(series), min_declarations=6, timeout_s=20
    )
    declarations = [r for r in records if r.is_declaration]
    assert sorted(r.partition for r in declarations) == [0, 0, 1, 1, 2, 2]
    assert {r.db for r in records} == {"prom"}
    for partition in range(3):
        mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        decl = [r for r in mine if r.is_declaration]
        # the repeat of the first request produced nothing
        assert [r.kinds for r in decl] == [
            {
                "http_requests_total": C,
                "temperature": G,
                "rpc_seconds_bucket": C,
                "rpc_seconds_count": C,
                "rpc_seconds_sum": C,
            },
            {"jobs": C, "jobs_total": C},  # temperature did not change: not produced again
        ]
        samples = [r for r in mine if not r.is_declaration]
        assert all(r.offset > decl[1].offset for r in samples)
    assert len({r.partition for r in records if not r.is_declaration}) > 1
    produced = {
        kind: float(n)
        for kind, n in re.findall(
            r'^gateway_metadata_declarations_total\{kind="(\w+)"\} (\S+)$', metrics, re.M
        )
    }
    assert produced == {"counter": 6.0, "gauge": 1.0}
