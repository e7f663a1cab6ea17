"""The gateway's HTTP server: uvicorn (uvloop + httptools) with the two limits it lacks.

uvicorn times out neither a request head nor an idle new connection: a client that opens a
connection and sends its headers a byte at a time (slowloris) holds a socket for as long as it
likes, and enough of them take every file descriptor. :class:`GatewayHttpProtocol` is
uvicorn's httptools protocol with

- a **head timeout** (``GATEWAY_HEADER_TIMEOUT_S``): armed when a connection opens and again
  when a response completes (the next request's head is due), disarmed when a request's head is
  complete. When it fires, a connection that had begun a head is answered 408 and closed; one
  that sent nothing is closed. The body has its own timeout (``GATEWAY_BODY_TIMEOUT_S``, in the
  write endpoints);
- a **connection bound** (``GATEWAY_MAX_CONNECTIONS`` per gateway process): a connection
  beyond it is answered 503 with ``Retry-After`` at once, without reading its request, and
  closed (after a short linger, so that the client reads the answer rather than a reset).

Both act in the event loop's own callbacks, so they cost nothing per request.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)

#: Refused connections are logged at most once per this many seconds (with their count).
REFUSAL_LOG_PERIOD_S = 10.0

#: Seconds a refused connection is kept half-closed (answer sent, our side shut) so that the
#: client reads the 503 instead of a reset provoked by the request it sends meanwhile.
REFUSAL_LINGER_S = 1.0


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    """Seconds from a connection's start, or its previous response, to a complete head."""
    max_connections: int
    """Open connections per process; beyond: 503 at once."""
    retry_after_s: int = 1


@functools.cache
def limits_from_env() -> ConnectionLimits:
    """The limits of this process, from ``GATEWAY_*`` (read once per process: uvicorn's worker
    processes each build their own protocol instances)."""
    settings = GatewaySettings()
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        max_connections=settings.max_connections,
        retry_after_s=settings.retry_after_s,
    )


class _RefusalLog:
    """Logs refused connections once per ``REFUSAL_LOG_PERIOD_S``: an attack fills no disk."""

    def __init__(self) -> None:
        self.refused = 0
        self.logged_at = float("-inf")

    def refused_one(self, held: int, limit: int) -> None:
        self.refused += 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_PERIOD_S:
            logger.warning(
                "connections refused count=%d held=%d: GATEWAY_MAX_CONNECTIONS=%d reached",
                self.refused,
                held,
                limit,
            )
            self.refused = 0
            self.logged_at = now


_refusals = _RefusalLog()


def _answer(status: str, message: str, extra: bytes = b"") -> bytes:
    body = orjson.dumps({"error": message})
    return (
        f"HTTP/1.1 {status}\r\n".encode()
        + b"content-type: application/json\r\n"
        + extra
        + b"connection: close\r\n"
        + f"content-length: {len(body)}\r\n\r\n".encode()
        + body
    )


class GatewayHttpProtocol(HttpToolsProtocol):  # type: ignore[misc]
    """uvicorn's httptools protocol with a head timeout and a connection bound (see the module
    docstring). ``limits`` overrides the settings read from the environment (tests)."""

    limits: ClassVar[ConnectionLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = type(self).limits or limits_from_env()
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = False
        self._refused = False

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            self._refuse()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is sent; what the client still sends is read and dropped
        super().data_received(data)

    def eof_received(self) -> None:
        if self._refused:
            self.transport.close()

    def _refuse(self) -> None:
        self._refused = True
        limits = self._limits
        _refusals.refused_one(len(self.connections) - 1, limits.max_connections)
        self.transport.write(
            _answer(
                "503 Service Unavailable",
                f"the gateway holds its maximum of {limits.max_connections} connections "
                "(GATEWAY_MAX_CONNECTIONS); retry later",
                f"retry-after: {limits.retry_after_s}\r\n".encode(),
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(REFUSAL_LINGER_S, self.transport.close)
        else:  # pragma: no cover - TCP transports can
            self.transport.close()

    # -- request heads -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_started = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._head_started = False
        self._disarm_head_timer()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A pipelined request may have started (its head is complete): its time is the app's.
        running = self.cycle is not None and not self.cycle.response_complete
        if running or self.transport.is_closing():
            return
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a request is running: not waiting for a head
        if self._head_started:
            timeout = self._limits.header_timeout_s
            self.transport.write(
                _answer(
                    "408 Request Timeout",
                    f"request head not received within {timeout} s (GATEWAY_HEADER_TIMEOUT_S)",
                )
            )
        self.transport.close()


def serve(settings: GatewaySettings) -> None:
    """Run the gateway's uvicorn server(s) with :class:`GatewayHttpProtocol`."""
    import uvicorn

    uvicorn.run(
        "gateway.app:app_from_env",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        loop="uvloop",
        http=GatewayHttpProtocol,
        access_log=False,
        log_level="warning",
    )
