"""Differential test, end to end: generated bodies written through the gateway (partial writes),
Kafka and a worker land in the raw tier exactly as the same bodies written directly to InfluxDB
land in a database with the same raw retention policy; the gateway answers 204 exactly when
InfluxDB does (but for the documented deliberate refusals).

A representative subset of tests/model/test_lineprotocol_influxdb.py (which checks 2,000+
bodies against the parser): 100 bodies, timestamps in seconds within the raw tier's retention,
lines without timestamps, escapes, unicode, every field type, damage.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings

from metricsflow.model.lineprotocol import PRECISION_V1
from tests.job.stack import Stack, stack_factory
from tests.model.influx_diff import deliberate_prefixes, influx, stored
from tests.model.lp_bodies import Body, bodies
from tests.model.test_lp_native import canonicalize_checked

__all__ = ["stack_factory"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOUR_NS = 3_600_000_000_000


def compare_rows(stack: Stack, direct: str, window: tuple[int, int], skip: set[str]) -> list[str]:
    try:
        return _compare_rows(stack, direct, window, skip)
    except AssertionError as exc:  # e.g. the worker has not created the raw tier yet
        return [str(exc)]


def _compare_rows(stack: Stack, direct: str, window: tuple[int, int], skip: set[str]) -> list[str]:
    a = stored(stack.influx.url, direct, None, window, skip, "/^L/")["rows"]
    b = stored(stack.influx.url, stack.db, "raw", window, skip, "/^L/")["rows"]
    return [f"only in InfluxDB: {x!r}" for x in a if x not in b][:10] + [
        f"only through the pipeline: {x!r}" for x in b if x not in a
    ][:10]


@pytest.mark.timeout(900)
async def test_bodies_through_the_pipeline_land_in_the_raw_tier_as_influxdb_stores_them(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    stack.worker("w1")
    url = stack.influx.url
    direct = f"{stack.db}_direct"
    influx(url, f'CREATE DATABASE "{direct}" WITH DURATION 7d REPLICATION 1 NAME "raw"')
    now_s = time.time_ns() // 10**9
    stamps = [str(now_s - d) for d in (7_200, 7_201, 86_400, 300_000)] + ["12x", "-"]
    skip: set[str] = set()
    texts: list[str] = []
    start = time.time_ns()
    try:
        with httpx.Client(timeout=60) as client:

            @settings(
                max_examples=2,
                derandomize=True,
                database=None,
                deadline=None,
                suppress_health_check=list(HealthCheck),
                phases=[Phase.generate],
            )
            @given(bodies(50, timestamps=stamps, precisions=["s"]))
            def send(batch: list[Body]) -> None:
                for b in batch:
                    text = b.text.replace("L§", f"L{len(texts)}")
                    texts.append(text)
                    ours = canonicalize_checked(
                        text,
                        precision_factor=PRECISION_V1["s"],
                        default_time_ns=time.time_ns(),
                    )
                    deliberate = deliberate_prefixes(ours.errors)
                    skip.update(deliberate)
                    params = {"precision": "s"}
                    r_direct = client.post(
                        f"{url}/write", params={**params, "db": direct}, content=text.encode()
                    )
                    r_gw = client.post(
                        f"{stack.gateway.url}/write",
                        params={**params, "db": stack.db},
                        content=text.encode(),
                    )
                    assert r_gw.status_code in (204, 400), r_gw.text
                    # points older than the raw tier's retention: InfluxDB says so in a 400,
                    # the gateway accepts them and the worker's write is refused (documented)
                    if not deliberate and "beyond retention" not in r_direct.text:
                        assert (r_gw.status_code == 204) == (r_direct.status_code == 204), (
                            text,
                            r_direct.text,
                            r_gw.text,
                        )

            send()
        assert len(texts) == 100
        window = (start - HOUR_NS, time.time_ns() + HOUR_NS)
        deadline = time.monotonic() + 180
        problems = compare_rows(stack, direct, window, skip)
        while problems and time.monotonic() < deadline:  # the worker writes as it consumes
            await asyncio.sleep(1)
            problems = compare_rows(stack, direct, window, skip)
        assert not problems, "\n".join(problems) + "\nbodies: " + repr(texts)
    finally:
        influx(url, f'DROP DATABASE "{direct}"')
