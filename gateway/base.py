"""The gateway's contract: what a write endpoint hands to the Kafka writer, and its errors.

Every endpoint turns a request into one :class:`ParsedWrite` (all or nothing: a bad point
rejects the whole request before anything is produced). :class:`~gateway.producer.KafkaWriter`
groups its lines by partition, produces them as ``lp1`` records (docs/message-format.md) and
returns only when Kafka acknowledged every record (``acks=all``), or raises one of the
:class:`RequestError` subclasses below. Routes and dependencies raise them; the app's one
exception handler (:func:`gateway.app.handle_request_error`) turns them into the
endpoint's error shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from metricsflow.model import MetricsflowError


@dataclass(frozen=True, slots=True)
class ParsedWrite:
    """A validated write: target database/RP and canonical lines with their series keys."""

    db: str
    rp: str | None
    series_keys: list[str]
    lines: list[str]
    received_ns: int
    body_bytes: int


class RequestError(MetricsflowError):
    """A request the gateway refuses; ``status`` is the HTTP status, ``reason`` a metric label."""

    status: int = 400
    reason: str = "bad_request"
    retry_after_s: float | None = None

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s


class BadRequestError(RequestError):
    """Malformed input (400); the message names line, column and offending text."""

    reason = "parse"


class PartialWriteError(BadRequestError):
    """Some lines were refused and the valid ones written (acknowledged by Kafka): InfluxDB's
    400 ``partial write: <refused lines> dropped=N``."""

    reason = "partial_write"


class PayloadTooLargeError(RequestError):
    """Body, or decompressed body, larger than the configured limit (413)."""

    status = 413
    reason = "too_large"


class UnsupportedEncodingError(RequestError):
    """A ``Content-Encoding`` the endpoint does not decode (415)."""

    status = 415
    reason = "encoding"


class UnauthorizedError(RequestError):
    """Missing or wrong token (401)."""

    status = 401
    reason = "unauthorized"


class OverloadedError(RequestError):
    """Too many bytes in flight to Kafka (429 with ``Retry-After``); retry later."""

    status = 429
    reason = "overloaded"
    retriable = True


class KafkaUnavailableError(RequestError):
    """Kafka did not acknowledge before the deadline (503 with ``Retry-After``); retry.

    Some records of the request may have been written anyway; a retry then writes
    duplicates, which are harmless: identity is series key + timestamp, last write wins.
    """

    status = 503
    reason = "kafka_unavailable"
    retriable = True
