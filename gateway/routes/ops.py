"""Operations: ``GET|HEAD /ping`` (204, ``X-Influxdb-Version``), ``GET /health`` (Kafka
reachable: 200, else 503), ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.deps import MetricsDep, WriterDep
from gateway.responses import V1_HEADERS

router = APIRouter()


@router.api_route("/ping", methods=["GET", "HEAD"])
async def ping() -> Response:
    return Response(status_code=204, headers=V1_HEADERS)


@router.get("/health")
async def health(writer: WriterDep) -> JSONResponse:
    ok = await writer.healthy()
    body = {
        "name": "metricsflow-gateway",
        "status": "pass" if ok else "fail",
        "message": "kafka reachable" if ok else "kafka not reachable",
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
