"""The gateway as a managed process, and as a ``make run`` component.

:class:`GatewayServer` runs ``python -m gateway`` (for ``make run``, tests and benchmarks):
it follows :class:`metricsflow.infra.base.ManagedServer` (own process group, PID file in its
data dir, a real health check ``GET /health`` -> 200, i.e. Kafka reachable, stopped by PID).
It starts the gateway by its module path and configures it through ``GATEWAY_*`` variables
only: the engine side never imports the ``gateway`` package (docs/architecture.md).

:func:`gateway_component` is the ``make run`` component (see :mod:`metricsflow.infra.stack`).

Ports and names come from ``METRICSFLOW_*`` environment variables (``make run`` is the
``metricsflow`` CLI): ``METRICSFLOW_GATEWAY_PORT`` (default 8186, Telegraf's
``influxdb_listener`` port), ``METRICSFLOW_KAFKA_TOPIC`` (default ``metrics``) and
``METRICSFLOW_KAFKA_PARTITIONS`` (default 6: the most workers one topic can spread over).
Every ``GATEWAY_*`` setting in the environment (tokens, limits, ...) reaches the gateway,
except the addresses ``make run`` decides; ``GATEWAY_QUERY_TIERS`` defaults to
``METRICSFLOW_TIERS`` so that the query API reads the tiers the worker writes.
The topic is created before the gateway starts, so that its partition count is ours and
not the broker's auto-create default.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from metricsflow.errors import ConfigurationError, InfrastructureError
from metricsflow.infra.base import ManagedServer
from metricsflow.infra.process import PackageHttpServer
from metricsflow.infra.settings import InfraSettings

logger = logging.getLogger(__name__)

DEFAULT_GATEWAY_PORT = 8186
DEFAULT_TOPIC = "metrics"
DEFAULT_PARTITIONS = 6


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


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r} is not an integer") from None


async def ensure_topic(bootstrap: str, topic: str, partitions: int) -> int:
    """Create ``topic`` with ``partitions`` partitions unless it exists; return its count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        try:
            await admin.create_topics(
                [NewTopic(name=topic, num_partitions=partitions, replication_factor=1)]
            )
            logger.info("topic created topic=%s partitions=%d", topic, partitions)
        except TopicAlreadyExistsError:
            pass
        for _ in range(100):
            described = await admin.describe_topics([topic])
            parts = described[0]["partitions"] if described else []
            if parts and all(p["leader"] >= 0 for p in parts):
                return len(parts)
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    raise InfrastructureError(f"topic {topic!r} has no leader for every partition", retriable=True)


class RunGatewayServer(GatewayServer):
    """A gateway that makes sure its topic exists before it starts."""

    def __init__(self, config: GatewayConfig, partitions: int) -> None:
        super().__init__(config)
        self.partitions = partitions

    def prepare(self) -> None:
        count = asyncio.run(
            ensure_topic(self.config.bootstrap_servers, self.config.topic, self.partitions)
        )
        if count != self.partitions:
            logger.warning(
                "topic exists with another partition count topic=%s partitions=%d wanted=%d",
                self.config.topic,
                count,
                self.partitions,
            )


#: Set by ``make run`` itself (addresses it decided); every other ``GATEWAY_*`` variable in
#: the environment is passed through to the gateway unchanged.
_RUN_OWNED = (
    "GATEWAY_HOST",
    "GATEWAY_PORT",
    "GATEWAY_BOOTSTRAP_SERVERS",
    "GATEWAY_TOPIC",
    "GATEWAY_INFLUXDB_URL",
)


def gateway_environment(environ: Mapping[str, str], addresses: Mapping[str, str]) -> dict[str, str]:
    """The user's ``GATEWAY_*`` settings, the InfluxDB ``make run`` started, and the query
    API's tiers defaulting to the worker's ``METRICSFLOW_TIERS`` (they must be equal)."""
    env = {k: v for k, v in environ.items() if k.startswith("GATEWAY_") and k not in _RUN_OWNED}
    if "influxdb" in addresses:
        env["GATEWAY_INFLUXDB_URL"] = addresses["influxdb"]
    if "GATEWAY_QUERY_TIERS" not in env and environ.get("METRICSFLOW_TIERS"):
        env["GATEWAY_QUERY_TIERS"] = environ["METRICSFLOW_TIERS"]
    return env


def gateway_component(settings: InfraSettings, addresses: Mapping[str, str]) -> ManagedServer:
    if "kafka" not in addresses:
        raise ConfigurationError("the gateway component needs the kafka component before it")
    return RunGatewayServer(
        GatewayConfig(
            data_dir=settings.infra_dir / "gateway",
            port=_int_env("METRICSFLOW_GATEWAY_PORT", DEFAULT_GATEWAY_PORT),
            bootstrap_servers=addresses["kafka"],
            topic=os.environ.get("METRICSFLOW_KAFKA_TOPIC") or DEFAULT_TOPIC,
            env=gateway_environment(os.environ, addresses),
        ),
        partitions=_int_env("METRICSFLOW_KAFKA_PARTITIONS", DEFAULT_PARTITIONS),
    )
