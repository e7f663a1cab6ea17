"""The dependencies of the gateway's routes: settings, Kafka writer, metrics, and auth.

The app keeps one of each in ``app.state`` (settings and metrics from :func:`gateway.app.
create_app`, the writer from its lifespan); routes ask for them as ``Annotated`` parameters
(``settings: SettingsDep``) and never read ``app.state`` themselves.

Authentication is a dependency too: :class:`WriteEndpoint` (the write routes) and
:func:`check_token` (``/query``, see :mod:`gateway.routes.query`) raise
:class:`~gateway.base.UnauthorizedError`, which the app's exception handler answers with 401.
"""

# No ``from __future__ import annotations``: FastAPI resolves the annotations of a callable
# instance's ``__call__`` (WriteEndpoint) only when they are real objects, not strings.

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from gateway.base import UnauthorizedError
from gateway.metrics import GatewayMetrics
from gateway.producer import KafkaWriter
from gateway.responses import Style
from gateway.settings import GatewaySettings


def get_settings(request: Request) -> GatewaySettings:
    settings: GatewaySettings = request.app.state.settings
    return settings


def get_writer(request: Request) -> KafkaWriter:
    writer: KafkaWriter = request.app.state.writer
    return writer


def get_metrics(request: Request) -> GatewayMetrics:
    metrics: GatewayMetrics = request.app.state.metrics
    return metrics


# FastAPI runs a plain ``def`` dependency in its thread pool: two thread hops per dependency
# and request (14% of the gateway's CPU under the ingest bench, py-spy). These are coroutines.
async def _settings(request: Request) -> GatewaySettings:
    return get_settings(request)


async def _writer(request: Request) -> KafkaWriter:
    return get_writer(request)


async def _metrics(request: Request) -> GatewayMetrics:
    return get_metrics(request)


SettingsDep = Annotated[GatewaySettings, Depends(_settings)]
WriterDep = Annotated[KafkaWriter, Depends(_writer)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]


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


@dataclass(frozen=True, slots=True)
class WriteEndpoint:
    """A write endpoint, as the first dependency of its route.

    ``name`` is its ``endpoint`` metric label and ``style`` its error body. As a dependency it
    records itself on the request (:func:`write_endpoint_of`: the exception handler counts
    and shapes a rejection by it), then authenticates; ``password_param`` also accepts the
    token as the v1 ``p=`` query parameter.
    """

    name: str
    style: Style
    password_param: bool = False

    async def __call__(self, request: Request, settings: SettingsDep) -> None:
        request.state.write_endpoint = self
        password = request.query_params.get("p") if self.password_param else None
        check_token(request, settings.tokens, password)


def write_endpoint_of(request: Request) -> WriteEndpoint | None:
    """The write endpoint that is serving ``request``, or ``None`` (not a write)."""
    endpoint = getattr(request.state, "write_endpoint", None)
    return endpoint if isinstance(endpoint, WriteEndpoint) else None
