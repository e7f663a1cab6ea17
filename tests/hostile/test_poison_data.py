"""A pipeline that cannot be stopped by data: records that no operator could process, produced
straight to Kafka by another producer (the gateway refuses them at the door), are dead-lettered
with their partition and offset, and the job goes on: good data sent afterwards reaches every
tier exactly, with no job restart.

The reported crash: ``edge v=1 9223372036`` at precision s (an ``OverflowError`` computing the
window end near int64 max) and a 300-character database name (``CREATE DATABASE`` refused by
InfluxDB) each stopped the worker for good."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from metricsflow.model.message import encode_lines
from tests.hostile.stack import HostileStack
from tests.job.stack import Sender, assert_tiers_match_oracle

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def produce_foreign(bootstrap: str, topic: str, records: list[tuple[str, str]]) -> None:
    """Produce ``(db, line)`` records to partition 0, as another producer might."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for db, line in records:
            for record in encode_lines(["edge"], [line], db):
                await producer.send_and_wait(
                    topic, record.value, key=record.key, headers=record.headers, partition=0
                )
    finally:
        await producer.stop()


async def dead_letters(bootstrap: str, topic: str, count: int) -> list[dict[str, bytes]]:
    consumer = AIOKafkaConsumer(
        f"{topic}.dlq", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[dict[str, bytes]] = []
    try:
        deadline = time.monotonic() + 60
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                found.extend(dict(r.headers) for r in records)
    finally:
        await consumer.stop()
    return found


async def test_records_no_operator_can_process_are_dead_lettered_and_the_job_goes_on(
    hostile: HostileStack,
) -> None:
    stack = hostile.stack
    now_s = time.time_ns() // 10**9
    poison = [
        (stack.db, "edge v=1 9223372036000000000"),  # window end beyond int64
        (stack.db, "edge v=1 -9223372036000000000"),
        ("x" * 300, f"edge v=1 {now_s * 10**9}"),  # CREATE DATABASE: name too long
        ("a/b", f"edge v=1 {now_s * 10**9}"),  # CREATE DATABASE: invalid name
        (stack.db, f"edge v\x00x=1 {now_s * 10**9}"),  # NUL: the window key's separator
        (stack.db, f"edge,t=a\x00b v=1,v\x00x=2 {now_s * 10**9}"),  # (known key ids too)
    ]
    await produce_foreign(stack.kafka.bootstrap, stack.topic, poison)
    letters = await dead_letters(stack.kafka.bootstrap, stack.topic, len(poison))
    assert len(letters) == len(poison), letters
    errors = sorted(h["mf-dlq-error"].decode() for h in letters)
    assert sum("outside the range the pipeline stores" in e for e in errors) == 2, errors
    assert any("is 300 bytes long" in e for e in errors), errors
    assert any("contains '/'" in e for e in errors), errors
    assert sum("contains NUL" in e for e in errors) == 2, errors
    assert {h["mf-dlq-partition"] for h in letters} == {b"0"}
    assert len({h["mf-dlq-offset"] for h in letters}) == len(poison)

    sender = Sender(stack.gateway.url, stack.db, series=6)
    await asyncio.to_thread(sender.run_for, 3)
    await asyncio.to_thread(assert_tiers_match_oracle, stack, sender)
    assert hostile.all_running() == []
    async with httpx.AsyncClient(timeout=10) as client:
        answer = await client.get(f"{hostile.worker.url}/jobs/overview")
    overview = answer.json()["jobs"][0]
    assert overview["restarts"] == 0, overview["last_failure"]
