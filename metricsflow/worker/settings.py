"""Worker settings: environment variables prefixed ``METRICSFLOW_``, plus a TOML file.

Precedence (highest first): command-line options, ``METRICSFLOW_*`` environment variables,
the TOML file given with ``--config`` (or ``METRICSFLOW_CONFIG_FILE``), the defaults below.
Every field is documented in docs/operations.md ("Worker settings").
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.errors import ConfigurationError
from metricsflow.job.graph import DownsamplingJobConfig
from metricsflow.job.runner import RunnerConfig
from metricsflow.runtime.records import CheckpointingMode
from metricsflow.sinks.influxdb import InfluxDBSinkConfig
from metricsflow.sources.kafka import KafkaSourceConfig
from metricsflow.state.config import StateBackendConfig
from metricsflow.windows.base import RAW_TIER, TierSpec, parse_duration_ns, validate_tiers

DEFAULT_WORKER_PORT = 8190


def parse_tiers(text: str) -> tuple[TierSpec, ...]:
    """``"raw:7d,1m:30d,1h:365d,1d:INF"``: ``<window>:<retention>`` per tier, ``raw`` first;
    a tier's name (and retention policy) is its window."""
    tiers: list[TierSpec] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        window, sep, retention = part.partition(":")
        if not sep:
            raise ConfigurationError(f"tier {part!r}: expected <window>:<retention>, e.g. 1m:30d")
        tiers.append(TierSpec(window, "0s" if window == RAW_TIER else window, retention))
    return validate_tiers(tiers)


