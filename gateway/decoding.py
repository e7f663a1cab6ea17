"""JSON and remote-write bodies are decoded in a child process, into line protocol.

Decoding a JSON document (``orjson.loads``) or a protobuf ``WriteRequest`` is one C call that
holds the interpreter lock for its whole length (seconds for a 25 MB body on a loaded
machine), and the millions of objects it builds make the cyclic garbage collector stop every
thread for hundreds of milliseconds: in a worker thread of the gateway, either stalls the event
loop (``/ping``, every other request). So the gateway sends such a body to a child process
(one per gateway process, started on first use), which checks it as before (a 400 naming the
point or the sample is raised there and re-raised here) and answers the canonical line
protocol of its points as one ``bytes``; the gateway then reads that like any line-protocol
body, in slices with a turn of the event loop between them
(:func:`gateway.admission.parse_line_protocol_in_slices`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from gateway.base import RequestError
from gateway.json_write import parse_json_points
from gateway.remote_write import decode_write_request
from metricsflow.model.lineprotocol import Limits

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DecoderUnavailableError(RequestError):
    """The decoding child process died (503; the next request starts a new one)."""

    status = 503
    reason = "decoder"


_pool: ProcessPoolExecutor | None = None


def _executor() -> ProcessPoolExecutor:
    global _pool
    if _pool is None:
        # spawn: the gateway has threads (Kafka client, uvloop); forking them is unsafe
        _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    return _pool


def shutdown_decoder() -> None:
    """Stop the child process (the app's lifespan calls this at shutdown)."""
    global _pool
    if _pool is not None:
        _pool.shutdown(wait=False, cancel_futures=True)
        _pool = None


async def in_child(fn: Callable[..., T], *args: object) -> T:
    """``fn(*args)`` in the decoding child process; its :class:`RequestError` re-raised here."""
    global _pool
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_executor(), functools.partial(fn, *args))
    except BrokenProcessPool:
        logger.warning("decoding child process died; starting a new one on the next request")
        _pool = None
        raise DecoderUnavailableError("the decoding process died; retry") from None


def json_to_line_protocol(
    body: bytes, precision_factor: int, default_time_ns: int, limits: Limits
) -> bytes:
    """(child) The canonical line protocol of a JSON body's points, one per line."""
    _, lines = parse_json_points(
        body, precision_factor=precision_factor, default_time_ns=default_time_ns, limits=limits
    )
    return "\n".join(lines).encode()


def remote_write_to_line_protocol(
    body: bytes, limits: Limits, max_bytes: int, with_metadata: bool = False
) -> tuple[bytes, dict[str, int], list[tuple[str, int]]]:
    """(child) The canonical line protocol of a ``WriteRequest``'s samples, the counts of
    samples dropped on purpose, by reason, and (``with_metadata``) its metadata entries,
    ``(family, type)``."""
    dropped: dict[str, int] = {}
    metadata: list[tuple[str, int]] | None = [] if with_metadata else None
    _, lines = decode_write_request(body, dropped, limits, max_bytes, metadata)
    return "\n".join(lines).encode(), dropped, metadata or []
