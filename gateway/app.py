"""The FastAPI application factory: :func:`create_app`.

Routes (:mod:`gateway.routes`): the write endpoints (:mod:`~gateway.routes.write`),
``/query`` (:mod:`~gateway.routes.query`), and ``/ping``, ``/health``, ``/metrics``
(:mod:`~gateway.routes.ops`). Their dependencies are in :mod:`gateway.deps`; every refusal
is a :class:`~gateway.base.RequestError`, answered by the one handler registered here.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import Response

from gateway.base import RequestError
from gateway.decoding import shutdown_decoder
from gateway.deps import get_metrics, write_endpoint_of
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.responses import error_response
from gateway.routes import ops, query, write
from gateway.settings import GatewaySettings

logger = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Owns the Kafka producer: started before the first request, stopped after the last."""
    writer = KafkaWriter(app.state.settings, app.state.metrics)
    app.state.writer = writer
    await writer.start()
    # What startup built (FastAPI, pydantic, aiokafka, protobuf: ~10^5 objects) lives as long
    # as the process: out of the cyclic collector's reach, so that a full collection during a
    # large request walks only that request's objects, not a stall of the event loop.
    gc.freeze()
    try:
        yield
    finally:
        shutdown_decoder()
        await writer.stop()


async def handle_request_error(request: Request, exc: Exception) -> Response:
    """Every refused request: the endpoint's error shape (v1 unless it is a v2 write), and,
    for a write endpoint, its ``gateway_rejects`` and ``gateway_requests`` counts."""
    assert isinstance(exc, RequestError)
    endpoint = write_endpoint_of(request)
    if endpoint is None:
        return error_response(exc, "v1")
    metrics = get_metrics(request)
    metrics.rejects.labels(endpoint.name, exc.reason).inc()
    metrics.requests.labels(endpoint.name, str(exc.status)).inc()
    if exc.status >= 500:
        logger.warning("write rejected endpoint=%s status=%d: %s", endpoint.name, exc.status, exc)
    return error_response(exc, endpoint.style)


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """A new gateway app; its lifespan owns the Kafka producer."""
    app = FastAPI(title="metricsflow gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    metrics = GatewayMetrics()
    app.state.settings = settings or GatewaySettings()
    app.state.metrics = metrics
    app.include_router(write.router)
    app.include_router(query.create_router(metrics.registry))
    app.include_router(ops.router)
    app.add_exception_handler(RequestError, handle_request_error)
    return app


def app_from_env() -> FastAPI:
    """uvicorn factory (``factory=True``): settings from ``GATEWAY_*`` in each worker."""
    return create_app(GatewaySettings())