class WorkerSettings(BaseSettings):
    """Every setting of ``metricsflow worker``; ``METRICSFLOW_<NAME>`` sets it."""

    model_config = SettingsConfigDict(env_prefix="METRICSFLOW_", frozen=True, extra="ignore")

    worker_id: str = Field(
        default="", description="Stable id; names this worker's checkpoint root. "
        "Default: <hostname>-<port>.",
    )  # fmt: skip
    host: str = Field(default="127.0.0.1", description="REST API listen address.")
    port: int = Field(default=DEFAULT_WORKER_PORT, description="REST API listen port.")
    data_dir: Path = Field(default=Path(".run/worker"), description="Checkpoints, savepoints, "
                           "dead letters (unless set separately).")  # fmt: skip
    checkpoint_dir: Path | None = Field(default=None, description="Shared by all workers; "
                                        "default <data_dir>/checkpoints.")  # fmt: skip
    savepoint_dir: Path | None = Field(default=None, description="Default <data_dir>/savepoints.")
    dead_letter_dir: Path | None = Field(default=None, description="Rejected and late points; "
                                         "default <data_dir>/dead-letter.")  # fmt: skip
    kafka_bootstrap_servers: str = Field(default="127.0.0.1:9092")
    kafka_topic: str = Field(default="metrics", description="The gateway's topic.")
    kafka_group_id: str = Field(default="metricsflow", description="One group for all workers.")
    kafka_dead_letter_topic: str = Field(default="", description="Default <topic>.dlq.")
    kafka_max_records_per_fetch: int = Field(default=2_000, ge=1)
    kafka_session_timeout_ms: int = Field(default=10_000)
    influxdb_url: str = Field(default="http://127.0.0.1:8086")
    influxdb_username: str | None = None
    influxdb_password: str | None = None
    influxdb_database_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated fnmatch patterns; empty = any."
    )
    influxdb_batch_max_points: int = Field(default=10_000, ge=1)
    influxdb_flush_interval_s: float = Field(default=1.0, gt=0)
    influxdb_gzip_level: int = Field(default=1, ge=0, le=9)
    influxdb_max_pending_requests: int = Field(default=8, ge=1)
    tiers: str = Field(default="raw:7d,1m:30d,1h:365d,1d:INF")
    max_out_of_orderness: str = Field(default="10s")
    idle_timeout: str = Field(default="30s", description="'' = never advance idle partitions.")
    allowed_lateness: str = Field(default="1m")
    checkpoint_interval_ms: int = Field(default=5_000, ge=1)
    checkpoint_timeout_ms: int = Field(default=60_000, ge=1)
    checkpoint_min_pause_ms: int = Field(default=0, ge=0)
    checkpoint_max_concurrent: int = Field(default=1, ge=1)
    checkpoint_tolerable_failures: int = Field(default=-1, description="-1 = unlimited.")
    checkpoint_mode: Literal["exactly_once", "at_least_once"] = "exactly_once"
    checkpoints_retained: int = Field(default=3, ge=1)
    checkpoint_incremental: bool = True
    state_backend: Literal["heap", "rocksdb"] = "heap"
    rocksdb_dir: str | None = None
    from_savepoint: str | None = None
    allow_non_restored_state: bool = False
    restart_strategy: Literal["failure-rate", "fixed-delay", "none"] = Field(
        default="failure-rate", description="In-process job restarts after a failure; 'none' "
        "exits at the first failure (the supervisor restarts the process).",
    )  # fmt: skip
    restart_delay_s: float = Field(default=2.0, ge=0)
    restart_attempts: int = Field(default=3, ge=0, description="fixed-delay: restarts in all.")
    restart_max_failures_per_interval: int = Field(default=3, ge=1)
    restart_failure_rate_interval_s: float = Field(default=300.0, gt=0)

    @field_validator("influxdb_database_allowlist", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [p.strip() for p in value.split(",") if p.strip()]
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get("METRICSFLOW_CONFIG_FILE")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> WorkerSettings:
        """Settings from a TOML file (optional), the environment and ``overrides``."""
        if config_file is not None:
            if not config_file.is_file():
                raise ConfigurationError(f"config file {config_file} does not exist")
            os.environ["METRICSFLOW_CONFIG_FILE"] = str(config_file)
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    # ------------------------------------------------------------------ derived
    @property
    def effective_worker_id(self) -> str:
        return self.worker_id or f"{socket.gethostname()}-{self.port}"

    def runner_config(self) -> RunnerConfig:
        data = self.data_dir
        dead = self.dead_letter_dir or data / "dead-letter"
        return RunnerConfig(
            worker_id=self.effective_worker_id,
            checkpoint_dir=self.checkpoint_dir or data / "checkpoints",
            savepoint_dir=self.savepoint_dir or data / "savepoints",
            late_dir=dead,
            source=KafkaSourceConfig(
                bootstrap_servers=self.kafka_bootstrap_servers, topic=self.kafka_topic,
                group_id=self.kafka_group_id, dead_letter_topic=self.kafka_dead_letter_topic,
                client_id=f"metricsflow-{self.effective_worker_id}",
                max_records_per_fetch=self.kafka_max_records_per_fetch,
                session_timeout_ms=self.kafka_session_timeout_ms,
            ),
            sink=InfluxDBSinkConfig(
                url=self.influxdb_url, tiers=parse_tiers(self.tiers),
                database_allowlist=tuple(self.influxdb_database_allowlist),
                username=self.influxdb_username, password=self.influxdb_password,
                batch_max_points=self.influxdb_batch_max_points,
                flush_interval_s=self.influxdb_flush_interval_s,
                gzip_level=self.influxdb_gzip_level,
                max_pending_requests=self.influxdb_max_pending_requests, dead_letter_dir=dead,
            ),
            job=DownsamplingJobConfig(
                tiers=parse_tiers(self.tiers), max_out_of_orderness=self.max_out_of_orderness,
                idle_timeout=self.idle_timeout or None,
                allowed_lateness_ns=parse_duration_ns(self.allowed_lateness)
                if self.allowed_lateness not in ("0", "0s") else 0,
                sink_flush_timeout_s=self.checkpoint_timeout_ms / 1000,
            ),
            checkpoint=CheckpointConfig(
                interval_ms=self.checkpoint_interval_ms, timeout_ms=self.checkpoint_timeout_ms,
                min_pause_between_checkpoints_ms=self.checkpoint_min_pause_ms,
                max_concurrent_checkpoints=self.checkpoint_max_concurrent,
                tolerable_failed_checkpoints=self.checkpoint_tolerable_failures,
                mode=CheckpointingMode(self.checkpoint_mode),
                num_retained=self.checkpoints_retained,
                incremental=self.checkpoint_incremental,
            ),
            state_backend=StateBackendConfig(
                backend=self.state_backend, local_dir=self.rocksdb_dir
            ),
            from_savepoint=self.from_savepoint,
            allow_non_restored_state=self.allow_non_restored_state,
            restart_strategy=self.restart_strategy,
            restart_delay_s=self.restart_delay_s,
            restart_attempts=self.restart_attempts,
            restart_max_failures_per_interval=self.restart_max_failures_per_interval,
            restart_failure_rate_interval_s=self.restart_failure_rate_interval_s,
        )  # fmt: skip
