"""The stack the hostile tests attack: one gateway and one worker as real subprocesses on the
session's Kafka and InfluxDB (tests/conftest.py), shared by every test of a module, plus the
watchers the attacks are judged by: the gateway's RSS from ``/proc``, a ``/ping`` prober, and
"every component still running".

Built on tests/job/stack.py (same ``spawn``, ``Stack``, ``Sender`` and oracle) so that "good
data sent afterwards reaches its tiers exactly" is checked by the same code as the job tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.infra.kafka import KafkaServer
from metricsflow.infra.process import free_port
from tests.job.stack import TIER_SPEC, Proc, Stack, spawn, wait_http

WORKER_TOKEN = "hostile-worker-token"
ADMIN_TOKEN = "hostile-admin-token"
#: The gateway's resident memory may not grow past this under any attack (bytes). Idle it holds
#: ~110 MB (Python, FastAPI, aiokafka, protobuf, numpy); the attacks below send up to
#: GATEWAY_MAX_BODY_BYTES (25 MB) bodies that inflate to at most that size again.
GATEWAY_RSS_BOUND = 400 * 1024 * 1024
#: The gateway's GATEWAY_BODY_TIMEOUT_S in the hostile stack.
BODY_TIMEOUT_S = 2.0
#: The gateway's GATEWAY_HEADER_TIMEOUT_S and GATEWAY_MAX_CONNECTIONS in the hostile stack.
HEADER_TIMEOUT_S = 2.0
MAX_CONNECTIONS = 100
#: Every /ping during an attack must answer within this.
PING_BOUND_S = 0.2


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` and its children (uvicorn workers), from /proc."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        with contextlib.suppress(FileNotFoundError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


@dataclass
class Watch:
    """``/ping`` latencies and the gateway's peak RSS while a ``with stack.watch():`` runs."""

    pings_s: list[float] = field(default_factory=list)
    started_at: list[float] = field(default_factory=list)
    control_pings_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    peak_rss: int = 0

    @property
    def slowest_ping_s(self) -> float:
        return max(self.pings_s, default=0.0)

    def slow_pings(self, bound_s: float) -> list[tuple[float, float, float]]:
        """``(seconds since the watch began, latency, control latency)`` of the pings slower
        than ``bound_s`` while the control gateway's ping, sent right after, was not: the
        attacked gateway was slow, not the machine. (This machine may be shared and loaded;
        an idle gateway process next to the attacked one tells the two apart.)"""
        origin = self.started_at[0] if self.started_at else 0.0
        return [
            (round(t - origin, 3), round(p, 3), round(c, 3))
            for t, p, c in zip(self.started_at, self.pings_s, self.control_pings_s, strict=True)
            if p >= bound_s and c < bound_s / 2
        ]


@dataclass
class HostileStack:
    stack: Stack
    worker: Proc
    control: Proc
    """An idle gateway on the same machine, never attacked: the yardstick of its load."""

    @property
    def gateway(self) -> Proc:
        return self.stack.gateway

    @property
    def db(self) -> str:
        return self.stack.db

    def all_running(self) -> list[str]:
        """Names of the components that are not running (empty: all are)."""
        down = []
        if self.stack.gateway.proc.poll() is not None:
            down.append("gateway")
        if self.worker.proc.poll() is not None:
            down.append("worker")
        if not self.stack.influx.is_running():
            down.append("influxdb")
        if not self.stack.kafka.is_running():
            down.append("kafka")
        return down

    @contextlib.contextmanager
    def watch(self, period_s: float = 0.05) -> Iterator[Watch]:
        """Probe ``/ping`` and sample the gateway's RSS every ``period_s`` meanwhile."""
        result = Watch()
        stop = threading.Event()
        pid = self.stack.gateway.proc.pid

        def loop() -> None:
            with httpx.Client(timeout=5) as client:
                while not stop.is_set():
                    result.peak_rss = max(result.peak_rss, rss_bytes(pid))
                    started = time.monotonic()
                    try:
                        status = client.get(f"{self.stack.gateway.url}/ping").status_code
                        if status != 204:
                            result.failures.append(f"/ping answered {status}")
                    except httpx.HTTPError as exc:
                        result.failures.append(f"/ping failed: {exc!r}")
                    result.pings_s.append(time.monotonic() - started)
                    result.started_at.append(started)
                    control_started = time.monotonic()
                    try:
                        client.get(f"{self.control.url}/ping")
                    except httpx.HTTPError as exc:
                        result.failures.append(f"control /ping failed: {exc!r}")
                    result.control_pings_s.append(time.monotonic() - control_started)
                    stop.wait(period_s)

        thread = threading.Thread(target=loop, name="ping-prober", daemon=True)
        thread.start()
        try:
            yield result
        finally:
            stop.set()
            thread.join(10)


def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    async def create() -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, partitions, 1)])
            for _ in range(100):
                described = await admin.describe_topics([topic])
                parts = described[0].get("partitions", [])
                if len(parts) == partitions and all(p.get("leader", -1) >= 0 for p in parts):
                    return
                await asyncio.sleep(0.1)
        finally:
            await admin.close()

    asyncio.run(create())


def start_hostile_stack(
    kafka: KafkaServer, influx: InfluxDBServer, tmp: Path, partitions: int = 2
) -> HostileStack:
    topic = f"hostile-{uuid.uuid4().hex[:8]}"
    create_topic(kafka.bootstrap, topic, partitions)
    db = f"hostile_{uuid.uuid4().hex[:8]}"
    httpx.post(f"{influx.url}/query", data={"q": f'CREATE DATABASE "{db}"'}).raise_for_status()
    port = free_port()
    gateway = spawn(
        ["gateway", "--port", str(port), "--bootstrap-servers", kafka.bootstrap, "--topic", topic],
        {
            "GATEWAY_INFLUXDB_URL": influx.url,
            "GATEWAY_QUERY_TIERS": TIER_SPEC,
            "GATEWAY_QUERY_ADMIN_TOKENS": ADMIN_TOKEN,
            "GATEWAY_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S),
            "GATEWAY_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
            "GATEWAY_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "GATEWAY_MAX_FUTURE_S": "86400",
        },
        tmp / "gateway.log",
        f"http://127.0.0.1:{port}",
    )
    wait_http(f"{gateway.url}/health", proc=gateway.proc)
    control_port = free_port()
    control = spawn(
        [
            "gateway",
            "--port",
            str(control_port),
            "--bootstrap-servers",
            kafka.bootstrap,
            "--topic",
            topic,
        ],
        {"GATEWAY_INFLUXDB_URL": influx.url},
        tmp / "control-gateway.log",
        f"http://127.0.0.1:{control_port}",
    )
    wait_http(f"{control.url}/health", proc=control.proc)
    stack = Stack(kafka, influx, topic, db, tmp, gateway, procs=[control])
    worker = stack.worker("w1", METRICSFLOW_API_TOKEN=WORKER_TOKEN)
    return HostileStack(stack, worker, control)


def stop_hostile_stack(hostile: HostileStack) -> None:
    for proc in [*hostile.stack.procs, hostile.stack.gateway]:
        proc.kill()
    with contextlib.suppress(httpx.HTTPError):
        httpx.post(
            f"{hostile.stack.influx.url}/query",
            data={"q": f'DROP DATABASE "{hostile.stack.db}"'},
            timeout=10,
        )
