"""A real Prometheus (2.42) scrapes itself and remote-writes to the gateway."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import httpx
import pytest

from metricsflow.infra.process import ProcessServer, free_port
from metricsflow.model.declarations import DeclaredKind
from tests.gateway.conftest import GatewayFactory, read_topic
from tests.gateway.test_real_clients import expected_partition

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class PrometheusServer(ProcessServer):
    """Prometheus on loopback with its own config and data dir; stopped by its PID file."""

    name = "prometheus"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        remote_write_url: str,
        metadata_send_interval: str = "1m",
    ) -> None:
        super().__init__(data_dir)
        self.port = port
        self.remote_write_url = remote_write_url
        self.metadata_send_interval = metadata_send_interval

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def install(self) -> None:
        if shutil.which("prometheus") is None:
            raise RuntimeError("prometheus is not installed (Debian package 'prometheus')")

    def ports(self) -> tuple[int, ...]:
        return (self.port,)

    def prepare(self) -> None:
        (self.data_dir / "prometheus.yml").write_text(
            f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: self
    static_configs:
      - targets: ["127.0.0.1:{self.port}"]
remote_write:
  - url: "{self.remote_write_url}"
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 2000
    metadata_config:
      send_interval: {self.metadata_send_interval}
"""
        )

    def command(self) -> list[str]:
        return [
            shutil.which("prometheus") or "prometheus",
            f"--config.file={self.data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def health(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200


async def test_prometheus_remote_write_lands_each_sample_decoded_and_partitioned(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker, tmp_path: Path
) -> None:
    topic = await topic_factory(partitions=4)
    gw = gateway_factory(topic)
    prom = PrometheusServer(
        tmp_path / "prometheus",
        free_port(),
        f"{gw.url}/api/v1/write?db=promdb",
        metadata_send_interval="1s",
    )
    await asyncio.to_thread(prom.start)
    try:
        # wait until a few scrapes and the metadata have been remote-written
        up = []
        declared: dict[int, dict[str, DeclaredKind]] = {}
        deadline = time.monotonic() + 60
        while (len(up) < 3 or len(declared) < 4) and time.monotonic() < deadline:
            await asyncio.sleep(1)
            records = await read_topic(kafka_broker.bootstrap, topic, min_points=1, timeout_s=2)
            up = [(r, p) for r in records for p in r.points if p.measurement == "up"]
            declared = {}
            for r in records:
                if r.is_declaration:
                    declared.setdefault(r.partition, {}).update(r.kinds)
        assert len(up) >= 3, "no 'up' samples reached Kafka"
        async with httpx.AsyncClient(base_url=prom.url) as client:
            raw = (await client.get("/api/v1/query", params={"query": "up[5m]"})).json()
    finally:
        await asyncio.to_thread(prom.stop)
    (series,) = raw["data"]["result"]
    in_prometheus = {(round(float(t) * 1000) * 1_000_000, float(v)) for t, v in series["values"]}
    labels = {k: v for k, v in series["metric"].items() if k != "__name__"}
    for record, point in up:
        assert record.db == "promdb"
        assert record.partition == expected_partition(point, 4)
        assert dict(point.tags) == labels
        assert (point.time_ns, point.fields[0][1]) in in_prometheus
        assert point.fields[0][0] == "value"
    assert all(r.db == "promdb" for r in records)
    # Prometheus' metadata, as kinds1 records in every partition
    assert sorted(declared) == [0, 1, 2, 3]
    for kinds in declared.values():
        assert kinds["prometheus_http_requests_total"] is DeclaredKind.COUNTER
        assert kinds["go_goroutines"] is DeclaredKind.GAUGE
        assert kinds["go_gc_duration_seconds_count"] is DeclaredKind.COUNTER
    assert len({p.measurement for r in records for p in r.points}) > 20
