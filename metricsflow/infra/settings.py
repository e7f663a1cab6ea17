"""Settings of the local infrastructure, read from ``METRICSFLOW_*`` environment variables.

=====================================  ===========================  ==============================
Variable                               Default                      Meaning
=====================================  ===========================  ==============================
``METRICSFLOW_INFRA_DIR``              ``.run`` (in the cwd)        data dirs, PID files, logs
``METRICSFLOW_CACHE_DIR``              ``~/.cache/metricsflow``     downloaded Kafka jars
``METRICSFLOW_KAFKA_PORT``             ``9092``                     Kafka PLAINTEXT listener
``METRICSFLOW_KAFKA_CONTROLLER_PORT``  ``9093``                     Kafka KRaft controller
``METRICSFLOW_INFLUXDB_PORT``          ``8086``                     InfluxDB HTTP API
``METRICSFLOW_INFLUXDB_RPC_PORT``      ``8088``                     InfluxDB backup/restore RPC
=====================================  ===========================  ==============================

All servers bind 127.0.0.1 only.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from metricsflow.errors import ConfigurationError

DEFAULT_KAFKA_PORT = 9092
DEFAULT_KAFKA_CONTROLLER_PORT = 9093
DEFAULT_INFLUXDB_PORT = 8086
DEFAULT_INFLUXDB_RPC_PORT = 8088


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
