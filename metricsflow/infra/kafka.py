"""A real single-node Apache Kafka broker in KRaft mode, assembled from Maven Central.

Kafka 3.9.1 is pinned: aiokafka (0.12-0.14) still needs the older protocol versions that
Kafka 4.0 removed, and 3.9 runs KRaft without ZooKeeper. The jars come from
``deploy/kafka/pom.xml`` through ``mvn dependency:copy-dependencies`` into
``~/.cache/metricsflow/kafka-3.9.1/libs``; a marker file (holding the pom's hash) is written
only after a complete copy, so an interrupted install is redone.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from metricsflow.errors import InfrastructureError
from metricsflow.infra.process import (
    LOOPBACK,
    ProcessServer,
    file_lock,
    run_coroutine_sync,
    wait_until,
)

logger = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
SCALA_VERSION = "2.13"
_READINESS_GROUP = "metricsflow-readiness-probe"

LOG4J_PROPERTIES = """\
# Written by metricsflow: everything to stdout, which metricsflow appends to kafka.log.
log4j.rootLogger=INFO, stdout
log4j.appender.stdout=org.apache.log4j.ConsoleAppender
log4j.appender.stdout.layout=org.apache.log4j.PatternLayout
log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel$=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.org.apache.kafka.storage.internals.log=WARN
"""


def default_pom() -> Path:
    """``$METRICSFLOW_KAFKA_POM``, else ``deploy/kafka/pom.xml`` of this source tree."""
    override = os.environ.get("METRICSFLOW_KAFKA_POM")
    if override:
        return Path(override).expanduser().resolve()
    return Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, base64url without padding (``Uuid.toString``),
    never starting with '-' (as Kafka's ``Uuid.randomUuid`` guarantees)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def install_kafka(cache_dir: Path, pom: Path | None = None) -> Path:
    """Download Kafka's jars into ``<cache_dir>/kafka-<version>/libs`` (once); return that
    directory. Idempotent, safe against concurrent installs and interrupted downloads."""
    pom = pom or default_pom()
    if not pom.is_file():
        raise InfrastructureError(f"kafka install: pom not found at {pom} (METRICSFLOW_KAFKA_POM)")
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()[:16]
    home = cache_dir / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    marker = home / ".installed"

    def installed() -> bool:
        return marker.is_file() and marker.read_text().strip() == digest and libs.is_dir()

    if installed():
        return libs
    home.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / f".kafka-{KAFKA_VERSION}.lock"):
        if installed():
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise InfrastructureError(
                "kafka install: Maven ('mvn') is not on PATH; install it "
                "(Debian: apt-get install maven) — Kafka's jars come from Maven Central"
            )
        marker.unlink(missing_ok=True)
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ]
        logger.info("installing kafka version=%s into=%s", KAFKA_VERSION, libs)
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=900)
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            raise InfrastructureError(
                f"kafka install: mvn exited with {result.returncode}\n{tail}", retriable=True
            )
        main_jar = partial / f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar"
        if not main_jar.is_file():
            raise InfrastructureError(
                f"kafka install: {main_jar.name} missing after mvn; does {pom} pin "
                f"kafka {KAFKA_VERSION} (metricsflow.infra.kafka.KAFKA_VERSION)?"
            )
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text(digest + "\n")
        logger.info("installed kafka version=%s jars=%d", KAFKA_VERSION, len(list(libs.iterdir())))
    return libs


def find_java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise InfrastructureError(
            "kafka: 'java' is not on PATH and JAVA_HOME is unset; install a JRE 17 "
            "(Debian: apt-get install openjdk-17-jre-headless)"
        )
    return java


@dataclass(frozen=True)
class KafkaConfig:
    """One single-node KRaft broker+controller on loopback."""

    data_dir: Path
    cache_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    node_id: int = 1
    #: Extra ``server.properties`` entries (override the defaults below).
    extra_properties: tuple[tuple[str, str], ...] = field(default=())


class KafkaServer(ProcessServer):
    """A Kafka 3.9.1 broker (KRaft, combined broker+controller) run from the cached jars."""

    name = "kafka"
    start_timeout_s = 90.0
    stop_timeout_s = 30.0

    def __init__(self, config: KafkaConfig) -> None:
        super().__init__(config.data_dir)
        self.config = config

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``, for ``bootstrap_servers``."""
        return f"{LOOPBACK}:{self.config.port}"

    @property
    def address(self) -> str:
        return self.bootstrap

    @property
    def libs_dir(self) -> Path:
        return self.config.cache_dir / f"kafka-{KAFKA_VERSION}" / "libs"

    @property
    def logs_dir(self) -> Path:
        """Kafka's ``log.dirs``: the topic data (not the server's text log)."""
        return self.data_dir / "kafka-logs"

    def ports(self) -> tuple[int, ...]:
        return (self.config.port, self.config.controller_port)

    def install(self) -> None:
        install_kafka(self.config.cache_dir)
        find_java()

    def server_properties(self) -> dict[str, str]:
        c = self.config
        props = {
            "process.roles": "broker,controller",
            "node.id": str(c.node_id),
            "controller.quorum.voters": f"{c.node_id}@{LOOPBACK}:{c.controller_port}",
            "listeners": f"PLAINTEXT://{LOOPBACK}:{c.port},CONTROLLER://{LOOPBACK}:{c.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{LOOPBACK}:{c.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(self.logs_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "4",
            "group.initial.rebalance.delay.ms": "0",
            # After a crash (SIGKILL) the restarted broker cannot register until the old
            # incarnation's session expires (DUPLICATE_BROKER_REGISTRATION): 9 s by default.
            "broker.session.timeout.ms": "4000",
            "broker.heartbeat.interval.ms": "1000",
            "auto.create.topics.enable": "true",
            "delete.topic.enable": "true",
        }
        props.update(dict(c.extra_properties))
        return props

    def prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.server_properties()
        (self.data_dir / "server.properties").write_text(
            "# Written by metricsflow (metricsflow/infra/kafka.py); regenerated on every start.\n"
            + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        (self.data_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
        if not (self.logs_dir / "meta.properties").is_file():
            self._format_storage()

    def _java_base(self) -> list[str]:
        return [
            find_java(),
            f"-Dlog4j.configuration=file:{self.data_dir / 'log4j.properties'}",
            "-Djava.awt.headless=true",
            "-cp",
            f"{self.libs_dir}/*",
        ]

    def _format_storage(self) -> None:
        cluster_id = new_cluster_id()
        argv = [
            *self._java_base(),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(self.data_dir / "server.properties"),
        ]
        logger.info("formatting kafka storage dir=%s cluster_id=%s", self.logs_dir, cluster_id)
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=120)
        if result.returncode != 0:
            raise InfrastructureError(
                f"kafka: StorageTool format failed (exit {result.returncode}):\n"
                + "\n".join((result.stdout + result.stderr).splitlines()[-30:])
            )

    def command(self) -> list[str]:
        base = self._java_base()
        return [
            base[0],
            f"-Xmx{self.config.heap}",
            "-Xms128m",
            "-XX:+ExitOnOutOfMemoryError",
            *base[1:],
            "kafka.Kafka",
            str(self.data_dir / "server.properties"),
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # Never let a caller's JVM options (for the kafka-*.sh scripts) change our broker.
        for name in (
            "KAFKA_OPTS",
            "KAFKA_HEAP_OPTS",
            "KAFKA_JVM_PERFORMANCE_OPTS",
            "JAVA_TOOL_OPTIONS",
        ):
            env.pop(name, None)
        return env

    # -- health ------------------------------------------------------------------------------

    def _port_open(self) -> bool:
        try:
            with socket.create_connection((LOOPBACK, self.config.port), timeout=1.0):
                return True
        except OSError:
            return False

    async def _describe_cluster(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient  # lazy: keeps the CLI quick

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            cluster = await admin.describe_cluster()
            return bool(cluster.get("brokers"))
        finally:
            await admin.close()

    async def _find_coordinator(self) -> bool:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        try:
            await admin.start()
            await admin.find_coordinator(_READINESS_GROUP)
            return True
        finally:
            await admin.close()

    def health(self) -> bool:
        """A real metadata request (DescribeCluster) through aiokafka's admin client."""
        if not self._port_open():  # cheap pre-check; keeps aiokafka from logging errors
            return False
        return run_coroutine_sync(self._describe_cluster, timeout_s=10.0)

    def after_healthy(self) -> None:
        """Wait until the group coordinator answers (creates ``__consumer_offsets``), so that
        the first consumer group of a test does not meet GroupCoordinatorNotAvailable."""
        wait_until(
            lambda: run_coroutine_sync(self._find_coordinator, timeout_s=10.0),
            timeout_s=self.start_timeout_s,
            what=f"kafka group coordinator at {self.bootstrap}",
            interval_s=0.2,
            alive=self.is_running,
            detail=self.log_tail,
        )
