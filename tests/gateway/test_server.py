"""The gateway's HTTP protocol: request heads are timed out, connections are bounded, and
neither limit touches a request that is running (uvicorn served in-process, real sockets)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from gateway.server import ConnectionLimits, GatewayHttpProtocol
from metricsflow.infra.process import free_port

HEAD_TIMEOUT_S = 0.4
MAX_CONNECTIONS = 4


class LimitedProtocol(GatewayHttpProtocol):
    limits = ConnectionLimits(header_timeout_s=HEAD_TIMEOUT_S, max_connections=MAX_CONNECTIONS)


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answers 200 after ``?sleep=<s>`` seconds (a request running longer than a head may
    take); ``lifespan`` is refused, as uvicorn allows."""
    if scope["type"] != "http":
        raise RuntimeError("http only")
    while (await receive()).get("more_body"):
        pass
    query = scope["query_string"].decode()
    if query.startswith("sleep="):
        await asyncio.sleep(float(query.removeprefix("sleep=")))
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
def port() -> Iterator[int]:
    """uvicorn with :class:`LimitedProtocol` on a free port, in a thread of its own."""
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, http=LimitedProtocol, lifespan="off", log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    yield port
    server.should_exit = True
    thread.join(10)


async def read_all(reader: asyncio.StreamReader, within_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails after ``within_s``)."""
    return await asyncio.wait_for(reader.read(), within_s)


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_a_head_sent_a_byte_at_a_time_is_answered_408_and_closed(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in GET[:-4]:  # never the blank line that ends the head
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    sender = asyncio.create_task(trickle())
    answer = await read_all(reader, 2)
    elapsed = loop.time() - started
    sender.cancel()
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"GATEWAY_HEADER_TIMEOUT_S" in answer
    assert HEAD_TIMEOUT_S <= elapsed < HEAD_TIMEOUT_S + 0.5
    writer.close()


async def test_a_connection_that_sends_nothing_is_closed_without_an_answer(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await read_all(reader, HEAD_TIMEOUT_S + 1) == b""
    writer.close()


async def test_a_keep_alive_connection_has_the_head_timeout_again_after_each_answer(
    port: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):
        writer.write(GET)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        assert await reader.readexactly(2) == b"ok"
        await asyncio.sleep(HEAD_TIMEOUT_S / 2)  # each wait alone is within the timeout
    writer.write(b"GET / HT")
    answer = await read_all(reader, HEAD_TIMEOUT_S + 1)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    writer.close()


async def test_a_request_running_longer_than_the_head_timeout_is_not_cut(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sleep = HEAD_TIMEOUT_S * 3
    # pipelined: the second head is complete while the first request still runs
    writer.write(f"GET /?sleep={sleep} HTTP/1.1\r\nHost: x\r\n\r\n".encode() + GET)
    first = await asyncio.wait_for(reader.readuntil(b"ok"), sleep + 2)
    second = await asyncio.wait_for(reader.readuntil(b"ok"), 2)
    assert first.startswith(b"HTTP/1.1 200")
    assert second.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_a_connection_beyond_the_bound_is_answered_503_at_once(port: int) -> None:
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        answer = await read_all(reader, HEAD_TIMEOUT_S / 2)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"GATEWAY_MAX_CONNECTIONS" in answer
        assert b"retry-after: 1" in answer.lower()
        writer.close()
    finally:
        for sock in held:
            sock.close()
    await asyncio.sleep(0.1)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(GET)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()


async def test_the_held_connections_are_released_by_the_head_timeout(port: int) -> None:
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_CONNECTIONS)]
    try:
        await asyncio.sleep(HEAD_TIMEOUT_S + 0.3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(GET)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
        assert head.startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        for sock in held:
            sock.close()
