"""The shapes of the gateway's answers: InfluxDB's headers, and the v1/v2 error bodies."""

from __future__ import annotations

from typing import Literal

from fastapi.responses import JSONResponse

from gateway.base import RequestError

INFLUXDB_VERSION = "1.8.10"
"""Reported in ``X-Influxdb-Version``: the v1 API generation the gateway imitates."""
V1_HEADERS = {"X-Influxdb-Version": INFLUXDB_VERSION, "X-Influxdb-Build": "OSS"}
"""Sent with every write and ping answer, as InfluxDB 1.x does."""

Style = Literal["v1", "v2"]
"""Error body of an endpoint: v1 ``{"error": ...}``, v2 ``{"code": ..., "message": ...}``."""

_V2_CODES = {
    400: "invalid",
    401: "unauthorized",
    413: "request too large",
    415: "invalid",
    429: "too many requests",
    503: "unavailable",
}


def error_response(exc: RequestError, style: Style) -> JSONResponse:
    """The endpoint's error shape: v1 ``{"error": ...}``, v2 ``{"code", "message"}``."""
    headers = dict(V1_HEADERS)
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(int(exc.retry_after_s))
    # A message quoting undecodable input carries surrogate escapes, which JSON (UTF-8) cannot
    # hold: shown as backslash escapes instead of failing the answer with a 500.
    message = str(exc).encode("utf-8", "backslashreplace").decode("utf-8")
    if style == "v2":
        body: dict[str, str] = {"code": _V2_CODES.get(exc.status, "invalid"), "message": message}
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=exc.status, headers=headers)
