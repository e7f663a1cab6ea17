"""Each attack of issue 14 replayed against the real stack (gateway and worker as
subprocesses, real Kafka and InfluxDB), judged by its bounded outcome: a 4xx naming what was
wrong, the gateway's RSS under ``GATEWAY_RSS_BOUND`` (from /proc), every ``/ping`` answered
within ``PING_BOUND_S`` meanwhile (a ping is only excused when an idle control gateway on the
same machine, pinged right after, was slow too: then the machine was busy, not the gateway),
every component still running, and good data sent afterwards reaching its tiers exactly."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import time
from urllib.parse import urlsplit

import httpx
import orjson
import pytest

from tests.hostile.attack_bodies import remote_write_body
from tests.hostile.stack import (
    ADMIN_TOKEN,
    BODY_TIMEOUT_S,
    GATEWAY_RSS_BOUND,
    HEADER_TIMEOUT_S,
    MAX_CONNECTIONS,
    PING_BOUND_S,
    WORKER_TOKEN,
    HostileStack,
    Watch,
)
from tests.job.stack import Sender, assert_tiers_match_oracle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def assert_bounded(watch: Watch, hostile: HostileStack) -> None:
    assert not watch.failures, watch.failures[:5]
    assert len(watch.pings_s) >= 3, "the prober did not run"
    assert watch.slow_pings(PING_BOUND_S) == [], watch.slow_pings(PING_BOUND_S)
    assert watch.peak_rss < GATEWAY_RSS_BOUND, watch.peak_rss
    assert hostile.all_running() == []


def post(hostile: HostileStack, path: str, content: bytes, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{hostile.gateway.url}{path}", content=content, timeout=60, **kwargs)  # type: ignore[arg-type]


def test_values_the_pipeline_cannot_store_are_refused_at_every_door(
    hostile: HostileStack,
) -> None:
    db = hostile.db
    with hostile.watch() as watch:
        edge = post(hostile, "/write", b"edge v=1 9223372036", params={"db": db, "precision": "s"})
        assert edge.status_code == 400, edge.text
        assert "9223372036" in edge.json()["error"]
        assert "is outside the accepted range" in edge.json()["error"]
        v2 = post(
            hostile, "/api/v2/write", b"m v=1 -9300000000", params={"bucket": db, "precision": "s"}
        )
        assert v2.status_code == 400, v2.text
        assert "line 1, column 7" in v2.json()["message"]
        long_db = post(hostile, "/write", b"m v=1", params={"db": "x" * 300})
        assert long_db.status_code == 400, long_db.text
        assert "database name" in long_db.json()["error"]
        assert "300 bytes long" in long_db.json()["error"]
        bad_rp = post(hostile, "/write", b"m v=1", params={"db": db, "rp": "a/b"})
        assert bad_rp.status_code == 400
        assert "a/b" in bad_rp.json()["error"]
        points = [{"measurement": "m", "fields": {"v": 1.0}, "time": 9_300_000_000_000_000_000}]
        json_time = post(hostile, "/api/v1/json", orjson.dumps(points), params={"db": db})
        assert json_time.status_code == 400
        assert "points[0].time" in json_time.json()["error"]
        ahead = time.time_ns() + 50 * 365 * 86400 * 10**9  # 50 years ahead
        future = post(hostile, "/write", f"m v=1 {ahead}".encode(), params={"db": db})
        assert future.status_code == 400, future.text
        assert "outside the accepted range" in future.json()["error"]
        big_string = [{"measurement": "m", "fields": {"s": "x" * 2_000_000}}]
        json_big = post(hostile, "/api/v1/json", orjson.dumps(big_string), params={"db": db})
        assert json_big.status_code == 400, json_big.text
        assert "GATEWAY_MAX_LINE_LENGTH" in json_big.json()["error"]
    assert_bounded(watch, hostile)


def test_amplification_at_the_door_is_refused_before_it_costs_memory(
    hostile: HostileStack,
) -> None:
    db = hostile.db
    bomb = gzip.compress(b"m v=1\n" * 4_100_000, 9)  # 4.1 million tiny lines
    members = gzip.compress(b"", mtime=0) * 200_000
    rw_bomb = remote_write_body({"__name__": "up", "job": "a" * 4000}, 40_000)
    rw_label = remote_write_body({"__name__": "up", "job": "a" * 70_000}, 3)
    headers = {"Content-Encoding": "gzip"}
    with hostile.watch() as watch:
        started = time.monotonic()
        gz = post(hostile, "/write", bomb, params={"db": db}, headers=headers)
        assert gz.status_code == 413, gz.text
        assert "GATEWAY_MAX_INFLIGHT_BYTES" in gz.json()["error"]
        assert time.monotonic() - started < 10
        started = time.monotonic()
        empty = post(hostile, "/write", members, params={"db": db}, headers=headers)
        assert empty.status_code == 204, empty.text
        assert time.monotonic() - started < 10
        rw = post(
            hostile,
            "/api/v1/write",
            rw_bomb,
            params={"db": db},
            headers={"Content-Encoding": "snappy"},
        )
        assert rw.status_code == 413, rw.text
        assert "expands to more than" in rw.json()["error"]
        label = post(
            hostile,
            "/api/v1/write",
            rw_label,
            params={"db": db},
            headers={"Content-Encoding": "snappy"},
        )
        assert label.status_code == 400, label.text
        assert "value of label 'job' has 70000 characters" in label.json()["error"]
    assert len(rw_bomb) < 100_000
    assert_bounded(watch, hostile)


def test_a_large_admitted_request_is_parsed_without_stalling_the_gateway(
    hostile: HostileStack,
) -> None:
    now = time.time_ns()
    body = b"".join(b"load,s=%d v=%d %d\n" % (i % 1000, i, now - i) for i in range(400_000))
    with hostile.watch() as watch:
        answer = post(
            hostile,
            "/write",
            gzip.compress(body),
            params={"db": hostile.db},
            headers={"Content-Encoding": "gzip"},
        )
        assert answer.status_code == 204, answer.text
    assert_bounded(watch, hostile)


def read_http_answer(sock: socket.socket) -> str:
    """One whole HTTP/1.1 answer: head and body may arrive in separate segments."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return data.decode()
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode()


