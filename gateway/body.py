"""Reading a write request's body: size limits, gzip, and snappy blocks (remote write)."""

from __future__ import annotations

import zlib

import cramjam
from fastapi import Request

from gateway.base import BadRequestError, PayloadTooLargeError, UnsupportedEncodingError
from gateway.remote_write import snappy_uncompressed_length


async def read_body(request: Request, limit: int, *, snappy: bool = False) -> bytes:
    """The body, decompressed (gzip, or snappy block for remote write), at most ``limit``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise PayloadTooLargeError(f"request body larger than {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body larger than {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        pass
    elif encoding == "gzip":
        body = gunzip_limited(body, limit)
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


def gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress (multi-member) gzip, refusing output larger than ``limit`` (413)."""
    out: list[bytes] = []
    size = 0
    while data:
        d = zlib.decompressobj(wbits=31)
        try:
            part = d.decompress(data, limit - size + 1)
        except zlib.error as exc:
            raise BadRequestError(f"invalid gzip body: {exc}") from None
        size += len(part)
        if size > limit:
            raise PayloadTooLargeError(f"decompressed body larger than {limit} bytes")
        if not d.eof:
            raise BadRequestError("invalid gzip body: truncated")
        out.append(part)
        data = d.unused_data
    return b"".join(out)
