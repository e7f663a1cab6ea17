"""The FastAPI application factory: :func:`create_app`.

Endpoints (docs/ingestion.md):

* InfluxDB v1: ``POST /write`` (``db``, ``rp``, ``precision`` n/u/ms/s/m/h, auth ``u``/``p``,
  Basic or ``Token``), ``GET|HEAD /ping`` (204, ``X-Influxdb-Version``).
* InfluxDB v2: ``POST /api/v2/write`` (``bucket`` = ``db`` or ``db/rp``, ``org``,
  ``precision`` ns/us/ms/s, ``Authorization: Token``).
* Prometheus remote write 1.0: ``POST /api/v1/write`` (``db`` query parameter).
* JSON: ``POST /api/v1/json`` (``db``, ``rp``, ``precision`` as v1).
* ``GET /health`` (Kafka reachable), ``GET /metrics`` (Prometheus).

204 means every point of the request was acknowledged by Kafka (``acks=all``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
import zlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Literal

import cramjam
from fastapi import Depends, FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.base import (
    BadRequestError,
    ParsedWrite,
    PayloadTooLargeError,
    RequestError,
    UnauthorizedError,
)
from gateway.json_write import parse_json_points
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.query.router import create_query_router
from gateway.remote_write import decode_write_request, snappy_uncompressed_length
from gateway.settings import GatewaySettings
from metricsflow.errors import MetricsflowError, ParseError
from metricsflow.model.lineprotocol import PRECISION_V1, PRECISION_V2, canonicalize

logger = logging.getLogger(__name__)

INFLUXDB_VERSION = "1.8.10"
"""Reported in ``X-Influxdb-Version``: the v1 API generation the gateway imitates."""
_V1_HEADERS = {"X-Influxdb-Version": INFLUXDB_VERSION, "X-Influxdb-Build": "OSS"}
Style = Literal["v1", "v2"]
_V2_CODES = {
    400: "invalid",
    401: "unauthorized",
    413: "request too large",
    415: "invalid",
    429: "too many requests",
    503: "unavailable",
}
Parser = Callable[[bytes, int], tuple[list[str], list[str]]]


def error_response(exc: RequestError, style: Style) -> JSONResponse:
    """The endpoint's error shape: v1 ``{"error": ...}``, v2 ``{"code", "message"}``."""
    headers = dict(_V1_HEADERS)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(int(exc.retry_after_s))
    if style == "v2":
        body: dict[str, str] = {"code": _V2_CODES.get(exc.status, "invalid"), "message": str(exc)}
    else:
        body = {"error": str(exc)}
    return JSONResponse(body, status_code=exc.status, headers=headers)


class UnsupportedEncodingError(RequestError):
    status = 415
    reason = "encoding"


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def get_writer(request: Request) -> KafkaWriter:
    writer: KafkaWriter = request.app.state.writer
    return writer


def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[GatewaySettings, Depends(get_settings)]
WriterDep = Annotated[KafkaWriter, Depends(get_writer)]
MetricsDep = Annotated[GatewayMetrics, Depends(get_metrics)]
OptStr = Annotated[str | None, Query()]


def check_token(request: Request, tokens: list[str], query_password: str | None) -> None:
    """Accept ``Authorization: Token|Bearer <t>``, Basic (password = token), or ``p=<t>``."""
    if not tokens:
        return
    token: str | None = None
    auth = request.headers.get("authorization")
    if auth:
        scheme, _, cred = auth.partition(" ")
        scheme = scheme.lower()
        if scheme in ("token", "bearer"):
            token = cred.strip()
        elif scheme == "basic":
            try:
                token = base64.b64decode(cred.strip()).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                token = None
    if token is None:
        token = query_password
    if token is None:
        raise UnauthorizedError("authorization failed: missing token")
    if not any(hmac.compare_digest(token.encode(), t.encode()) for t in tokens):
        raise UnauthorizedError("authorization failed")


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


def _lp_parser(settings: GatewaySettings, factor: int) -> Parser:
    limits = settings.limits

    def parse(body: bytes, received_ns: int) -> tuple[list[str], list[str]]:
        try:
            return canonicalize(
                body, precision_factor=factor, default_time_ns=received_ns, limits=limits
            )
        except ParseError as exc:
            raise BadRequestError(f"{exc} (text: {exc.text!r})") from None

    return parse