def test_a_slow_client_is_cut_off(hostile: HostileStack) -> None:
    url = urlsplit(hostile.gateway.url)
    with hostile.watch() as watch, socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(
            f"POST /write?db={hostile.db} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n"
            "m v=1\n".encode()
        )
        sock.settimeout(BODY_TIMEOUT_S + 10)
        started = time.monotonic()
        answer = read_http_answer(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith("HTTP/1.1 408"), answer
    assert "GATEWAY_BODY_TIMEOUT_S" in answer
    assert elapsed < BODY_TIMEOUT_S + 5
    assert_bounded(watch, hostile)


async def slow_header_client(host: str, port: int) -> tuple[bytes, float]:
    """Send a request head a byte every 0.1 s, never ending it; return what the gateway
    answered when it closed the connection and how long after the connection opened."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    reader, writer = await asyncio.open_connection(host, port)

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.1)

    sender = asyncio.create_task(trickle())
    try:
        answer = await asyncio.wait_for(reader.read(), HEADER_TIMEOUT_S + 10)
    finally:
        sender.cancel()
        writer.close()
    return answer, loop.time() - started


async def test_slow_header_clients_are_cut_off_and_connections_are_bounded(
    hostile: HostileStack,
) -> None:
    url = urlsplit(hostile.gateway.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    slow_clients = MAX_CONNECTIONS // 2
    with hostile.watch() as watch:
        results = await asyncio.gather(
            *(slow_header_client(host, port) for _ in range(slow_clients))
        )
    for answer, held_s in results:
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert b"GATEWAY_HEADER_TIMEOUT_S" in answer
        # an event loop may run a timer a hair early (1.9999992 s for 2 s was seen)
        assert HEADER_TIMEOUT_S - 0.05 <= held_s < HEADER_TIMEOUT_S + 2
    assert_bounded(watch, hostile)
    # Idle connections up to the bound: one more is answered 503 at once, naming the limit,
    # until the head timeout has closed the idle ones.
    idle = [socket.create_connection((host, port)) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.2)
        refused = await asyncio.to_thread(
            httpx.get, f"{hostile.gateway.url}/ping", timeout=HEADER_TIMEOUT_S / 2
        )
        assert refused.status_code == 503, refused.text
        assert "GATEWAY_MAX_CONNECTIONS" in refused.json()["error"]
        assert refused.headers["Retry-After"]
        await asyncio.sleep(HEADER_TIMEOUT_S + 0.5)
        for sock in idle:
            sock.settimeout(1)
            assert sock.recv(1) == b""  # closed by the gateway
        ping = await asyncio.to_thread(httpx.get, f"{hostile.gateway.url}/ping", timeout=5)
        assert ping.status_code == 204
    finally:
        for sock in idle:
            sock.close()
    assert hostile.all_running() == []


def test_query_is_no_admin_console(hostile: HostileStack) -> None:
    query = f"{hostile.gateway.url}/query"
    db = hostile.db
    with hostile.watch() as watch:
        for q in (
            f'DROP DATABASE "{db}"',
            "CREATE USER \"x\" WITH PASSWORD 'y' WITH ALL PRIVILEGES",
            'DELETE FROM "m"',
            f'SELECT * INTO "{db}".."copy" FROM "m"',
        ):
            answer = httpx.get(query, params={"db": db, "q": q}, timeout=30)
            assert answer.status_code == 403, (q, answer.text)
            assert "changes InfluxDB" in answer.json()["error"]
        as_admin = httpx.get(
            query,
            params={"db": db, "q": 'DROP MEASUREMENT "nothing"', "p": ADMIN_TOKEN},
            timeout=30,
        )
        assert as_admin.status_code == 405
        # /(a+)+$/ against the tag key 'aaa...a!' backtracks 2^40 times in Python's re; the
        # planner matches it against every tag key (first() needs single-series groups).
        key = "a" * 40 + "!"
        line = f"regex_m,{key}=x v=1 {time.time_ns() - 60 * 10**9}".encode()
        assert post(hostile, "/write", line, params={"db": db}).status_code == 204
        deadline = time.monotonic() + 60
        slow_regex = (
            "SELECT first(v) FROM regex_m WHERE time > now() - 1h GROUP BY time(10s), /(a+)+$/"
        )
        while time.monotonic() < deadline:  # the worker writes the raw point
            started = time.monotonic()
            answer = httpx.get(query, params={"db": db, "q": slow_regex}, timeout=30)
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - started < 5
            if answer.json()["results"][0].get("series"):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the point never reached InfluxDB")
        for q in (
            "SELECT mean(v) FROM m WHERE time > '2024-13-45T00:00:00Z' GROUP BY time(1m)",
            "SELECT mean(v) FROM m WHERE " + "(" * 400 + "time > now()" + ")" * 400,
        ):
            answer = httpx.post(query, data={"db": db, "q": q}, timeout=30)
            assert 400 <= answer.status_code < 500 or answer.status_code == 200, answer.text
    users = httpx.get(f"{hostile.stack.influx.url}/query", params={"q": "SHOW USERS"}).json()
    assert "values" not in users["results"][0].get("series", [{}])[0]
    assert_bounded(watch, hostile)


def test_the_worker_api_cannot_be_stopped_by_strangers(hostile: HostileStack) -> None:
    worker = hostile.worker.url
    assert httpx.post(f"{worker}/stop", timeout=30).status_code == 401
    assert httpx.post(f"{worker}/savepoints", timeout=30).status_code == 401
    cross = httpx.post(
        f"{worker}/stop",
        headers={"Authorization": f"Bearer {WORKER_TOKEN}", "Origin": "http://evil.example"},
        timeout=30,
    )
    assert cross.status_code == 403
    form = httpx.post(f"{worker}/stop", data={"a": "b"}, timeout=30)
    assert form.status_code in (401, 415)
    assert hostile.all_running() == []


async def test_good_data_after_the_attacks_reaches_every_tier_exactly(
    hostile: HostileStack,
) -> None:
    sender = Sender(hostile.gateway.url, hostile.db, series=8, seed=14)
    await asyncio.to_thread(sender.run_for, 3)
    await asyncio.to_thread(assert_tiers_match_oracle, hostile.stack, sender)
    assert hostile.all_running() == []
    async with httpx.AsyncClient(timeout=10) as client:
        overview = (await client.get(f"{hostile.worker.url}/jobs/overview")).json()["jobs"][0]
    assert overview["restarts"] == 0, overview["last_failure"]
