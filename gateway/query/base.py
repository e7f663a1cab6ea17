"""Shared types of the tier-aware query API: settings, errors, and the InfluxDB response model.

The query API answers InfluxDB v1 ``/query`` requests (InfluxQL) for Grafana's built-in InfluxDB
data source. A ``SELECT`` of count/sum/min/max/mean/first/last ``GROUP BY time(<interval>)`` is
answered from the coarsest downsampled tier that can answer it exactly, ``percentile()`` from
the tiers' merged sketches and counter functions (``difference``, ``derivative``, ...) from their
``increase_`` fields; anything else goes to the raw tier unchanged. See ``docs/influxdb-layout.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from metricsflow.model import MetricsflowError
from metricsflow.model.tiers import DEFAULT_TIERS, RAW_TIER, TierSpec, validate_tiers

#: Response header naming the tier that answered (comma-separated, one per statement).
TIER_HEADER = "X-Metricsflow-Tier"

#: Aggregates the rewriter can answer from a tier.
REWRITABLE_AGGREGATES: frozenset[str] = frozenset(
    {"count", "sum", "min", "max", "mean", "first", "last"}
)


class InfluxQLSyntaxError(MetricsflowError, ValueError):
    """The text is not InfluxQL the parser understands (the query then goes to InfluxDB as-is,
    which reports its own error if the text really is invalid)."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


class UnrewritableQueryError(MetricsflowError):
    """A statement that parsed but cannot be answered exactly from a tier; ``reason`` says why.
    Such statements go to the raw tier unchanged."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _default_tiers_text() -> str:
    return ",".join(f"{t.name}:{t.retention}" for t in DEFAULT_TIERS)


def parse_tiers(text: str) -> tuple[TierSpec, ...]:
    """The worker's format (``METRICSFLOW_TIERS``): ``"raw:7d,1m:30d,1h:365d,1d:INF"``, one
    ``<window>:<retention>`` per tier, raw first; a tier's name (its retention policy) is its
    window."""
    tiers: list[TierSpec] = []
    for item in (p.strip() for p in text.split(",") if p.strip()):
        window, sep, retention = (s.strip() for s in item.partition(":"))
        if not sep or not window or not retention:
            raise ValueError(f"tier {item!r}: expected <window>:<retention>, e.g. '1m:30d'")
        tiers.append(TierSpec(window, "0s" if window == RAW_TIER else window, retention))
    return validate_tiers(tiers)


class QuerySettings(BaseSettings):
    """Settings of the query API; ``GATEWAY_<NAME>`` in the environment sets each one."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    influxdb_url: str = Field(
        default="http://127.0.0.1:8086",
        description=(
            "InfluxDB 1.x HTTP API the query API (`/query`) reads from: the server the workers "
            "write to (their METRICSFLOW_INFLUXDB_URL). The client's credentials (`u`/`p`, "
            "Authorization) are passed on."
        ),
    )
    influxdb_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description=(
            "Timeout in seconds of one request to InfluxDB; raise it for long-range raw queries."
        ),
    )
    query_tiers: str = Field(
        default=_default_tiers_text(),
        description=(
            "Tiers as `<window>:<retention>`, comma-separated, raw first: the same value as "
            "the workers' METRICSFLOW_TIERS, or the query API reads retention policies the "
            "workers do not write."
        ),
    )
    query_tier_lag_s: float = Field(
        default=300.0,
        ge=0,
        description=(
            "Seconds: tier windows that ended less than this long ago are read from raw "
            "instead (the worker writes a window once its watermark passes the end); keep it "
            "above the workers' METRICSFLOW_MAX_OUT_OF_ORDERNESS plus their sink latency "
            "(METRICSFLOW_INFLUXDB_FLUSH_INTERVAL_S and the write itself)."
        ),
    )
    query_rewrite: bool = Field(
        default=True,
        description=(
            "Answer rewritable SELECTs (count/sum/min/max/mean/first/last, percentile and "
            "counter functions GROUP BY time) from the coarsest tier that answers them; false "
            "proxies every query to InfluxDB unchanged. Chunked queries are always proxied."
        ),
    )

    query_max_percentile_rows: int = Field(
        default=200_000,
        gt=0,
        description=(
            "Most rows (tier sketches plus raw values, counted by InfluxDB first) a "
            "`percentile()` answered from the tiers may read into the gateway; a statement "
            "beyond goes to InfluxDB unchanged (which computes PERCENTILE over raw itself). "
            "Merging costs about 17 us of CPU per sketch, in a worker thread."
        ),
    )

    query_admin_tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Tokens that may run statements changing InfluxDB through `/query` (`CREATE`, "
            "`DROP`, `DELETE`, `ALTER`, `GRANT`, `REVOKE`, `KILL`, `SELECT ... INTO`, ...), "
            "comma-separated, sent as the gateway's other tokens are, and only by POST. Empty "
            "(the default): such statements are refused (403) for everyone; only `SELECT` "
            "without `INTO`, `SHOW` and `EXPLAIN` pass. See docs/security.md."
        ),
    )
    query_max_bytes: int = Field(
        default=1_000_000,
        gt=0,
        description="Largest `/query` request body in bytes (413 beyond).",
    )

    @field_validator("query_admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @field_validator("query_tiers")
    @classmethod
    def _check_tiers(cls, value: str) -> str:
        parse_tiers(value)
        return value

    @property
    def tiers(self) -> tuple[TierSpec, ...]:
        return parse_tiers(self.query_tiers)

    @property
    def raw_tier(self) -> str:
        return RAW_TIER


# --------------------------------------------------------------------------------------------
# The InfluxDB 1.x JSON response model (only what we build ourselves)
# --------------------------------------------------------------------------------------------

TagSet = tuple[tuple[str, str], ...]


@dataclass
class Series:
    """One ``series`` element of an InfluxDB result; ``values`` rows start with the time (ns)."""

    name: str
    tags: dict[str, str] | None
    columns: list[str]
    values: list[list[Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, TagSet]:
        return self.name, tuple(sorted((self.tags or {}).items()))


def series_from_json(data: dict[str, Any]) -> Series:
    tags = data.get("tags")
    return Series(
        name=str(data.get("name", "")),
        tags=dict(tags) if isinstance(tags, dict) else None,
        columns=list(data.get("columns", [])),
        values=[list(row) for row in data.get("values", [])],
    )
