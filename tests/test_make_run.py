"""``make run`` (README.md, "Two commands"): the whole stack on loopback, in the foreground.

Starts ``make run`` as a user would, on free ports, waits for the ready line, checks each
address with a real client (a Kafka producer, InfluxDB's ``/ping``, a line-protocol write
through the gateway that the worker lands in the raw tier), then sends SIGINT to ``make``
alone and checks that every process it started is gone.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from metricsflow.infra.process import free_ports

REPO = Path(__file__).resolve().parents[1]
COMPONENTS = ("kafka", "influxdb", "gateway", "worker")


def _pid(infra_dir: Path, name: str) -> int:
    return int((infra_dir / name / f"{name}.pid").read_text().split()[0])


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_make_run_prints_the_ready_line_serves_every_component_and_stops_on_sigint(
    infra_env: dict[str, str],
) -> None:
    gateway, worker = free_ports(2)
    env = {
        **infra_env,
        "METRICSFLOW_GATEWAY_PORT": str(gateway),
        "METRICSFLOW_WORKER_PORT": str(worker),
        "METRICSFLOW_KAFKA_TOPIC": "make-run-metrics",
    }
    make = subprocess.Popen(
        ["make", "--no-print-directory", "run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    try:
        assert make.stdout is not None
        for line in make.stdout:
            seen.append(line)
            if line.startswith("metricsflow ready "):
                break
        else:
            pytest.fail("make run ended without the ready line:\n" + "".join(seen[-40:]))
        addresses = dict(part.split("=", 1) for part in line.split()[2:])
        assert list(addresses) == list(COMPONENTS)
        assert addresses["kafka"] == f"127.0.0.1:{infra_env['METRICSFLOW_KAFKA_PORT']}"
        assert addresses["gateway"] == f"http://127.0.0.1:{gateway}"

        asyncio.run(_probe(addresses))

        pids = {name: _pid(Path(infra_env["METRICSFLOW_INFRA_DIR"]), name) for name in COMPONENTS}
        make.send_signal(signal.SIGINT)
        make.wait(timeout=90)
        for name, pid in pids.items():
            assert not Path(f"/proc/{pid}").exists(), f"{name} (pid {pid}) still running"
    finally:
        if make.poll() is None:
            make.send_signal(signal.SIGTERM)
            make.wait(timeout=90)


async def _probe(addresses: dict[str, str]) -> None:
    """Each address answers a real client; a write through the gateway lands in raw."""
    producer = AIOKafkaProducer(
        bootstrap_servers=addresses["kafka"], acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = await producer.send_and_wait("make-run-probe", b"probe")
    finally:
        await producer.stop()
    assert sent.offset == 0

    async with httpx.AsyncClient(timeout=10) as client:
        ping = await client.get(f"{addresses['influxdb']}/ping")
        assert ping.status_code == 204
        now_ns = time.time_ns()
        body = f"cpu,host=a usage=1.5 {now_ns}\ncpu,host=b usage=2.5 {now_ns}\n"
        written = await client.post(f"{addresses['gateway']}/write?db=makerun", content=body)
        assert written.status_code == 204, written.text
        rows: list[list[object]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(rows) < 2:
            answer = await client.get(
                f"{addresses['influxdb']}/query",
                params={"db": "makerun", "q": 'SELECT "usage", "host" FROM "raw"."cpu"'},
            )
            series = answer.json()["results"][0].get("series", [])
            rows = series[0]["values"] if series else []
            if len(rows) < 2:
                await asyncio.sleep(0.5)
        assert sorted((row[2], row[1]) for row in rows) == [("a", 1.5), ("b", 2.5)]
        health = await client.get(f"{addresses['worker']}/health")
        assert health.status_code == 200
