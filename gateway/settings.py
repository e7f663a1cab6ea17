"""Gateway settings: pydantic-settings, environment variables prefixed ``GATEWAY_``."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from metricsflow.model.lineprotocol import Limits


class GatewaySettings(BaseSettings):
    """Every setting of the gateway; ``GATEWAY_<NAME>`` in the environment sets it."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic: str = Field(default="metrics", description="Topic the points are produced to.")
    host: str = Field(default="127.0.0.1", description="Listen address.")
    port: int = Field(
        default=8186, description="Listen port (Telegraf's influxdb_listener default)."
    )
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes.")
    tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted tokens, comma-separated; empty disables authentication.",
    )
    max_body_bytes: int = Field(
        default=25_000_000, description="Largest body, before and after decompression (413 beyond)."
    )
    max_line_length: int = Field(default=65_536, description="Longest line-protocol line.")
    max_tags: int = Field(default=256, description="Most tags per point.")
    max_fields: int = Field(default=1_024, description="Most fields per point.")
    max_key_length: int = Field(
        default=256, description="Longest measurement, tag key or field key."
    )
    max_tag_value_length: int = Field(default=4_096, description="Longest tag value.")
    max_inflight_bytes: int = Field(
        default=256_000_000,
        description="Bytes of requests not yet acknowledged by Kafka (429 beyond).",
    )
    produce_deadline_s: float = Field(
        default=10.0, gt=0, description="How long a request waits for Kafka's acks before 503."
    )
    retry_after_s: int = Field(default=2, ge=1, description="Retry-After on 429 and 503.")
    prometheus_db: str = Field(default="prometheus", description="Database of remote-write points.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="lz4", description="Kafka record batch compression."
    )
    linger_ms: int = Field(default=2, ge=0, description="Producer linger (batching delay).")
    max_batch_bytes: int = Field(
        default=1_048_576, description="Producer batch size per partition."
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return [t.strip() for t in value.split(",") if t.strip()]
        return value

    @property
    def limits(self) -> Limits:
        return Limits(
            max_line_length=self.max_line_length,
            max_tags=self.max_tags,
            max_fields=self.max_fields,
            max_key_length=self.max_key_length,
            max_tag_value_length=self.max_tag_value_length,
        )
