"""Settings of the local infrastructure, read from ``METRICSFLOW_*`` environment variables.

:data:`RUN_ENVIRONMENT` lists them, with the other plain environment variables of
``metricsflow infra`` / ``make run`` (read where they are used: ``metricsflow/infra/gateway.py``,
``metricsflow/worker/component.py``, ``metricsflow/cli.py``, ``metricsflow/infra/kafka.py``);
docs/configuration.md renders it. All servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from metricsflow.errors import ConfigurationError

DEFAULT_KAFKA_PORT = 9092
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
DEFAULT_INFLUXDB_PORT = 8086
DEFAULT_INFLUXDB_RPC_PORT = 8088


class RunVariable(NamedTuple):
    """One plain (non-pydantic) environment variable: its name, default and meaning."""

    name: str
    default: str
    meaning: str


#: The environment of ``metricsflow infra`` and ``make run`` (also used by the tests and
#: benchmarks that start the same servers). Defaults are shown as text; the modules that read
#: the variables keep their own constants (tests/test_configuration_docs.py compares them).
RUN_ENVIRONMENT: tuple[RunVariable, ...] = (
    RunVariable(
        "METRICSFLOW_INFRA_DIR",
        ".run",
        "Directory (relative to the current directory) for the local servers' data, logs and "
        "PID files: `kafka/`, `influxdb/`, `gateway/`, `worker/`. `make clean` removes `.run`.",
    ),
    RunVariable(
        "METRICSFLOW_CACHE_DIR",
        "~/.cache/metricsflow",
        "Cache of the downloaded Kafka jars, shared by every checkout; "
        "`$XDG_CACHE_HOME/metricsflow` when XDG_CACHE_HOME is set.",
    ),
    RunVariable(
        "METRICSFLOW_KAFKA_POM",
        "deploy/kafka/pom.xml",
        "Maven POM listing the Kafka jars `metricsflow infra install` downloads.",
    ),
    RunVariable(
        "METRICSFLOW_KAFKA_PORT",
        str(DEFAULT_KAFKA_PORT),
        "Port of the local Kafka broker's PLAINTEXT listener (the bootstrap address).",
    ),
    RunVariable(
        "METRICSFLOW_KAFKA_CONTROLLER_PORT",
        str(DEFAULT_KAFKA_CONTROLLER_PORT),
        "Port of the local Kafka's KRaft controller listener.",
    ),
    RunVariable(
        "METRICSFLOW_INFLUXDB_PORT",
        str(DEFAULT_INFLUXDB_PORT),
        "Port of the local InfluxDB's HTTP API.",
    ),
    RunVariable(
        "METRICSFLOW_INFLUXDB_RPC_PORT",
        str(DEFAULT_INFLUXDB_RPC_PORT),
        "Port of the local InfluxDB's backup/restore RPC service. The four ports must differ.",
    ),
    RunVariable(
        "METRICSFLOW_GATEWAY_PORT",
        "8186",
        "`make run`: the gateway's HTTP port (its GATEWAY_PORT).",
    ),
    RunVariable(
        "METRICSFLOW_KAFKA_TOPIC",
        "metrics",
        "`make run`: the topic the gateway produces to and the worker consumes (also the "
        "worker setting of that name).",
    ),
    RunVariable(
        "METRICSFLOW_KAFKA_PARTITIONS",
        "6",
        "`make run`: partitions of the topic, created before the gateway starts (an existing "
        "topic keeps its count; a warning says so). The most workers that can share the load.",
    ),
    RunVariable(
        "METRICSFLOW_WORKER_PORT",
        "8190",
        "`make run`: the worker's REST API port (passed as `--port`).",
    ),
    RunVariable(
        "METRICSFLOW_LOG_LEVEL",
        "INFO",
        "Python logging level of every `metricsflow` command (`--log-level` wins).",
    ),
)


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """``$METRICSFLOW_CACHE_DIR``, else ``$XDG_CACHE_HOME/metricsflow``, else
    ``~/.cache/metricsflow``."""
    env = os.environ if env is None else env
    if env.get("METRICSFLOW_CACHE_DIR"):
        return Path(env["METRICSFLOW_CACHE_DIR"]).expanduser().resolve()
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(base).expanduser() / "metricsflow").resolve()


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        port = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not a port number") from None
    if not 0 < port < 65536:
        raise ConfigurationError(f"{name}={port} is out of range 1..65535")
    return port


@dataclass(frozen=True)
class InfraSettings:
    """Where the local servers keep their state and which loopback ports they use."""

    infra_dir: Path
    cache_dir: Path
    kafka_port: int = DEFAULT_KAFKA_PORT
    kafka_controller_port: int = DEFAULT_KAFKA_CONTROLLER_PORT
    influxdb_port: int = DEFAULT_INFLUXDB_PORT
    influxdb_rpc_port: int = DEFAULT_INFLUXDB_RPC_PORT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> InfraSettings:
        env = os.environ if env is None else env
        infra_dir = Path(env.get("METRICSFLOW_INFRA_DIR") or ".run").expanduser().resolve()
        settings = cls(
            infra_dir=infra_dir,
            cache_dir=default_cache_dir(env),
            kafka_port=_port(env, "METRICSFLOW_KAFKA_PORT", DEFAULT_KAFKA_PORT),
            kafka_controller_port=_port(
                env, "METRICSFLOW_KAFKA_CONTROLLER_PORT", DEFAULT_KAFKA_CONTROLLER_PORT
            ),
            influxdb_port=_port(env, "METRICSFLOW_INFLUXDB_PORT", DEFAULT_INFLUXDB_PORT),
            influxdb_rpc_port=_port(
                env, "METRICSFLOW_INFLUXDB_RPC_PORT", DEFAULT_INFLUXDB_RPC_PORT
            ),
        )
        ports = [
            settings.kafka_port,
            settings.kafka_controller_port,
            settings.influxdb_port,
            settings.influxdb_rpc_port,
        ]
        if len(set(ports)) != len(ports):
            raise ConfigurationError(f"infrastructure ports must be distinct, got {ports}")
        return settings
