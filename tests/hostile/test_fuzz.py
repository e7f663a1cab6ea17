"""Random and mutated bodies posted to every write endpoint, random InfluxQL to ``/query``, of
the real gateway (subprocess) in front of real Kafka, worker and InfluxDB: never a 5xx, never
a crash of any component."""

from __future__ import annotations

import gzip
import time

import cramjam
import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hostile.attack_bodies import remote_write_body
from tests.hostile.stack import HostileStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOW_NS = time.time_ns()
VALID_LP = (
    f'cpu,host=a,region=eu usage=1.5,n=3i,ok=true,s="x y" {NOW_NS}\nmem v=2 {NOW_NS}'.encode()
)
VALID_JSON = orjson.dumps(
    [{"measurement": "m", "tags": {"h": "a"}, "fields": {"v": 1.5, "n": {"int": 2}}}]
)
VALID_RW = remote_write_body({"__name__": "up", "job": "node"}, 2)
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@st.composite
def mutated(draw: st.DrawFn, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "dup"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "dup":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 64))]
    return bytes(data)


def bodies(seed: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=300), mutated(seed))


PRECISIONS = st.sampled_from([None, "n", "ns", "u", "ms", "s", "m", "h", "x", ""])
NAMES = st.one_of(st.just("fuzz"), st.text(max_size=12), st.just("x" * 300), st.just("a/b"))


def check(answer: httpx.Response) -> None:
    assert answer.status_code < 500, (answer.status_code, answer.text[:500])


@FUZZ
@given(body=bodies(VALID_LP), precision=PRECISIONS, db=NAMES, gz=st.booleans())
def test_v1_and_v2_write(
    hostile: HostileStack, body: bytes, precision: str | None, db: str, gz: bool
) -> None:
    headers = {"Content-Encoding": "gzip"} if gz else {}
    content = gzip.compress(body) if gz else body
    url = hostile.gateway.url
    params = {"db": db} | ({"precision": precision} if precision is not None else {})
    check(httpx.post(f"{url}/write", params=params, content=content, headers=headers, timeout=30))
    v2 = {"bucket": db} | ({"precision": precision} if precision is not None else {})
    check(
        httpx.post(f"{url}/api/v2/write", params=v2, content=content, headers=headers, timeout=30)
    )


@FUZZ
@given(body=bodies(VALID_JSON), db=NAMES)
def test_json_write(hostile: HostileStack, body: bytes, db: str) -> None:
    check(
        httpx.post(
            f"{hostile.gateway.url}/api/v1/json", params={"db": db}, content=body, timeout=30
        )
    )


@FUZZ
@given(payload=bodies(bytes(cramjam.snappy.decompress_raw(VALID_RW))), raw=st.booleans())
def test_remote_write(hostile: HostileStack, payload: bytes, raw: bool) -> None:
    content = payload if raw else bytes(cramjam.snappy.compress_raw(payload))
    check(
        httpx.post(
            f"{hostile.gateway.url}/api/v1/write",
            params={"db": "fuzz"},
            content=content,
            headers={"Content-Encoding": "snappy"},
            timeout=30,
        )
    )


_WORDS = st.sampled_from(
    [
        "SELECT", "SHOW", "FROM", "WHERE", "GROUP", "BY", "time(1m)", "now()", "INTO", "DROP",
        "mean(v)", "first(v)", "v", "m", ",", ";", "(", ")", "=", "=~", "/(a+)+$/", "'2024-13-45'",
        "\"q\"", "1h", "-", "+", "*", "fill(none)", "LIMIT", "TAG", "KEYS", "DATABASES", "/*",
        "*/", "--", "time", ">", "AND", "OR", "999999999999999999999s", "$x",
    ]
)  # fmt: skip


@FUZZ
@given(
    words=st.lists(st.one_of(_WORDS, st.text(max_size=5)), max_size=16),
    method=st.sampled_from(["GET", "POST"]),
)
def test_random_influxql(hostile: HostileStack, words: list[str], method: str) -> None:
    q = " ".join(words)
    params = {"db": hostile.db, "q": q}
    url = f"{hostile.gateway.url}/query"
    if method == "GET":
        answer = httpx.get(url, params=params, timeout=60)
    else:
        answer = httpx.post(url, data=params, timeout=60)
    check(answer)


def test_every_component_survived_the_fuzzing(hostile: HostileStack) -> None:
    assert hostile.all_running() == []
    assert httpx.get(f"{hostile.worker.url}/health", timeout=10).status_code == 200
