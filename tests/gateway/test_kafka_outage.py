"""Kafka stopped mid-test: 503 within the deadline, the gateway stays up, nothing acked is lost."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from metricsflow.model.lineprotocol import parse
from tests.gateway.conftest import GatewayFactory, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEADLINE_S = 3.0


def batch(n: int) -> str:
    return "\n".join(f"outage,batch=b{n},host=h{i % 5} v={i} {n * 1000 + i}" for i in range(50))


async def test_a_kafka_outage_gives_503_in_time_and_every_acknowledged_point_survives(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    topic = await topic_factory(partitions=3)
    gw = gateway_factory(topic, produce_deadline_s=str(DEADLINE_S), retry_after_s="1")
    acked: list[str] = []
    n = 0
    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

        async def write() -> httpx.Response:
            nonlocal n
            n += 1
            body = batch(n)
            r = await client.post("/write?db=outage", content=body)
            if r.status_code == 204:
                acked.append(body)
            return r

        for _ in range(3):
            assert (await write()).status_code == 204
        await kafka_broker.stop_async()
        try:
            statuses = []
            for _ in range(3):
                started = time.monotonic()
                r = await write()
                elapsed = time.monotonic() - started
                statuses.append(r.status_code)
                assert r.status_code == 503, r.text
                assert r.headers["Retry-After"] == "1"
                assert elapsed < DEADLINE_S + 2.0
            assert (await client.get("/ping")).status_code == 204  # still up
            assert (await client.get("/health")).status_code == 503
        finally:
            await kafka_broker.start_async()
        # Clients retry 503s: keep writing until Kafka is back.
        deadline = time.monotonic() + 90
        ok = 0
        while ok < 3 and time.monotonic() < deadline:
            r = await write()
            assert r.status_code in (204, 503), r.text
            if r.status_code == 204:
                ok += 1
            else:
                await asyncio.sleep(1)
        assert ok == 3, "the gateway did not recover after Kafka came back"
        assert (await client.get("/health")).status_code == 200
    expected = {p for body in acked for p in parse(body)}
    records = await read_topic(
        kafka_broker.bootstrap, topic, min_points=len(expected), timeout_s=30
    )
    got = {p for r in records for p in r.points}
    assert expected <= got


async def test_the_gateway_accepts_writes_again_after_each_of_three_broker_restarts_under_load(
    topic_factory, gateway_factory: GatewayFactory, kafka_broker
) -> None:
    """Writers keep posting while the broker is stopped and restarted three times. Records in
    flight at a stop can leave the idempotent producer's sequence numbers out of step with
    the restarted broker (OutOfOrderSequenceNumber), which no retry fixes: the gateway must
    then replace its producer. After every restart it must answer 204 again within a bound,
    and every point that got a 204 must be in the topic."""
    topic = await topic_factory(partitions=3)
    gw = gateway_factory(topic, produce_deadline_s=str(DEADLINE_S), retry_after_s="1")
    acked: list[str] = []
    counter = iter(range(1, 1_000_000))
    stop = asyncio.Event()

    async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:

        async def writer() -> None:
            while not stop.is_set():
                body = batch(next(counter))
                r = await client.post("/write?db=restarts", content=body)
                assert r.status_code in (204, 503), r.text
                if r.status_code == 204:
                    acked.append(body)
                else:
                    await asyncio.sleep(0.2)

        writers = [asyncio.create_task(writer()) for _ in range(4)]
        try:
            for _ in range(3):
                await asyncio.sleep(1.5)
                await kafka_broker.stop_async()
                try:
                    await asyncio.sleep(1)
                finally:
                    await kafka_broker.start_async()
                before = len(acked)
                deadline = time.monotonic() + 45
                while len(acked) < before + 20:
                    assert time.monotonic() < deadline, (
                        f"only {len(acked) - before} writes acknowledged in 45 s after a restart"
                    )
                    await asyncio.sleep(0.2)
        finally:
            stop.set()
            await asyncio.gather(*writers)
        metrics = (await client.get("/metrics")).text
    resets = [
        line
        for line in metrics.splitlines()
        if line.startswith("gateway_kafka_producer_resets_total ")
    ]
    print(f"\nproducer resets over three restarts: {resets}; writes acknowledged: {len(acked)}")
    expected = {p for body in acked for p in parse(body)}
    records = await read_topic(
        kafka_broker.bootstrap, topic, min_points=len(expected), timeout_s=30
    )
    assert expected <= {p for r in records for p in r.points}
