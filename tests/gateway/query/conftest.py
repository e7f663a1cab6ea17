"""Fixtures of the query API tests: a tiered data set in the real InfluxDB, and the query API
mounted in an app (in process, over ASGI) pointing at that InfluxDB."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
from fastapi import FastAPI

from gateway.query.base import QuerySettings
from gateway.query.router import create_query_router
from gateway.query.testing import TieredDataset, write_tiered_dataset
from metricsflow.infra.influxdb import InfluxDBServer

DatasetFactory = Callable[[], TieredDataset]


@pytest.fixture(scope="module")
def tiered_dataset_factory(influxdb_server: InfluxDBServer) -> Iterator[DatasetFactory]:
    """``ds = tiered_dataset_factory()``: one database per test module holding three days of
    random points in raw and the reference tiers in ``"1m"``, ``"1h"``, ``"1d"``."""
    made: list[TieredDataset] = []

    def make() -> TieredDataset:
        if not made:
            db = f"query_{uuid.uuid4().hex[:10]}"
            httpx.post(f"{influxdb_server.url}/query", data={"q": f'CREATE DATABASE "{db}"'})
            made.append(write_tiered_dataset(influxdb_server.url, db, end_ns=time.time_ns()))
        return made[0]

    yield make
    for ds in made:
        httpx.post(f"{influxdb_server.url}/query", data={"q": f'DROP DATABASE "{ds.database}"'})


QueryClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
async def query_client_factory(
    influxdb_server: InfluxDBServer,
) -> AsyncIterator[QueryClientFactory]:
    """``client = query_client_factory(**QuerySettings)``: an httpx client talking to an app
    that mounts only the query router, pointed at the session InfluxDB."""
    clients: list[httpx.AsyncClient] = []

    def make(**settings: object) -> httpx.AsyncClient:
        app = FastAPI()
        app.include_router(
            create_query_router(QuerySettings(influxdb_url=influxdb_server.url, **settings))  # type: ignore[arg-type]
        )
        client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway", timeout=60
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
