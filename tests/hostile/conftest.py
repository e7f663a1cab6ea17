"""One hostile stack per test module (see tests/hostile/stack.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.infra.kafka import KafkaServer
from tests.hostile.stack import HostileStack, start_hostile_stack, stop_hostile_stack


@pytest.fixture(scope="module")
def hostile(
    kafka_broker: KafkaServer,
    influxdb_server: InfluxDBServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[HostileStack]:
    stack = start_hostile_stack(kafka_broker, influxdb_server, tmp_path_factory.mktemp("hostile"))
    yield stack
    stop_hostile_stack(stack)
