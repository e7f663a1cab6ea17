"""Reading a write request's body: size limits, gzip, and snappy blocks (remote write)."""

from __future__ import annotations

import asyncio
import zlib
from typing import Protocol

import cramjam
from fastapi import Request

from gateway.base import (
    BadRequestError,
    PayloadTooLargeError,
    RequestError,
    UnsupportedEncodingError,
)
from gateway.remote_write import snappy_uncompressed_length


class BodyTimeoutError(RequestError):
    """The client did not send its whole body in time (408)."""

    status = 408
    reason = "timeout"


class _Reservation(Protocol):
    def grow_to(self, cost: int, what: str) -> None: ...


async def read_body(
    request: Request,
    limit: int,
    *,
    snappy: bool = False,
    timeout_s: float | None = None,
    reservation: _Reservation | None = None,
) -> bytes:
    """The body, decompressed (gzip, or snappy block for remote write), at most ``limit``;
    all of it within ``timeout_s`` (408), its received bytes held in ``reservation`` as they
    arrive (429 when the gateway's in-flight budget is taken)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"request body larger than {limit} bytes")
                if reservation is not None:
                    reservation.grow_to(size, "the request body")
                chunks.append(chunk)
    except TimeoutError:
        raise BodyTimeoutError(
            f"request body not received within {timeout_s} s (GATEWAY_BODY_TIMEOUT_S); "
            f"{size} bytes arrived"
        ) from None
    body = b"".join(chunks)
    del chunks
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        pass
    elif encoding == "gzip":
        body = await asyncio.to_thread(gunzip_limited, body, limit)
    elif encoding == "snappy" and snappy:
        pass
    else:
        raise UnsupportedEncodingError(f"unsupported Content-Encoding {encoding!r}")
    if snappy:
        if snappy_uncompressed_length(body) > limit:
            raise PayloadTooLargeError(f"decompressed body larger than {limit} bytes")
        try:
            body = bytes(cramjam.snappy.decompress_raw(body))
        except Exception as exc:  # cramjam raises its own DecompressionError
            raise BadRequestError(f"invalid snappy block: {exc}") from None
    return body


#: Compressed bytes fed to zlib at a time. A gzip member ends somewhere inside a feed and zlib
#: copies what follows it (``unused_data``) to start the next member: feeding small pieces
#: keeps that copy small, so many tiny members cost linear, not quadratic, time.
_GZIP_FEED_BYTES = 4096


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress (multi-member) gzip, refusing output larger than ``limit`` (413); linear in
    the input whatever the number of members."""
    out: list[bytes] = []
    size = 0
    view = memoryview(data)
    pos = 0
    pending = b""  # input after the end of the previous member
    d = zlib.decompressobj(wbits=31)
    fed = False  # the current member has received input
    while True:
        if pending:
            piece: bytes | memoryview = pending
            pending = b""
        elif pos < len(data):
            piece = view[pos : pos + _GZIP_FEED_BYTES]
            pos += len(piece)
        else:
            break
        fed = True
        try:
            part = d.decompress(piece, limit - size + 1)
        except zlib.error as exc:
            raise BadRequestError(f"invalid gzip body: {exc}") from None
        size += len(part)
        if size > limit:
            raise PayloadTooLargeError(f"decompressed body larger than {limit} bytes")
        out.append(part)
        if d.eof:
            pending = d.unused_data
            d = zlib.decompressobj(wbits=31)
            fed = False
    if fed and not d.eof:
        raise BadRequestError("invalid gzip body: truncated")
    return b"".join(out)
