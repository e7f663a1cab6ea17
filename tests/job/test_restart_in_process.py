"""A failed job restarts inside the worker, from its checkpoints, without leaving the group.

The runner runs in the test's event loop (real Kafka and InfluxDB), so that a failure can be
injected into the running job (``Job.fail_job``, what any task exception does).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.infra.kafka import KafkaServer
from metricsflow.job.runner import DownsamplingRunner
from metricsflow.model.message import make_headers
from metricsflow.worker.settings import WorkerSettings
from tests.job.stack import HTTP

pytestmark = [pytest.mark.integration]

S = 1_000_000_000


async def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def produce(bootstrap: str, topic: str, db: str, first: int, count: int) -> None:
    """``count`` records, one point each, alternating between partitions 0 and 1."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        now = time.time_ns()
        for i in range(first, first + count):
            line = f"m,host=h{i % 2} v={i} {now + i}".encode()
            await producer.send_and_wait(
                topic, line, partition=i % 2, headers=make_headers(db, None, None)
            )
    finally:
        await producer.stop()


def raw_count(influx: InfluxDBServer, db: str) -> int:
    r = HTTP.get(f"{influx.url}/query", params={"db": db, "q": 'SELECT count(v) FROM "raw"."m"'})
    series = r.json()["results"][0].get("series")
    return int(series[0]["values"][0][1]) if series else 0


async def test_a_failed_job_restarts_in_process_from_its_checkpoints_and_keeps_its_partitions(
    kafka_broker: KafkaServer,
    influxdb_server: InfluxDBServer,
    topic_factory: Any,
    influx_database_factory: Callable[..., str],
    tmp_path: Path,
) -> None:
    topic = await topic_factory(partitions=2)
    db = influx_database_factory()
    settings = WorkerSettings(
        worker_id="w1",
        data_dir=tmp_path,
        kafka_bootstrap_servers=kafka_broker.bootstrap,
        kafka_topic=topic,
        kafka_group_id=f"g-{topic}",
        kafka_session_timeout_ms=6000,
        influxdb_url=influxdb_server.url,
        influxdb_flush_interval_s=0.1,
        tiers="raw:7d,1s:7d",
        max_out_of_orderness="1s",
        idle_timeout="2s",
        checkpoint_interval_ms=200,
        restart_strategy="fixed-delay",
        restart_attempts=1,
        restart_delay_s=0.2,
    )
    runner = DownsamplingRunner(settings.runner_config())
    run = asyncio.create_task(runner.run())
    try:
        await wait_for(lambda: runner.job.key_groups == {0, 1}, "the assignment")
        await produce(kafka_broker.bootstrap, topic, db, 0, 20)
        await wait_for(lambda: raw_count(influxdb_server, db) == 20, "the first points")
        first = runner.job
        await wait_for(
            lambda: first.coordinator.latest_completed_checkpoint() is not None, "a checkpoint"
        )
        rebalances = runner.source.stats.rebalances

        first.fail_job(RuntimeError("injected task failure"))
        await wait_for(
            lambda: runner.job is not first and runner.job.key_groups == {0, 1},
            "the in-process restart",
        )
        assert runner.restarts == 1
        assert runner.state == "RUNNING"
        assert "injected task failure" in runner.last_failure
        assert runner.source.stats.rebalances == rebalances  # the consumer never left
        assert not run.done()

        await produce(kafka_broker.bootstrap, topic, db, 20, 20)
        await wait_for(lambda: raw_count(influxdb_server, db) == 40, "points after the restart")
        # the restored positions came from the checkpoint: the restarted job read on from
        # there (replaying at most what followed it, an idempotent overwrite)
        positions = {kg: runner.job.source_task(kg).reader for kg in (0, 1)}
        assert all(getattr(r, "next_offset", None) == 20 for r in positions.values())

        runner.job.fail_job(RuntimeError("second failure"))  # the strategy allows one
        with pytest.raises(RuntimeError, match="second failure"):
            await asyncio.wait_for(run, 30)
        assert runner.state == "FAILED"
    finally:
        if not run.done():
            runner.cancel()
            await asyncio.gather(run, return_exceptions=True)
