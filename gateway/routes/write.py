"""The write endpoints: validate, produce, and answer 204 (or InfluxDB's partial write).

* InfluxDB v1: ``POST /write`` (``db``, ``rp``, ``precision`` n/u/ms/s/m/h, auth ``u``/``p``,
  Basic or ``Token``).
* InfluxDB v2: ``POST /api/v2/write`` (``bucket`` = ``db`` or ``db/rp``, ``org``,
  ``precision`` ns/us/ms/s, ``Authorization: Token``).
* Prometheus remote write 1.0: ``POST /api/v1/write`` (``db`` query parameter); its metadata
  (metric types) is produced as ``kinds1`` declarations before its samples
  (:mod:`gateway.declarations`).
* JSON: ``POST /api/v1/json`` (``db``, ``rp``, ``precision`` as v1).

204 means every point of the request was acknowledged by Kafka (``acks=all``). Line protocol
follows InfluxDB's partial writes (``GATEWAY_PARTIAL_WRITES``, default on): the valid lines are
produced and acknowledged, then the answer is 400 ``partial write: unable to parse '<line>':
<reason> (line L, column C) ... dropped=N`` (at most :data:`MAX_NAMED_LINES` lines named). When
no line is valid, or partial writes are off, nothing is produced and the 400 names the refused
lines. ``rp`` may be empty, the raw tier's name or ``autogen`` (all mean the raw tier); any
other is refused (docs/ingestion.md).

A refused request raises a :class:`~gateway.base.RequestError`; the app's exception handler
answers it in the endpoint's style and counts it (the :class:`~gateway.deps.WriteEndpoint`
dependency of each route says which endpoint that is).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from functools import cache
from typing import Annotated, Final

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from gateway.admission import (
    COST_PER_BYTE,
    JSON_COST_PER_BYTE,
    Reservation,
    check_target,
    line_protocol_cost,
    lines_cost,
    parse_line_protocol_in_slices,
)
from gateway.base import BadRequestError, ParsedWrite, PartialWriteError
from gateway.body import read_body
from gateway.declarations import declared_kinds
from gateway.decoding import in_child, json_to_line_protocol, remote_write_to_line_protocol
from gateway.deps import MetricsDep, SettingsDep, WriteEndpoint, WriterDep
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.query.base import QuerySettings
from gateway.responses import V1_HEADERS
from gateway.settings import GatewaySettings
from metricsflow.model import ParseError
from metricsflow.model.lineprotocol import PRECISION_V1, PRECISION_V2, Limits, canonicalize

Parsed = tuple[list[str], list[str], list[ParseError]]
Parser = Callable[[bytes, int], Parsed]
"""``(body, received_ns) -> (series_keys, canonical_lines, refused lines)``; raises
BadRequestError when the request as a whole is refused."""
MAX_NAMED_LINES: Final = 20
"""Most refused lines an error answer names (the count is always exact)."""
_TEXT_CLIP: Final = 200
OptStr = Annotated[str | None, Query()]

V1_WRITE = WriteEndpoint("v1_write", "v1", password_param=True)
V2_WRITE = WriteEndpoint("v2_write", "v2")
REMOTE_WRITE = WriteEndpoint("remote_write", "v1")
JSON_WRITE = WriteEndpoint("json", "v1")

router = APIRouter()


def _lp_parser(settings: GatewaySettings, factor: int) -> Parser:
    def parse(body: bytes, received_ns: int) -> Parsed:
        limits = settings.limits_at(received_ns)
        result = canonicalize(
            body, precision_factor=factor, default_time_ns=received_ns, limits=limits
        )
        return result.series_keys, result.lines, result.errors

    return parse


def describe_refused(errors: list[ParseError]) -> str:
    """InfluxDB's ``unable to parse '<line>': <reason>`` per refused line, with our line and
    column, one per line of text, at most :data:`MAX_NAMED_LINES`."""
    parts = []
    for e in errors[:MAX_NAMED_LINES]:
        text = e.text if len(e.text) <= _TEXT_CLIP else e.text[:_TEXT_CLIP] + "..."
        parts.append(f"unable to parse '{text}': {e.reason} (line {e.line}, column {e.column})")
    if len(errors) > MAX_NAMED_LINES:
        parts.append(f"... and {len(errors) - MAX_NAMED_LINES} more refused lines")
    return "\n".join(parts)


@cache
def _tiers() -> tuple[str, frozenset[str]]:
    """The raw tier's name and every tier's (``GATEWAY_QUERY_TIERS``, the workers' tiers)."""
    query = QuerySettings()
    return query.raw_tier, frozenset(t.name for t in query.tiers)


def raw_retention_policy(rp: str | None) -> str | None:
    """The ``rp`` of a write, checked: empty, ``raw`` or ``autogen`` all mean the raw tier
    (the workers write every point there); a downsampled tier's policy, or any other name,
    is refused with InfluxDB's ``retention policy not found: <rp>``."""
    raw, tiers = _tiers()
    if not rp or rp in (raw, "autogen"):
        return rp or None
    if rp in tiers:
        raise BadRequestError(
            f"retention policy not found: {rp} (it holds a downsampled tier, which the "
            f"workers compute; write raw points with no rp or rp={raw})"
        )
    raise BadRequestError(f"retention policy not found: {rp}")


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
    json_factor: int | None = None,
) -> Response:
    """Read, validate, produce, and reply 204 or a partial write (auth is the route's
    dependency)."""
    received_ns = time.time_ns()
    dropped: dict[str, int] = {}
    if not db:
        raise BadRequestError(
            "database is required" if endpoint.style == "v1" else "bucket is required"
        )
    if parser is None and not snappy:
        raise BadRequestError("invalid precision")
    rp = raw_retention_policy(rp)
    check_target(db, rp)
    # The request's memory cost is reserved before parsing (gateway/admission.py).
    reservation = Reservation(writer, settings.max_inflight_bytes)
    try:
        body = await read_body(
            request,
            settings.max_body_bytes,
            snappy=snappy,
            timeout_s=settings.body_timeout_s,
            reservation=reservation,
        )
        errors: list[ParseError] = []
        metadata: list[tuple[str, int]] = []
        # JSON and remote write: decoded in a child process into line protocol, which is
        # then read here in slices like any line-protocol body (gateway/decoding.py)
        ns_lines = functools.partial(_reread, settings.limits_at(received_ns), received_ns)
        if parser is None:
            reservation.grow_to(COST_PER_BYTE * len(body), "the request")
            text, child_dropped, metadata = await in_child(
                remote_write_to_line_protocol,
                body,
                settings.limits_at(received_ns),
                settings.max_body_bytes,
                settings.remote_write_metadata,
            )
            for reason, count in child_dropped.items():
                dropped[reason] = dropped.get(reason, 0) + count
            keys, lines, errors = await parse_line_protocol_in_slices(text, ns_lines)
            reservation.grow_to(lines_cost(lines), "the request")
        elif json_factor is not None:
            reservation.grow_to(JSON_COST_PER_BYTE * len(body), "the request")
            text = await in_child(
                json_to_line_protocol,
                body,
                json_factor,
                received_ns,
                settings.limits_at(received_ns),
            )
            keys, lines, errors = await parse_line_protocol_in_slices(text, ns_lines)
        else:
            reservation.grow_to(line_protocol_cost(body), "the request")
            keys, lines, errors = await parse_line_protocol_in_slices(
                body, functools.partial(_call_parser, parser, received_ns=received_ns)
            )
        whole = parser is None or json_factor is not None  # JSON, remote write: all or nothing
        if errors and (not lines or not settings.partial_writes or whole):
            raise BadRequestError(describe_refused(errors))  # nothing is written
        if metadata:
            # before the samples: in each partition's log, the declaration precedes them
            await writer.declare(db, rp, declared_kinds(metadata), received_ns)
    except BaseException:
        reservation.release()
        raise
    if lines:
        parsed = ParsedWrite(db, rp, keys, lines, received_ns, len(body))
        await writer.write(parsed, reservation.hand_over())
    else:
        reservation.release()
    for reason, count in dropped.items():
        metrics.dropped_samples.labels(reason).inc(count)
    metrics.points.labels(endpoint.name).inc(len(lines))
    metrics.bytes.labels(endpoint.name).inc(len(body))
    if errors:
        metrics.dropped_samples.labels("parse").inc(len(errors))
        raise PartialWriteError(f"partial write: {describe_refused(errors)} dropped={len(errors)}")
    metrics.requests.labels(endpoint.name, "204").inc()
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
    return await ingest(
        request,
        JSON_WRITE,
        settings=settings,
        writer=writer,
        metrics=metrics,
        db=db,
        rp=rp or None,
        parser=_lp_parser(settings, 1) if factor else None,
        json_factor=factor,
    )


def _reread(limits: Limits, received_ns: int, chunk: bytes) -> Parsed:
    """Line protocol a decoding child produced (ns timestamps, checked by its endpoint's
    rules, which allow unsigned integers in JSON)."""
    reread = dataclasses.replace(limits, allow_unsigned=True)
    result = canonicalize(chunk, precision_factor=1, default_time_ns=received_ns, limits=reread)
    return result.series_keys, result.lines, result.errors


def _call_parser(parser: Parser, body: bytes, *, received_ns: int) -> Parsed:
    return parser(body, received_ns)
