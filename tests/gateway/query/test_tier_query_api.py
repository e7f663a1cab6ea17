"""Acceptance: the query API answers from the coarsest tier that can, and its answers equal
InfluxDB's own answers over the raw tier.

Real InfluxDB, no mocks: three days of random points are written to the raw tier and the tiers
computed from them by an independent reference (``gateway.query.testing``); every query goes
once through the query API and once straight to InfluxDB, and the two JSON answers must agree:
same series, tags, columns and times; counts, min, max, first, last exactly equal; sum and
mean within a relative 1e-9 (float additions happen in a different order).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from gateway.query.base import TIER_HEADER
from gateway.query.testing import HOUR_NS, MINUTE_NS, NS, TieredDataset
from metricsflow.infra.influxdb import InfluxDBServer

DatasetFactory = Callable[[], TieredDataset]
QueryClientFactory = Callable[..., httpx.AsyncClient]

pytestmark = pytest.mark.integration

REL_TOLERANCE = 1e-9

INTERVAL_TIERS = [
    ("90s", "raw"),
    ("1m", "1m"),
    ("5m", "1m"),
    ("1h", "1h"),
    ("6h", "1h"),
    ("1d", "1d"),
    ("7d", "1d"),
]


def time_filter(ds: TieredDataset) -> str:
    """An absolute, unaligned range as Grafana renders ``$timeFilter`` (milliseconds)."""
    start = ds.start_ns + 37 * MINUTE_NS + 13_123_000_000
    end = ds.end_ns - 2 * HOUR_NS - 17_500_000_000
    return f"time >= {start // 1_000_000}ms and time <= {end // 1_000_000}ms"


def assert_values_equal(got: Any, want: Any, column: str, where: str) -> None:
    if isinstance(want, float) or isinstance(got, float):
        assert got is not None, f"{where} {column}: {got} != {want}"
        assert want is not None, f"{where} {column}: {got} != {want}"
        assert math.isclose(got, want, rel_tol=REL_TOLERANCE, abs_tol=1e-9), (
            f"{where} {column}: {got} != {want}"
        )
    else:
        assert got == want, f"{where} {column}: {got!r} != {want!r}"


def assert_same_answer(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert "error" not in got, got
    assert "error" not in want, want
    assert len(got["results"]) == len(want["results"])
    for g, w in zip(got["results"], want["results"], strict=True):
        assert g.get("statement_id") == w.get("statement_id")
        assert g.get("error") == w.get("error")
        g_series, w_series = g.get("series", []), w.get("series", [])
        assert [(s["name"], s.get("tags")) for s in g_series] == [
            (s["name"], s.get("tags")) for s in w_series
        ]
        for gs, ws in zip(g_series, w_series, strict=True):
            assert gs["columns"] == ws["columns"]
            assert [r[0] for r in gs["values"]] == [r[0] for r in ws["values"]], gs.get("tags")
            for g_row, w_row in zip(gs["values"], ws["values"], strict=True):
                for col, gv, wv in zip(gs["columns"][1:], g_row[1:], w_row[1:], strict=True):
                    assert_values_equal(gv, wv, col, f"{gs.get('tags')} t={g_row[0]}")


async def ask_both(
    api: httpx.AsyncClient, influxdb_url: str, db: str, q: str, epoch: str | None = "ms"
) -> tuple[httpx.Response, dict[str, Any]]:
    params = {"db": db, "q": q} | ({"epoch": epoch} if epoch else {})
    got = await api.get("/query", params=params)
    async with httpx.AsyncClient(timeout=60) as direct:
        want = await direct.get(f"{influxdb_url}/query", params=params)
    assert want.status_code == 200, want.text
    return got, want.json()


@pytest.mark.parametrize(("interval", "tier"), INTERVAL_TIERS)
@pytest.mark.parametrize("aggregate", ["count", "sum", "min", "max", "mean", "first", "last"])
async def test_each_aggregate_is_answered_from_the_coarsest_fitting_tier_with_raw_values(
    aggregate: str,
    interval: str,
    tier: str,
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    group = "*" if aggregate in ("first", "last") else '"host"'
    q = (
        f'SELECT {aggregate}("usage") FROM "cpu" WHERE ("region" =~ /^(eu|us)$/) AND '
        f"{time_filter(ds)} GROUP BY time({interval}), {group} fill(null)"
    )
    got, want = await ask_both(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.status_code == 200, got.text
    assert got.headers[TIER_HEADER] == tier
    assert_same_answer(got.json(), want)
    assert want["results"][0]["series"], "the query should return data"


@pytest.mark.parametrize("fill", ["none", "0", "-1.5", "previous", "linear"])
async def test_fills_of_a_tier_answer_match_the_fills_of_raw(
    fill: str,
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    q = (
        f'SELECT mean("usage"), count("usage"), max("temp") FROM "cpu" WHERE {time_filter(ds)} '
        f'GROUP BY time(5m), "host" fill({fill})'
    )
    got, want = await ask_both(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1m"
    assert_same_answer(got.json(), want)


async def test_several_aggregates_keep_the_column_names_influxdb_gives_them(
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    q = (
        'SELECT mean("usage"), mean("usage"), max("temp") AS "hot", count(usage) AS mean_1, '
        f"sum(temp), min(temp) FROM cpu WHERE host = 'a' AND {time_filter(ds)} "
        "GROUP BY time(2h)"
    )
    got, want = await ask_both(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1h"
    assert_same_answer(got.json(), want)
    assert got.json()["results"][0]["series"][0]["columns"] == [
        "time",
        "mean",
        "mean_2",
        "hot",
        "mean_1",
        "sum",
        "min",
    ]


async def test_relative_ranges_and_rfc3339_times_are_answered_like_raw(
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    q = 'SELECT max("usage"), count("usage") FROM "cpu" WHERE time >= now() - 2d GROUP BY time(3h)'
    got, want = await ask_both(
        query_client_factory(), influxdb_server.url, ds.database, q, epoch=None
    )
    assert got.headers[TIER_HEADER] == "1h"
    assert_same_answer(got.json(), want)
    assert isinstance(got.json()["results"][0]["series"][0]["values"][0][0], str)


async def test_statements_of_one_request_each_use_their_own_tier(
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    q = (
        f'SHOW MEASUREMENTS; SELECT sum("usage") FROM "cpu" WHERE {time_filter(ds)} '
        f"GROUP BY time(1d); SELECT count(usage) FROM cpu WHERE {time_filter(ds)} "
        "GROUP BY time(90s)"
    )
    got, want = await ask_both(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "raw,1d,raw"
    assert_same_answer(got.json(), want)


@pytest.mark.parametrize(
    "select",
    [
        'SELECT "usage" FROM "cpu" WHERE {tf}',
        'SELECT mean("usage") FROM "cpu" WHERE "usage" > 50 AND {tf} GROUP BY time(1h)',
        'SELECT median("usage") FROM "cpu" WHERE {tf} GROUP BY time(1h)',
        'SELECT first("usage") FROM "cpu" WHERE {tf} GROUP BY time(1h)',
        'SELECT mean("usage") * 2 FROM "cpu" WHERE {tf} GROUP BY time(1h)',
        'SELECT mean("usage") FROM (SELECT "usage" FROM "cpu" WHERE {tf}) GROUP BY time(1h)',
        'SELECT mean("usage") FROM "cpu" WHERE {tf} GROUP BY time(1h) LIMIT 3',
        'SELECT mean("usage") FROM "1m"."cpu" WHERE {tf} GROUP BY time(1h)',
    ],
)
async def test_what_cannot_be_rewritten_is_proxied_to_raw_unchanged(
    select: str,
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    q = select.format(tf=time_filter(ds))
    got, want = await ask_both(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "raw"
    assert got.json() == want


async def test_a_post_with_a_form_body_is_answered_like_a_get(
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = tiered_dataset_factory()
    q = f'SELECT min("temp") FROM "cpu" WHERE {time_filter(ds)} GROUP BY time(1h), "region"'
    api = query_client_factory()
    got = await api.post("/query", params={"epoch": "s"}, data={"db": ds.database, "q": q})
    async with httpx.AsyncClient() as direct:
        want = await direct.post(
            f"{influxdb_server.url}/query", params={"epoch": "s"}, data={"db": ds.database, "q": q}
        )
    assert got.headers[TIER_HEADER] == "1h"
    assert_same_answer(got.json(), want.json())


async def test_windows_the_worker_may_not_have_written_yet_are_read_from_raw(
    tiered_dataset_factory: DatasetFactory,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    """With a tier lag larger than the whole range, no tier window counts as written."""
    ds = tiered_dataset_factory()
    q = f'SELECT count("usage") FROM "cpu" WHERE {time_filter(ds)} GROUP BY time(1h)'
    api = query_client_factory(query_tier_lag_s=10 * 86400)
    got, want = await ask_both(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "raw"
    assert_same_answer(got.json(), want)


def test_the_reference_tiers_hold_every_raw_point(tiered_dataset_factory: DatasetFactory) -> None:
    ds = tiered_dataset_factory()
    assert len(ds.points) > 5000
    assert all(ds.start_ns <= p.ts_ns < ds.end_ns for p in ds.points)
    assert ds.end_ns % (86400 * NS) == 0
