"""The gateway as a managed process (for ``make run``, tests and benchmarks).

Follows :class:`metricsflow.infra.base.ManagedServer`: own process group, PID file in its
data dir, a real health check (``GET /health`` -> 200, i.e. Kafka reachable), stopped by PID.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from metricsflow.infra.process import ProcessServer


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


class GatewayServer(ProcessServer):
    name = "gateway"
    start_timeout_s = 30.0
    stop_timeout_s = 10.0

    def __init__(self, config: GatewayConfig) -> None:
        super().__init__(config.data_dir)
        self.config = config

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    @property
    def address(self) -> str:
        return self.url

    def install(self) -> None:
        """Nothing to install: the gateway is this package."""

    def ports(self) -> tuple[int, ...]:
        return (self.config.port,)

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

    def health(self) -> bool:
        return httpx.get(f"{self.url}/health", timeout=3.0).status_code == 200
