"""The few InfluxDB 1.x HTTP calls the sink needs (``/query``, ``/write``), and the
database/retention-policy layout it creates (module docstring of ``sinks/influxdb.py``)."""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import httpx

from metricsflow.errors import MetricsflowError
from metricsflow.model.tiers import RAW_TIER, TierSpec

if TYPE_CHECKING:
    from metricsflow.sinks.influxdb import InfluxDBSinkConfig

logger = logging.getLogger(__name__)


class InfluxDBWriteError(MetricsflowError):
    """A write or query failed; ``retriable`` says whether trying again may help;
    ``unconfirmed`` that InfluxDB may still apply it (a timeout, a dropped connection or a 5xx
    after the request was sent), as opposed to a request it certainly did not apply."""

    def __init__(
        self, message: str, *, status: int = 0, retriable: bool, unconfirmed: bool = False
    ) -> None:
        super().__init__(message, retriable=retriable)
        self.status = status
        self.unconfirmed = unconfirmed


_GO_DURATION = re.compile(r"(\d+)(ns|us|µs|ms|h|m|s)")
_GO_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}


def go_duration_ns(text: str) -> int:
    """``"720h0m0s"`` (as ``SHOW RETENTION POLICIES`` prints it) -> ns; ``"0s"`` = INF = 0."""
    return sum(int(n) * _GO_UNITS[u] for n, u in _GO_DURATION.findall(text))


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def influxql_duration(tier: TierSpec) -> str:
    ns = tier.retention_ns
    return "INF" if ns == 0 else f"{ns // 1_000_000_000}s"


class InfluxDBClient:
    """The few v1 HTTP calls the sink needs (``/query``, ``/write``); no retries here."""

    def __init__(self, config: InfluxDBSinkConfig) -> None:
        self.config = config
        auth = (config.username, config.password or "") if config.username else None
        self._http = httpx.Client(
            base_url=config.url.rstrip("/"), timeout=config.request_timeout_s, auth=auth
        )

    def close(self) -> None:
        self._http.close()

    def query(
        self, q: str, db: str | None = None, epoch: str | None = None
    ) -> list[dict[str, object]]:
        """Run InfluxQL (POST /query); returns the statement results; raises on any error.
        ``epoch="ns"``: times as integer nanoseconds."""
        params = {"q": q, **({"db": db} if db else {}), **({"epoch": epoch} if epoch else {})}
        try:
            resp = self._http.post("/query", data=params)
        except httpx.TransportError as exc:
            raise InfluxDBWriteError(f"query failed: {exc!r}", retriable=True) from exc
        if resp.status_code >= 500 or resp.status_code in (401, 403):
            raise InfluxDBWriteError(
                f"query {q!r}: HTTP {resp.status_code} {resp.text[:200]}",
                status=resp.status_code,
                retriable=True,
            )
        body = resp.json()
        results: list[dict[str, object]] = body.get("results", [])
        for result in results:
            if "error" in result:
                raise InfluxDBWriteError(f"query {q!r}: {result['error']}", retriable=False)
        if resp.status_code != 200:
            raise InfluxDBWriteError(
                f"query {q!r}: HTTP {resp.status_code} {body}",
                status=resp.status_code,
                retriable=False,
            )
        return results

    def write(self, db: str, rp: str, body: bytes) -> httpx.Response:
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.config.gzip_level:
            body = gzip.compress(body, compresslevel=self.config.gzip_level)
            headers["Content-Encoding"] = "gzip"
        try:
            return self._http.post(
                "/write",
                params={"db": db, "rp": rp, "precision": "n"},
                content=body,
                headers=headers,
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise InfluxDBWriteError(f"write failed: {exc!r}", retriable=True) from exc
        except httpx.TransportError as exc:  # sent, outcome unknown
            raise InfluxDBWriteError(
                f"write failed: {exc!r}", retriable=True, unconfirmed=True
            ) from exc


def ensure_database(client: InfluxDBClient, db: str, tiers: Sequence[TierSpec]) -> None:
    """Create ``db`` and one retention policy per tier (``raw`` DEFAULT); alter a policy whose
    duration differs from the tier's retention. Idempotent."""
    client.query(f"CREATE DATABASE {quote_ident(db)}")
    results = client.query(f"SHOW RETENTION POLICIES ON {quote_ident(db)}")
    existing: dict[str, tuple[int, bool]] = {}
    for result in results:
        for series in result.get("series", []):  # type: ignore[attr-defined]
            columns = series["columns"]
            for row in series.get("values", []):
                rec = dict(zip(columns, row, strict=False))
                existing[str(rec["name"])] = (
                    go_duration_ns(str(rec["duration"])),
                    bool(rec["default"]),
                )
    for tier in tiers:
        default = " DEFAULT" if tier.name == RAW_TIER else ""
        duration = influxql_duration(tier)
        name = quote_ident(tier.name)
        if tier.name not in existing:
            client.query(
                f"CREATE RETENTION POLICY {name} ON {quote_ident(db)} DURATION {duration} "
                f"REPLICATION 1{default}"
            )
            logger.info("created retention policy db=%s rp=%s duration=%s", db, tier.name, duration)
        elif existing[tier.name][0] != tier.retention_ns or (
            default and not existing[tier.name][1]
        ):
            client.query(
                f"ALTER RETENTION POLICY {name} ON {quote_ident(db)} DURATION {duration}{default}"
            )
            logger.info("altered retention policy db=%s rp=%s duration=%s", db, tier.name, duration)
