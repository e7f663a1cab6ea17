"""``GET|POST /query``: the tier-aware InfluxQL API of :mod:`gateway.query`, behind the
write tokens and the admin tokens (:func:`gateway.deps.check_token`). The planning,
rewriting and proxying live in :mod:`gateway.query.router`; this router only puts them into
the app."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from prometheus_client import CollectorRegistry

from gateway.deps import SettingsDep, check_token
from gateway.query.base import QuerySettings
from gateway.query.router import create_query_router


def create_router(registry: CollectorRegistry) -> APIRouter:
    """The ``/query`` routes, counting statements per tier in the app's ``registry``.

    Reads are guarded by the write tokens (header, or ``p=``), so a gateway with tokens does
    not serve the data it protects to anonymous callers; an admin token
    (``GATEWAY_QUERY_ADMIN_TOKENS``) is accepted here too, and the query router then decides
    which statements it may run."""
    query_settings = QuerySettings()

    def require_query_token(request: Request, settings: SettingsDep) -> None:
        tokens = settings.tokens
        if tokens:
            tokens = [*tokens, *query_settings.query_admin_tokens]
        check_token(request, tokens, request.query_params.get("p"))

    router = APIRouter(dependencies=[Depends(require_query_token)])
    router.include_router(create_query_router(query_settings, registry=registry))
    return router
