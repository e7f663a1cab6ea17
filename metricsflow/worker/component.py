"""One worker as a ``make run`` component (see :mod:`metricsflow.infra.stack`).

Runs ``metricsflow worker`` in its own process group with its data (checkpoints,
savepoints, dead letters) under ``<infra dir>/worker``; healthy when ``GET /health``
answers 200. ``METRICSFLOW_WORKER_PORT`` (default 8190) sets its REST port; every other
``METRICSFLOW_*`` worker setting in the environment is passed through unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from metricsflow.errors import ConfigurationError
from metricsflow.infra.base import ManagedServer
from metricsflow.infra.process import PackageHttpServer
from metricsflow.infra.settings import InfraSettings
from metricsflow.worker.settings import DEFAULT_WORKER_PORT


@dataclass(frozen=True)
class WorkerProcessConfig:
    data_dir: Path
    port: int
    bootstrap_servers: str
    influxdb_url: str
    topic: str
    worker_id: str = "worker-1"
    host: str = "127.0.0.1"


class WorkerServer(PackageHttpServer):
    name = "worker"
    start_timeout_s = 60.0
    stop_timeout_s = 30.0

    def __init__(self, config: WorkerProcessConfig) -> None:
        super().__init__(config.data_dir, config.host, config.port)
        self.config = config

    def command(self) -> list[str]:
        c = self.config
        return [
            sys.executable,
            "-m",
            "metricsflow",
            "worker",
            "--worker-id",
            c.worker_id,
            "--port",
            str(c.port),
        ]

    def environment(self) -> dict[str, str]:
        c = self.config
        env = dict(os.environ)
        env.update(
            METRICSFLOW_HOST=c.host,
            METRICSFLOW_KAFKA_BOOTSTRAP_SERVERS=c.bootstrap_servers,
            METRICSFLOW_KAFKA_TOPIC=c.topic,
            METRICSFLOW_INFLUXDB_URL=c.influxdb_url,
            METRICSFLOW_DATA_DIR=str(c.data_dir / "data"),
        )
        return env


def worker_component(settings: InfraSettings, addresses: Mapping[str, str]) -> ManagedServer:
    missing = [name for name in ("kafka", "influxdb") if name not in addresses]
    if missing:
        raise ConfigurationError(f"the worker component needs {missing!r} started before it")
    raw_port = os.environ.get("METRICSFLOW_WORKER_PORT", "").strip()
    try:
        port = int(raw_port) if raw_port else DEFAULT_WORKER_PORT
    except ValueError:
        raise ConfigurationError(f"METRICSFLOW_WORKER_PORT={raw_port!r} is not a port") from None
    return WorkerServer(
        WorkerProcessConfig(
            data_dir=settings.infra_dir / "worker",
            port=port,
            bootstrap_servers=addresses["kafka"],
            influxdb_url=addresses["influxdb"],
            topic=os.environ.get("METRICSFLOW_KAFKA_TOPIC") or "metrics",
        )
    )
