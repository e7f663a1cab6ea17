"""``GET|POST /query``: the tier-aware InfluxQL API of :mod:`gateway.query`, behind the
write tokens (:func:`gateway.deps.require_token`). The planning, rewriting and proxying live
in :mod:`gateway.query.router`; this router only puts them into the app."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from prometheus_client import CollectorRegistry

from gateway.deps import require_token
from gateway.query.router import create_query_router


def create_router(registry: CollectorRegistry) -> APIRouter:
    """The ``/query`` routes, counting statements per tier in the app's ``registry``."""
    router = APIRouter(dependencies=[Depends(require_token)])
    router.include_router(create_query_router(registry=registry))
    return router
