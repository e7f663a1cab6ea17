"""Gateway settings: pydantic-settings, environment variables prefixed ``GATEWAY_``."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from metricsflow.model.lineprotocol import Limits


class GatewaySettings(BaseSettings):
    """Every setting of the gateway; ``GATEWAY_<NAME>`` in the environment sets it."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_", frozen=True, extra="ignore")

    bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated `host:port` list.",
    )
    topic: str = Field(
        default="metrics",
        description=(
            "Kafka topic the points are produced to; the workers' METRICSFLOW_KAFKA_TOPIC must "
            "name the same topic. The gateway does not create it (deploy/ and `make run` do): its "
            "partition count is the most workers that can share the load."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description="HTTP listen address; `0.0.0.0` to accept connections from other hosts.",
    )
    port: int = Field(
        default=8186,
        description="HTTP listen port (8186: Telegraf's influxdb_listener default).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description=(
            "uvicorn worker processes. Each has its own Kafka producer and its own "
            "GATEWAY_MAX_INFLIGHT_BYTES budget; raise it when one process's CPU is the limit."
        ),
    )
    tokens: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Accepted tokens, comma-separated; empty disables authentication. A client sends "
            "one as `Authorization: Token <t>` or `Bearer <t>`, as the Basic-auth password, or "
            "as `p=<t>`. Guards the write endpoints and `/query`."
        ),
    )
    max_body_bytes: int = Field(
        default=25_000_000,
        description=(
            "Largest request body in bytes, checked on the body as received and again after "
            "gzip/snappy decompression; larger requests get 413."
        ),
    )
    max_line_length: int = Field(
        default=200_000,
        description=(
            "Longest line-protocol line, in characters (200,000 characters are at most 800 kB "
            "of UTF-8: one Kafka record). This and the four limits below apply to the "
            "line-protocol and JSON endpoints (remote write: per label); a line beyond one is "
            "refused like a malformed line. The defaults never refuse what InfluxDB accepts, "
            "except lines longer than this."
        ),
    )
    max_tags: int = Field(
        default=16_384,
        description="Most tags per point (InfluxDB's 65,535-byte key holds at most 16,383).",
    )
    max_fields: int = Field(default=50_000, description="Most fields per point.")
    max_key_length: int = Field(
        default=65_535,
        description=(
            "InfluxDB's MaxKeyLength: most bytes of a line's series key (measurement and "
            "tags as written), also with 4 + the bytes of each field key added."
        ),
    )
    max_tag_value_length: int = Field(
        default=65_535, description="Longest tag value, in characters."
    )
    partial_writes: bool = Field(
        default=True,
        description=(
            "InfluxDB's partial writes: the valid lines of a line-protocol request are written "
            "(acknowledged by Kafka) and the answer is 400 `partial write: ... dropped=N` "
            "naming the refused lines. false: one bad line refuses the whole request and "
            "nothing is written."
        ),
    )
    influxdb_generation: int = Field(
        default=1,
        ge=1,
        le=2,
        description=(
            "The InfluxDB generation the workers write to. 1: unsigned integer fields (`5u`) "
            "are refused, as InfluxDB 1.x refuses them; 2: they are accepted."
        ),
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description=(
            "Seconds a client has to send a write request's whole body; a slower client gets "
            "408 and its connection's memory back."
        ),
    )
    header_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a client has to send a request's head (request line and headers), from "
            "the connection's start or the end of its previous response. A client that began a "
            "head gets 408, one that sent nothing is disconnected: slow-header clients "
            "(slowloris) cannot hold the gateway's connections (docs/security.md)."
        ),
    )
    max_connections: int = Field(
        default=1000,
        ge=1,
        description=(
            "Open connections per gateway process. A connection beyond gets 503 with "
            "Retry-After at once and is closed; keep it below the process's open-file limit "
            "(`ulimit -n`)."
        ),
    )
    max_future_s: float = Field(
        default=0.0,
        ge=0,
        description=(
            "When above 0: points more than this many seconds ahead of the gateway's clock are "
            "refused (400 naming the point). 0: any time up to 2262-01-01 is accepted. A point "
            "far ahead moves its partition's watermark (docs/security.md); 86400 suits metrics "
            "from machines with a sane clock."
        ),
    )
    max_inflight_bytes: int = Field(
        default=256_000_000,
        description=(
            "Backpressure, per gateway process: the memory cost of the write requests being "
            "read, parsed or produced (3 x decompressed bytes + 128 per line; JSON 12 x bytes), "
            "reserved before parsing and held until Kafka settles them. A request that would go "
            "beyond gets 429 with Retry-After; one that alone costs more gets 413. Bounds the "
            "gateway's memory under load and attack (docs/security.md)."
        ),
    )
    produce_deadline_s: float = Field(
        default=10.0,
        gt=0,
        description=(
            "Seconds a write request waits for Kafka to acknowledge all its records before it "
            "gets 503 with Retry-After; also the producer's request timeout (at least 1 s) and "
            "how long startup waits for a first connection to Kafka."
        ),
    )
    retry_after_s: int = Field(
        default=2,
        ge=1,
        description="Seconds sent in the Retry-After header of 429 and 503 answers.",
    )
    prometheus_db: str = Field(
        default="prometheus",
        description=(
            "Database of Prometheus remote-write points (`/api/v1/write`) whose URL has no "
            "`db` parameter."
        ),
    )
    remote_write_metadata: bool = Field(
        default=True,
        description=(
            "Prometheus remote-write metadata (a family's type) declares which measurements "
            "are counters and which gauges: the gateway produces it as `kinds1` records to "
            "every partition, before the request's samples, and the workers apply it over the "
            "naming conventions (docs/ingestion.md). false: metadata is ignored."
        ),
    )
    metadata_reannounce_s: float = Field(
        default=3600.0,
        ge=0,
        description=(
            "Seconds after which a declaration from remote-write metadata that has not changed "
            "is produced again when its metadata next arrives (Prometheus resends it every "
            "minute): a worker starting from a log whose older declarations Kafka's retention "
            "removed learns them again. Changed declarations are produced at once."
        ),
    )
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="zstd",
        description=(
            "Compression of the Kafka record batches the gateway produces. `zstd` (level 3) "
            "packs line protocol ~10x at ~0.2 us of CPU per point; aiokafka's `lz4` is LZ4 HC "
            "level 9, ~7x at ~1.4 us per point (docs/benchmarks.md)."
        ),
    )
    linger_ms: int = Field(
        default=2,
        ge=0,
        description=(
            "Milliseconds the producer waits for more records to fill a batch; more means "
            "fewer, larger batches (less CPU per point) at the cost of write latency."
        ),
    )
    max_batch_bytes: int = Field(
        default=1_048_576,
        description=(
            "Kafka producer batch size per partition, in bytes; the largest request is this "
            "plus 64 KiB. Keep it at least ~1 MB (one record carries up to 900 kB of lines) "
            "and within the broker's message.max.bytes."
        ),
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
            allow_unsigned=self.influxdb_generation >= 2,
        )

    def limits_at(self, received_ns: int) -> Limits:
        """The limits of a request received at ``received_ns``: with ``max_future_s``, its
        points may be at most that far ahead of the receive time."""
        limits = self.limits
        if self.max_future_s > 0:
            latest = received_ns + int(self.max_future_s * 1_000_000_000) + 1
            return dataclasses.replace(limits, max_time_ns=min(limits.max_time_ns, latest))
        return limits
