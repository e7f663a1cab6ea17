"""Worker settings: environment variables prefixed ``METRICSFLOW_``, plus a TOML file.

Precedence (highest first): command-line options, ``METRICSFLOW_*`` environment variables,
the TOML file given with ``--config`` (or ``METRICSFLOW_CONFIG_FILE``), the defaults below.
Every field is documented in docs/configuration.md, generated from the descriptions below
(``python tools/docs_config.py > docs/configuration.md``).
"""

from __future__ import annotations

import difflib
import os
import socket
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.protocol import CheckpointingMode
from metricsflow.errors import ConfigurationError
from metricsflow.job.graph import DownsamplingJobConfig
from metricsflow.job.runner import RunnerConfig
from metricsflow.model.durations import parse_duration_ns
from metricsflow.model.fieldkinds import (
    DEFAULT_COUNTER_PATTERNS,
    DEFAULT_SKETCH_PATTERNS,
    FieldKinds,
    FieldSelector,
)
from metricsflow.model.tiers import RAW_TIER, TierSpec, validate_tiers
from metricsflow.sinks.influxdb import InfluxDBSinkConfig
from metricsflow.sources.kafka import KafkaSourceConfig
from metricsflow.state.config import StateBackendConfig

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


def check_config_file_keys(path: Path, fields: Any) -> None:
    """Refuse a TOML key that is no setting: a misspelled key must not be silently ignored
    (the environment is different: unrelated ``METRICSFLOW_*`` variables are normal)."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"config file {str(path)!r} cannot be read: {exc}") from exc
    known = {name.lower() for name in fields}
    for key in data:
        if key.lower() not in known:
            close = difflib.get_close_matches(key.lower(), sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigurationError(
                f"config file {str(path)!r}: unknown setting {key!r}{hint} "
                "(keys are the setting names of docs/configuration.md without the prefix)"
            )


class WorkerSettings(BaseSettings):
    """Every setting of ``metricsflow worker``; ``METRICSFLOW_<NAME>`` sets it."""

    model_config = SettingsConfigDict(env_prefix="METRICSFLOW_", frozen=True, extra="ignore")

    worker_id: str = Field(
        default="",
        description=(
            "Stable id of this worker; names its checkpoint root `<checkpoint_dir>/<worker_id>`. "
            "Must be unique among running workers and should stay the same across restarts. "
            "Empty: `<hostname>-<port>`."
        ),
    )
    host: str = Field(
        default="127.0.0.1",
        description="REST API listen address; `0.0.0.0` to reach it from other hosts.",
    )
    port: int = Field(
        default=DEFAULT_WORKER_PORT,
        description="REST API listen port (health, metrics, checkpoints, savepoints, state).",
    )
    api_token: str | None = Field(
        default=None,
        description=(
            "Token the REST API's mutating endpoints (`POST /savepoints`, `POST /stop`, "
            "`DELETE /savepoints/<name>`) require as `Authorization: Bearer <token>`; the CLI "
            "sends it from this variable or `--token`. Unset: no token is asked (keep the API "
            "on loopback then). Cross-site browser requests are refused either way."
        ),
    )
    api_max_savepoints: int = Field(
        default=20,
        ge=1,
        description=(
            "Most savepoints the REST API keeps in the savepoint directory: `POST /savepoints` "
            "beyond it is refused (409) until one is deleted (`DELETE /savepoints/<name>`, "
            "`metricsflow savepoint delete`). Savepoints are never deleted by the system. "
            "`POST /stop` is always allowed."
        ),
    )
    data_dir: Path = Field(
        default=Path(".run/worker"),
        description=(
            "Base directory of the checkpoint, savepoint and dead-letter directories that are "
            "not set separately."
        ),
    )
    checkpoint_dir: Path | None = Field(
        default=None,
        description=(
            "Checkpoints, one root per worker id. Must be the same shared directory for all "
            "workers of a group: a worker restores a newly assigned partition from the newest "
            "state in any worker's root. Unset: `<data_dir>/checkpoints`."
        ),
    )
    savepoint_dir: Path | None = Field(
        default=None,
        description="Where triggered savepoints are written. Unset: `<data_dir>/savepoints`.",
    )
    dead_letter_dir: Path | None = Field(
        default=None,
        description=(
            "Lines InfluxDB rejected for good (`influxdb-<pid>.jsonl`) and points beyond the "
            "allowed lateness (`late-<pid>.jsonl`). Unset: `<data_dir>/dead-letter`."
        ),
    )
    dead_letter_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1,
        description=(
            "Size in bytes at which a dead-letter or late-points file is closed (renamed "
            "`<name>-<pid>.<time_ns>.jsonl`) and a new one started."
        ),
    )
    dead_letter_max_files: int = Field(
        default=8,
        ge=1,
        description=(
            "Files kept per kind (`influxdb-*`, `late-*`) in the dead-letter directory; the "
            "oldest are deleted on rotation."
        ),
    )
    kafka_bootstrap_servers: str = Field(
        default="127.0.0.1:9092",
        description="Kafka bootstrap servers, comma-separated `host:port` list.",
    )
    kafka_topic: str = Field(
        default="metrics",
        description="Topic to consume: the gateway's GATEWAY_TOPIC.",
    )
    kafka_group_id: str = Field(
        default="metricsflow",
        description=(
            "Consumer group: the same for all workers that share the work. A second, "
            "independent deployment reading the same topic needs its own group (and its own "
            "checkpoint directory)."
        ),
    )
    kafka_dead_letter_topic: str = Field(
        default="",
        description=(
            "Topic for records that cannot be decoded (created at start with 1 partition and "
            "replication factor 1 if missing). Empty: `<kafka_topic>.dlq`."
        ),
    )
    kafka_max_records_per_fetch: int = Field(
        default=2_000,
        ge=1,
        description=(
            "Most records one fetch of one partition returns. Larger fetches cost less per "
            "point; what one micro-batch processes is bounded by `kafka_max_points_per_fetch`."
        ),
    )
    kafka_max_points_per_fetch: int = Field(
        default=100_000,
        ge=1,
        description=(
            "Most points one micro-batch of one partition holds: a fetch is cut into several "
            "micro-batches (a record's points are its lines; one larger record is a micro-batch "
            "of its own), processed one at a time with a turn of the event loop between them, "
            "so a fetch of large records cannot hold the loop past the session timeout."
        ),
    )
    kafka_session_timeout_ms: int = Field(
        default=10_000,
        description=(
            "Milliseconds without heartbeats (sent every second) after which Kafka considers "
            "a worker dead and moves its partitions to the others. The broker accepts only "
            "values within its group.min/max.session.timeout.ms (6 s .. 30 min by default)."
        ),
    )
    influxdb_url: str = Field(
        default="http://127.0.0.1:8086",
        description=(
            "InfluxDB 1.x HTTP API the tiers are written to. The worker creates databases and "
            "one retention policy per tier, so with authentication the user needs admin rights."
        ),
    )
    influxdb_username: str | None = Field(
        default=None,
        description="InfluxDB user (HTTP Basic auth); unset: no authentication.",
    )
    influxdb_password: str | None = Field(
        default=None,
        description="Password of METRICSFLOW_INFLUXDB_USERNAME; ignored without a username.",
    )
    influxdb_database_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated shell patterns (fnmatch, case-sensitive) of the databases the "
            "worker may create and write; empty: any. Points for other databases go to the "
            "dead-letter file (reason `database_not_allowed`)."
        ),
    )
    influxdb_batch_max_points: int = Field(
        default=10_000,
        ge=1,
        description=(
            "Points per InfluxDB write request (per database and retention policy); a request "
            "is also sealed at 2 MB."
        ),
    )
    influxdb_flush_interval_s: float = Field(
        default=1.0,
        gt=0,
        description=(
            "Seconds after which a batch that is not full is sent anyway: the write latency "
            "at low rates."
        ),
    )
    influxdb_gzip_level: int = Field(
        default=1,
        ge=0,
        le=9,
        description="gzip level of write requests; 0 sends them uncompressed.",
    )
    influxdb_max_pending_requests: int = Field(
        default=8,
        ge=1,
        description=(
            "Sealed write requests that may wait for InfluxDB. Beyond, the worker stops "
            "reading Kafka (backpressure) until InfluxDB catches up."
        ),
    )
    tiers: str = Field(
        default="raw:7d,1m:30d,1h:365d,1d:INF",
        description=(
            "Tier cascade, comma-separated `<window>:<retention>`, `raw` first; each window a "
            "larger multiple of the previous one, retention a duration or `INF`. Each tier is "
            "a retention policy named like its window (`raw` is the default policy); changed "
            "retentions are applied to existing databases. Must equal the gateway's "
            "GATEWAY_QUERY_TIERS. Removing a tier needs METRICSFLOW_ALLOW_NON_RESTORED_STATE."
        ),
    )
    max_out_of_orderness: str = Field(
        default="10s",
        description=(
            "How far behind the newest point of a partition a point may be and still be on "
            "time: the watermark is the newest event time minus this, and a window is written "
            "once the watermark passes its end. More tolerates more disorder but delays the "
            "tiers. Duration (`s`, `m`, `h`, `d`, `w`), or `0`."
        ),
    )
    idle_timeout: str = Field(
        default="30s",
        description=(
            "After a partition has been caught up and quiet this long (wall clock), its "
            "watermark jumps to the wall clock minus max_out_of_orderness and follows it, so "
            "its windows up to now get written (after a backfill too). Points that arrive "
            "later for those windows are corrections. Empty: never (a quiet partition's "
            "windows stay open until new data arrives)."
        ),
    )
    max_future: str = Field(
        default="10m",
        description=(
            "A point whose timestamp is more than this ahead of the time the gateway received "
            "it does not advance its partition's watermark (it is stored, counted in "
            "future_points_total, and joins its tier when its window's time comes). Empty: "
            "every point advances the watermark."
        ),
    )
    allowed_lateness: str = Field(
        default="1m",
        description=(
            "How long after a window was written points behind the watermark still update it "
            "(it is re-written in full); the windows of later points are re-derived from "
            "InfluxDB (corrections; the points are also logged in the late-points file). Also "
            "how long window state is kept after firing. Duration, or "
            "`0`."
        ),
    )
    counter_fields: str = Field(
        default=DEFAULT_COUNTER_PATTERNS,
        description=(
            "Fields that are counters (their tier rows are to get `increase_<f>` and "
            "`resets_<f>`, docs/counters-and-percentiles.md): comma-separated patterns "
            "`<measurement glob>/<field glob>`, or `<field glob>` for any measurement; `*`, `?`, "
            "`[...]` as in shell globs, case-sensitive. The default follows Prometheus' naming "
            "conventions (remote write: measurement = metric name) and Telegraf's cumulative "
            "`net`/`diskio` fields. Empty: none."
        ),
    )
    sketch_fields: str = Field(
        default=DEFAULT_SKETCH_PATTERNS,
        description=(
            "Fields whose tier rows are to get a DDSketch (`sketch_<f>`, 1 % relative accuracy) "
            "and `p50_`/`p90_`/`p95_`/`p99_<f>`: patterns as for `counter_fields`; a counter "
            "never gets a sketch. Default: names that say latency, duration or response time. "
            "Empty: none."
        ),
    )
    checkpoint_interval_ms: int = Field(
        default=5_000,
        ge=1,
        description=(
            "Milliseconds between the triggers of two periodic checkpoints. Shorter means "
            "less to replay after a failure and more checkpoint overhead."
        ),
    )
    checkpoint_timeout_ms: int = Field(
        default=60_000,
        ge=1,
        description=(
            "A checkpoint not complete after this many milliseconds is aborted. A checkpoint "
            "completes only once InfluxDB acknowledged the output before it, so this also "
            "bounds that wait (and the final flush on stop)."
        ),
    )
    checkpoint_min_pause_ms: int = Field(
        default=0,
        ge=0,
        description=(
            "Least milliseconds between the end of one checkpoint and the next trigger, so "
            "that slow checkpoints cannot starve processing."
        ),
    )
    checkpoint_max_concurrent: int = Field(
        default=1, ge=1, description="Checkpoints in flight at once."
    )
    checkpoint_tolerable_failures: int = Field(
        default=-1,
        description=(
            "Consecutive failed checkpoints tolerated; one more fails (and restarts) the job. "
            "-1: unlimited (e.g. checkpoints keep expiring while InfluxDB is down)."
        ),
    )
    checkpoint_mode: Literal["exactly_once", "at_least_once"] = Field(
        default="exactly_once",
        description=(
            "`exactly_once` aligns barriers (an input that delivered the barrier waits for the "
            "others); `at_least_once` does not block, and records after the barrier are "
            "replayed after a restore."
        ),
    )
    checkpoints_retained: int = Field(
        default=3,
        ge=1,
        description="Completed checkpoints kept per worker; older ones are deleted.",
    )
    checkpoint_incremental: bool = Field(
        default=True,
        description=(
            "Checkpoints write only what changed since the last completed one (RocksDB: new "
            "SST files; heap: changed key-range segments); savepoints are always full."
        ),
    )
    state_backend: Literal["heap", "rocksdb"] = Field(
        default="heap",
        description=(
            "Where window state lives: `heap` (Python objects, fastest) or `rocksdb` "
            "(embedded RocksDB on local disk: state larger than memory, incremental "
            "checkpoints)."
        ),
    )
    rocksdb_dir: str | None = Field(
        default=None,
        description=(
            "RocksDB working directory (`state_backend = rocksdb`): disposable, wiped at "
            "start since checkpoints are the durable copy. Unset: a new temporary directory."
        ),
    )
    from_savepoint: str | None = Field(
        default=None,
        description=(
            "Savepoint directory to start from (`--from-savepoint`): every partition it holds "
            "restores from it, older or newer than the checkpoints in "
            "METRICSFLOW_CHECKPOINT_DIR (a new restore generation; see docs/operations.md)."
        ),
    )
    allow_empty_start: bool = Field(
        default=False,
        description=(
            "Start a partition from nothing (earliest offset) even though its consumer group "
            "has committed offsets and no checkpoint holds it; otherwise the worker refuses, "
            "naming the partition, the offset and the roots searched."
        ),
    )
    allow_non_restored_state: bool = Field(
        default=False,
        description=(
            "Restore even if the savepoint or checkpoint holds state no operator claims "
            "(e.g. a removed tier), dropping it; otherwise such a restore is refused."
        ),
    )
    restart_strategy: Literal["failure-rate", "fixed-delay", "none"] = Field(
        default="failure-rate",
        description=(
            "In-process job restarts after a failure: `failure-rate` (at most "
            "METRICSFLOW_RESTART_MAX_FAILURES_PER_INTERVAL per interval), `fixed-delay` (at "
            "most METRICSFLOW_RESTART_ATTEMPTS in all), `none` (exit at the first failure and "
            "let the supervisor restart the process)."
        ),
    )
    restart_delay_s: float = Field(
        default=2.0,
        ge=0,
        description="Seconds between a failure and the restart (`failure-rate`, `fixed-delay`).",
    )
    restart_attempts: int = Field(
        default=3,
        ge=0,
        description="`fixed-delay`: restarts in the life of the process; the next failure exits.",
    )
    restart_max_failures_per_interval: int = Field(
        default=3,
        ge=1,
        description=(
            "`failure-rate`: failures tolerated within the last "
            "METRICSFLOW_RESTART_FAILURE_RATE_INTERVAL_S seconds; one more exits the process."
        ),
    )
    restart_failure_rate_interval_s: float = Field(
        default=300.0,
        gt=0,
        description="`failure-rate`: the sliding window, in seconds, failures are counted in.",
    )

    @field_validator("counter_fields", "sketch_fields")
    @classmethod
    def _check_patterns(cls, value: str, info: ValidationInfo) -> str:
        try:
            FieldSelector.parse(value)
        except ConfigurationError as exc:
            raise ConfigurationError(f"METRICSFLOW_{str(info.field_name).upper()}: {exc}") from None
        return value

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
            check_config_file_keys(Path(config_file), settings_cls.model_fields)
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
    def field_kinds(self) -> FieldKinds:
        return FieldKinds(
            counters=FieldSelector.parse(self.counter_fields),
            sketches=FieldSelector.parse(self.sketch_fields),
        )

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
                bootstrap_servers=self.kafka_bootstrap_servers,
                topic=self.kafka_topic,
                group_id=self.kafka_group_id,
                dead_letter_topic=self.kafka_dead_letter_topic,
                client_id=f"metricsflow-{self.effective_worker_id}",
                max_records_per_fetch=self.kafka_max_records_per_fetch,
                max_points_per_fetch=self.kafka_max_points_per_fetch,
                session_timeout_ms=self.kafka_session_timeout_ms,
            ),
            sink=InfluxDBSinkConfig(
                url=self.influxdb_url,
                tiers=parse_tiers(self.tiers),
                database_allowlist=tuple(self.influxdb_database_allowlist),
                username=self.influxdb_username,
                password=self.influxdb_password,
                batch_max_points=self.influxdb_batch_max_points,
                flush_interval_s=self.influxdb_flush_interval_s,
                gzip_level=self.influxdb_gzip_level,
                max_pending_requests=self.influxdb_max_pending_requests,
                dead_letter_dir=dead,
                dead_letter_max_bytes=self.dead_letter_max_bytes,
                dead_letter_max_files=self.dead_letter_max_files,
            ),
            job=DownsamplingJobConfig(
                tiers=parse_tiers(self.tiers),
                max_out_of_orderness=self.max_out_of_orderness,
                idle_timeout=self.idle_timeout or None,
                max_future=self.max_future or None,
                allowed_lateness_ns=parse_duration_ns(self.allowed_lateness)
                if self.allowed_lateness not in ("0", "0s")
                else 0,
                sink_flush_timeout_s=self.checkpoint_timeout_ms / 1000,
                field_kinds=self.field_kinds,
            ),
            checkpoint=CheckpointConfig(
                interval_ms=self.checkpoint_interval_ms,
                timeout_ms=self.checkpoint_timeout_ms,
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
            allow_empty_start=self.allow_empty_start,
            restart_strategy=self.restart_strategy,
            restart_delay_s=self.restart_delay_s,
            restart_attempts=self.restart_attempts,
            restart_max_failures_per_interval=self.restart_max_failures_per_interval,
            restart_failure_rate_interval_s=self.restart_failure_rate_interval_s,
        )