async def ingest(
    request: Request,
    *,
    endpoint: str,
    style: Style,
    db: str | None,
    rp: str | None,
    parser: Parser | None,
    password: str | None = None,
    snappy: bool = False,
) -> Response:
    """Authenticate, read, validate all-or-nothing, produce, and reply."""
    settings: GatewaySettings = request.app.state.settings
    writer: KafkaWriter = request.app.state.writer
    metrics: GatewayMetrics = request.app.state.metrics
    received_ns = time.time_ns()
    dropped: dict[str, int] = {}
    try:
        check_token(request, settings.tokens, password)
        if not db:
            raise BadRequestError("database is required" if style == "v1" else "bucket is required")
        if parser is None and not snappy:
            raise BadRequestError("invalid precision")
        body = await read_body(request, settings.max_body_bytes, snappy=snappy)
        if parser is None:
            keys, lines = decode_write_request(body, dropped)
        else:
            keys, lines = parser(body, received_ns)
        writer.reserve(len(body))
        await writer.write(ParsedWrite(db, rp, keys, lines, received_ns, len(body)), len(body))
    except RequestError as exc:
        metrics.rejects.labels(endpoint, exc.reason).inc()
        metrics.requests.labels(endpoint, str(exc.status)).inc()
        if exc.status >= 500:
            logger.warning("write rejected endpoint=%s status=%d: %s", endpoint, exc.status, exc)
        return error_response(exc, style)
    for reason, count in dropped.items():
        metrics.dropped_samples.labels(reason).inc(count)
    metrics.requests.labels(endpoint, "204").inc()
    metrics.points.labels(endpoint).inc(len(lines))
    metrics.bytes.labels(endpoint).inc(len(body))
    return Response(status_code=204, headers=_V1_HEADERS)


class _QueryAuthError(MetricsflowError):
    """Carries a 401 out of the ``/query`` auth dependency to its v1-style reply."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(str(error))
        self.error = error


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """A new gateway app; its lifespan owns the Kafka producer."""
    settings = settings or GatewaySettings()

    metrics = GatewayMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        writer = KafkaWriter(settings, metrics)
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.writer = writer
        await writer.start()
        try:
            yield
        finally:
            await writer.stop()

    app = FastAPI(title="metricsflow gateway", lifespan=lifespan, docs_url=None, redoc_url=None)

    async def query_auth(request: Request) -> None:
        # Reads are guarded by the same tokens as writes: a gateway with tokens configured
        # must not serve the data it protects to anonymous callers.
        try:
            check_token(request, settings.tokens, request.query_params.get("p"))
        except RequestError as exc:
            raise _QueryAuthError(exc) from exc

    @app.exception_handler(_QueryAuthError)
    async def query_auth_failed(_request: Request, exc: _QueryAuthError) -> Response:
        return error_response(exc.error, "v1")

    app.include_router(
        create_query_router(registry=metrics.registry), dependencies=[Depends(query_auth)]
    )

    @app.post("/write")
    async def write_v1(
        request: Request,
        db: OptStr = None,
        rp: OptStr = None,
        precision: OptStr = None,
        u: OptStr = None,
        p: OptStr = None,
    ) -> Response:
        factor = PRECISION_V1.get(precision or "n")
        parser = _lp_parser(request.app.state.settings, factor) if factor else None
        return await ingest(
            request,
            endpoint="v1_write",
            style="v1",
            db=db,
            rp=rp or None,
            parser=parser,
            password=p,
        )

    @app.post("/api/v2/write")
    async def write_v2(
        request: Request,
        bucket: OptStr = None,
        org: OptStr = None,
        precision: OptStr = None,
    ) -> Response:
        factor = PRECISION_V2.get(precision or "ns")
        parser = _lp_parser(request.app.state.settings, factor) if factor else None
        db, _, rp = (bucket or "").partition("/")
        return await ingest(
            request, endpoint="v2_write", style="v2", db=db, rp=rp or None, parser=parser
        )

    @app.post("/api/v1/write")
    async def write_prometheus(request: Request, db: OptStr = None) -> Response:
        s: GatewaySettings = request.app.state.settings
        return await ingest(
            request,
            endpoint="remote_write",
            style="v1",
            db=db or s.prometheus_db,
            rp=None,
            parser=None,
            snappy=True,
        )

    @app.post("/api/v1/json")
    async def write_json(
        request: Request, db: OptStr = None, rp: OptStr = None, precision: OptStr = None
    ) -> Response:
        s: GatewaySettings = request.app.state.settings
        factor = PRECISION_V1.get(precision or "n")
        parser: Parser | None = None
        if factor:

            def parser(body: bytes, received_ns: int) -> tuple[list[str], list[str]]:
                return parse_json_points(
                    body, precision_factor=factor, default_time_ns=received_ns, limits=s.limits
                )

        return await ingest(
            request, endpoint="json", style="v1", db=db, rp=rp or None, parser=parser
        )

    @app.api_route("/ping", methods=["GET", "HEAD"])
    async def ping() -> Response:
        return Response(status_code=204, headers=_V1_HEADERS)

    @app.get("/health")
    async def health(writer: WriterDep) -> JSONResponse:
        ok = await writer.healthy()
        body = {
            "name": "metricsflow-gateway",
            "status": "pass" if ok else "fail",
            "message": "kafka reachable" if ok else "kafka not reachable",
        }
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint(metrics: MetricsDep) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``factory=True``): settings from ``GATEWAY_*`` in each worker."""
    return create_app(GatewaySettings())
