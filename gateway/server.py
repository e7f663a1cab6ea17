"""The gateway as a managed process (for ``make run``, tests and benchmarks).

Follows :class:`metricsflow.infra.base.ManagedServer`: own process group, PID file in its
data dir, a real health check (``GET /health`` -> 200, i.e. Kafka reachable), stopped by PID.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from metricsflow.infra.process import PackageHttpServer


@dataclass(frozen=True)
class GatewayConfig:
    data_dir: Path
    port: int
    bootstrap_servers: str
    topic: str
    host: str = "127.0.0.1"
    workers: int = 1
    env: dict[str, str] = field(default_factory=dict)
    """Extra ``GATEWAY_*`` settings."""


class GatewayServer(PackageHttpServer):
    name = "gateway"
    start_timeout_s = 30.0
    stop_timeout_s = 10.0

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(config.data_dir, config.host, config.port)
        self.config = config

    def command(self) -> list[str]:
        return [sys.executable, "-m", "gateway"]

    def environment(self) -> dict[str, str]:
        c = self.config
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env.update(
            GATEWAY_HOST=c.host,
            GATEWAY_PORT=str(c.port),
            GATEWAY_WORKERS=str(c.workers),
            GATEWAY_BOOTSTRAP_SERVERS=c.bootstrap_servers,
            GATEWAY_TOPIC=c.topic,
        )
        env.update(c.env)
        return env
