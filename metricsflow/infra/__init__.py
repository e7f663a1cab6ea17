"""Local infrastructure owned by the project: a real Kafka broker and a real InfluxDB server.

``metricsflow infra install|up|down|status|run`` drives it (:mod:`metricsflow.infra.cli`);
the test fixtures in ``tests/conftest.py`` use the same classes on free ports.
"""

from metricsflow.infra.base import ManagedServer
from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer
from metricsflow.infra.kafka import KAFKA_VERSION, KafkaConfig, KafkaServer
from metricsflow.infra.process import ProcessServer, free_port, free_ports
from metricsflow.infra.settings import InfraSettings

__all__ = [
    "KAFKA_VERSION",
    "InfluxDBConfig",
    "InfluxDBServer",
    "InfraSettings",
    "KafkaConfig",
    "KafkaServer",
    "ManagedServer",
    "ProcessServer",
    "free_port",
    "free_ports",
]
