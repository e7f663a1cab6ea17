"""The write endpoints: every one validates all or nothing, produces, and answers 204.

* InfluxDB v1: ``POST /write`` (``db``, ``rp``, ``precision`` n/u/ms/s/m/h, auth ``u``/``p``,
  Basic or ``Token``).
* InfluxDB v2: ``POST /api/v2/write`` (``bucket`` = ``db`` or ``db/rp``, ``org``,
  ``precision`` ns/us/ms/s, ``Authorization: Token``).
* Prometheus remote write 1.0: ``POST /api/v1/write`` (``db`` query parameter).
* JSON: ``POST /api/v1/json`` (``db``, ``rp``, ``precision`` as v1).

204 means every point of the request was acknowledged by Kafka (``acks=all``). A refused
request raises a :class:`~gateway.base.RequestError`; the app's exception handler answers it
in the endpoint's style and counts it (the :class:`~gateway.deps.WriteEndpoint` dependency of
each route says which endpoint that is).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from gateway.base import BadRequestError, ParsedWrite
from gateway.body import read_body
from gateway.deps import MetricsDep, SettingsDep, WriteEndpoint, WriterDep
from gateway.json_write import parse_json_points
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.remote_write import decode_write_request
from gateway.responses import V1_HEADERS
from gateway.settings import GatewaySettings
from metricsflow.model import ParseError
from metricsflow.model.lineprotocol import PRECISION_V1, PRECISION_V2, canonicalize

Parser = Callable[[bytes, int], tuple[list[str], list[str]]]
"""``(body, received_ns) -> (series_keys, canonical_lines)``; raises BadRequestError."""
OptStr = Annotated[str | None, Query()]

V1_WRITE = WriteEndpoint("v1_write", "v1", password_param=True)
V2_WRITE = WriteEndpoint("v2_write", "v2")
REMOTE_WRITE = WriteEndpoint("remote_write", "v1")
JSON_WRITE = WriteEndpoint("json", "v1")

router = APIRouter()


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


def _json_parser(settings: GatewaySettings, factor: int) -> Parser:
    limits = settings.limits

    def parse(body: bytes, received_ns: int) -> tuple[list[str], list[str]]:
        return parse_json_points(
            body, precision_factor=factor, default_time_ns=received_ns, limits=limits
        )

    return parse


async def ingest(
    request: Request,
    endpoint: WriteEndpoint,
    *,
    settings: GatewaySettings,
    writer: KafkaWriter,
    metrics: GatewayMetrics,
    db: str | None,
    rp: str | None,
    parser: Parser | None,
    snappy: bool = False,
) -> Response:
    """Read, validate all-or-nothing, produce, and reply 204 (auth is the route's dependency)."""
    received_ns = time.time_ns()
    dropped: dict[str, int] = {}
    if not db:
        raise BadRequestError(
            "database is required" if endpoint.style == "v1" else "bucket is required"
        )
    if parser is None and not snappy:
        raise BadRequestError("invalid precision")
    body = await read_body(request, settings.max_body_bytes, snappy=snappy)
    if parser is None:
        keys, lines = decode_write_request(body, dropped)
    else:
        keys, lines = parser(body, received_ns)
    writer.reserve(len(body))
    await writer.write(ParsedWrite(db, rp, keys, lines, received_ns, len(body)), len(body))
    for reason, count in dropped.items():
        metrics.dropped_samples.labels(reason).inc(count)
    metrics.requests.labels(endpoint.name, "204").inc()
    metrics.points.labels(endpoint.name).inc(len(lines))
    metrics.bytes.labels(endpoint.name).inc(len(body))
    return Response(status_code=204, headers=V1_HEADERS)


@router.post("/write", dependencies=[Depends(V1_WRITE)])
async def write_v1(
    request: Request,
    settings: SettingsDep,
    writer: WriterDep,
    metrics: MetricsDep,
    db: OptStr = None,
    rp: OptStr = None,
    precision: OptStr = None,
) -> Response:
    factor = PRECISION_V1.get(precision or "n")
    parser = _lp_parser(settings, factor) if factor else None
    return await ingest(
        request,
        V1_WRITE,
        settings=settings,
        writer=writer,
        metrics=metrics,
        db=db,
        rp=rp or None,
        parser=parser,
    )


@router.post("/api/v2/write", dependencies=[Depends(V2_WRITE)])
async def write_v2(
    request: Request,
    settings: SettingsDep,
    writer: WriterDep,
    metrics: MetricsDep,
    bucket: OptStr = None,
    org: OptStr = None,
    precision: OptStr = None,
) -> Response:
    factor = PRECISION_V2.get(precision or "ns")
    parser = _lp_parser(settings, factor) if factor else None
    db, _, rp = (bucket or "").partition("/")
    return await ingest(
        request,
        V2_WRITE,
        settings=settings,
        writer=writer,
        metrics=metrics,
        db=db,
        rp=rp or None,
        parser=parser,
    )


@router.post("/api/v1/write", dependencies=[Depends(REMOTE_WRITE)])
async def write_prometheus(
    request: Request,
    settings: SettingsDep,
    writer: WriterDep,
    metrics: MetricsDep,
    db: OptStr = None,
) -> Response:
    return await ingest(
        request,
        REMOTE_WRITE,
        settings=settings,
        writer=writer,
        metrics=metrics,
        db=db or settings.prometheus_db,
        rp=None,
        parser=None,
        snappy=True,
    )


@router.post("/api/v1/json", dependencies=[Depends(JSON_WRITE)])
async def write_json(
    request: Request,
    settings: SettingsDep,
    writer: WriterDep,
    metrics: MetricsDep,
    db: OptStr = None,
    rp: OptStr = None,
    precision: OptStr = None,
) -> Response:
    factor = PRECISION_V1.get(precision or "n")
    parser = _json_parser(settings, factor) if factor else None
    return await ingest(
        request,
        JSON_WRITE,
        settings=settings,
        writer=writer,
        metrics=metrics,
        db=db,
        rp=rp or None,
        parser=parser,
    )
