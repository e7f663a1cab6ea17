"""Shared fixtures: a real Kafka broker and a real InfluxDB server for the whole test session.

Never mocked. Each server runs on free loopback ports with its data in a pytest tmp dir, is
started once per session (install included: cached after the first run), and is stopped by
its PID file at the end. A server that fails to start fails the tests that need it, with its
log tail in the error; it is never a skip.

Fixtures (see each docstring):

- ``kafka_broker`` (session): a :class:`~metricsflow.infra.kafka.KafkaServer`;
  ``.bootstrap`` is ``"127.0.0.1:<port>"``; ``.stop()`` / ``.start()`` (and ``.kill()`` for a
  crash) restart it on the same data dir and ports; ``await .stop_async()`` /
  ``await .start_async()`` do the same without blocking the test's event loop.
- ``influxdb_server`` (session): an :class:`~metricsflow.infra.influxdb.InfluxDBServer`;
  ``.url`` is ``"http://127.0.0.1:<port>"``; same stop/start API.
- ``kafka_broker_factory`` (function): ``kafka_broker_factory()`` starts a *separate*
  broker (own ports, own data dir), stopped at the end of the test; for tests that want to
  break a broker without disturbing the session one.
- ``topic_factory`` (function, async): ``name = await topic_factory(partitions=3)``.
- ``influx_database_factory`` (function, sync): ``db = influx_database_factory()``.

If a test leaves a session server stopped, it is restarted (with a warning) after that test.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Protocol

import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import for_code

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.errors import InfrastructureError
from metricsflow.infra.base import ManagedServer
from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer
from metricsflow.infra.kafka import KafkaConfig, KafkaServer
from metricsflow.infra.process import free_ports
from metricsflow.infra.settings import default_cache_dir
from metricsflow.testing.harness import JobRunner

# Session servers started by this conftest: stopped at teardown, and again (belt and braces)
# when pytest unconfigures; restarted after any test that left one stopped.
_SESSION_SERVERS: list[ManagedServer] = []
_ALL_STARTED: list[ManagedServer] = []


def _start_or_fail(server: ManagedServer) -> None:
    _ALL_STARTED.append(server)
    try:
        server.start()
    except InfrastructureError as exc:
        # The message already carries the server's log tail.
        pytest.fail(f"{server.name} failed to start: {exc}", pytrace=False)


def _slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", text).strip("_").lower()[:limit] or "t"


def new_kafka_server(data_dir: Path) -> KafkaServer:
    """A broker configured on two fresh free ports (not started)."""
    port, controller_port = free_ports(2)
    return KafkaServer(
        KafkaConfig(
            data_dir=data_dir,
            cache_dir=default_cache_dir(),
            port=port,
            controller_port=controller_port,
        )
    )


def new_influxdb_server(data_dir: Path) -> InfluxDBServer:
    """An InfluxDB configured on two fresh free ports (not started)."""
    port, rpc_port = free_ports(2)
    return InfluxDBServer(InfluxDBConfig(data_dir=data_dir, port=port, rpc_port=rpc_port))


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    """The session's Kafka 3.9.1 broker (KRaft, single node) on free loopback ports.

    ``.bootstrap`` -> ``"127.0.0.1:<port>"``. ``.stop()``/``.start()``/``.kill()`` (and the
    ``*_async`` twins) restart it on the same data dir and the same ports; a test that leaves
    it stopped gets it restarted afterwards."""
    server = new_kafka_server(tmp_path_factory.mktemp("kafka"))
    _start_or_fail(server)
    _SESSION_SERVERS.append(server)
    yield server
    _SESSION_SERVERS.remove(server)
    server.stop()


@pytest.fixture(scope="session")
def influxdb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfluxDBServer]:
    """The session's InfluxDB 1.x server on free loopback ports.

    ``.url`` -> ``"http://127.0.0.1:<port>"`` (v1 API: ``/ping``, ``/write``, ``/query``).
    Same ``stop``/``start`` API as ``kafka_broker``."""
    server = new_influxdb_server(tmp_path_factory.mktemp("influxdb"))
    _start_or_fail(server)
    _SESSION_SERVERS.append(server)
    yield server
    _SESSION_SERVERS.remove(server)
    server.stop()


class KafkaBrokerFactory(Protocol):
    def __call__(self) -> KafkaServer: ...


@pytest.fixture
def kafka_broker_factory(tmp_path: Path) -> Iterator[KafkaBrokerFactory]:
    """``broker = kafka_broker_factory()``: start a separate broker for this test only (own
    free ports, own data dir under ``tmp_path``); stopped at the end of the test. Takes a few
    seconds; prefer the session ``kafka_broker`` unless the test breaks the broker."""
    brokers: list[KafkaServer] = []

    def make() -> KafkaServer:
        server = new_kafka_server(tmp_path / f"kafka-{len(brokers)}")
        brokers.append(server)
        _start_or_fail(server)
        return server

    yield make
    for server in reversed(brokers):
        server.stop()


@pytest.fixture(autouse=True)
def _restart_session_servers_left_stopped() -> Iterator[None]:
    yield
    for server in list(_SESSION_SERVERS):
        if not server.is_running():
            warnings.warn(
                f"a test left session server {server.name} stopped; restarting it",
                stacklevel=1,
            )
            _start_or_fail(server)


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in reversed(_ALL_STARTED):
        if server.is_running():
            server.stop()


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def topic_factory(
    kafka_broker: KafkaServer, request: pytest.FixtureRequest
) -> AsyncIterator[TopicFactory]:
    """``name = await topic_factory(partitions=3, config=None, name=None)``: create a new
    topic (unique name derived from the test's name unless given) on the session broker with
    the admin client, wait until every partition has a leader, and return its name. Topics
    are left in place at teardown (the broker's data dir is temporary)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap)
    await admin.start()

    async def create(
        partitions: int = 1,
        *,
        config: dict[str, str] | None = None,
        name: str | None = None,
    ) -> str:
        topic = name or f"test-{_slug(request.node.name)}-{uuid.uuid4().hex[:8]}"
        response = await admin.create_topics(
            [
                NewTopic(
                    name=topic,
                    num_partitions=partitions,
                    replication_factor=1,
                    topic_configs=config or {},
                )
            ]
        )
        for _name, code, *_ in response.topic_errors:
            if code:
                raise for_code(code)(f"create topic {topic}")
        await _wait_for_leaders(admin, topic, partitions)
        return topic

    yield create
    await admin.close()


async def _wait_for_leaders(admin: AIOKafkaAdminClient, topic: str, partitions: int) -> None:
    for _ in range(200):
        described = await admin.describe_topics([topic])
        parts = described[0]["partitions"] if described and not described[0]["error_code"] else []
        if len(parts) == partitions and all(p["leader"] >= 0 for p in parts):
            return
        await asyncio.sleep(0.05)
    raise InfrastructureError(f"topic {topic}: partitions have no leader after 10s")


@pytest.fixture
def influx_database_factory(
    influxdb_server: InfluxDBServer, request: pytest.FixtureRequest
) -> Iterator[Callable[..., str]]:
    """``db = influx_database_factory(name=None)``: create a new database (unique name derived
    from the test's name unless given) on the session InfluxDB and return its name. Sync, so
    usable from sync and async tests. Databases are dropped at teardown."""
    created: list[str] = []

    def create(name: str | None = None) -> str:
        db = name or f"test_{_slug(request.node.name, 30)}_{uuid.uuid4().hex[:8]}"
        response = httpx.post(
            f"{influxdb_server.url}/query", data={"q": f'CREATE DATABASE "{db}"'}, timeout=10
        )
        response.raise_for_status()
        if "error" in response.text:
            raise InfrastructureError(f"create database {db}: {response.text}")
        created.append(db)
        return db

    yield create
    for db in created:
        if influxdb_server.is_running():
            httpx.post(
                f"{influxdb_server.url}/query", data={"q": f'DROP DATABASE "{db}"'}, timeout=10
            )


@pytest.fixture
def runner_factory(tmp_path: Path) -> Callable[..., JobRunner]:
    """``runner_factory(backend="heap", config=None)``: a job-level test harness
    (:class:`metricsflow.testing.harness.JobRunner`) in its own directory under ``tmp_path``;
    checkpoints every 2 ms, two retained, unless ``config`` says otherwise."""
    counter = iter(range(1000))

    def make(backend: str = "heap", config: CheckpointConfig | None = None) -> JobRunner:
        return JobRunner(
            tmp_path / f"run-{next(counter)}",
            backend,
            config or CheckpointConfig(interval_ms=2, num_retained=2),
        )

    return make


@pytest.fixture
def infra_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Environment for an isolated ``metricsflow infra``: own dir, own free ports. Anything
    still running at the end is stopped with ``metricsflow infra down`` (by PID files)."""
    kafka, controller, influx, rpc = free_ports(4)
    env = {
        **os.environ,
        "METRICSFLOW_INFRA_DIR": str(tmp_path / "run"),
        "METRICSFLOW_KAFKA_PORT": str(kafka),
        "METRICSFLOW_KAFKA_CONTROLLER_PORT": str(controller),
        "METRICSFLOW_INFLUXDB_PORT": str(influx),
        "METRICSFLOW_INFLUXDB_RPC_PORT": str(rpc),
    }
    yield env
    metricsflow = str(Path(sys.executable).with_name("metricsflow"))
    subprocess.run([metricsflow, "infra", "down"], env=env, capture_output=True, check=False)
