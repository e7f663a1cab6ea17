"""Acceptance: ``percentile()`` and counter functions answered from the tiers' sketch and
counter fields, against the real InfluxDB.

Raw points and 1m/1h tier rows in the documented schema (``counter_sketch_data``, sketches by
the worker's own encoder) are in one database. A percentile answered by the query API must be
within the sketch's 1 % relative accuracy of InfluxDB's own ``PERCENTILE(f, N)`` over raw, with
the same series and times; a counter function must equal the reset-aware increase computed
here from the raw samples with plain loops, laid out as InfluxDB lays out ``difference()``.
A lag setting pushes part of the range into a raw tail, and unaligned range starts give a raw
head, so both the merges of sketches with raw values and of tier increases with raw samples run.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.query.base import TIER_HEADER
from gateway.query.testing import MINUTE_NS, NS
from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.windows import sketches
from tests.gateway.query.counter_sketch_data import (
    CounterSketchDataset,
    Sample,
    gauge_fields,
    increases,
    write_dataset,
)

QueryClientFactory = Callable[..., httpx.AsyncClient]

pytestmark = pytest.mark.integration

RELATIVE_ACCURACY = 0.01


@pytest.fixture(scope="module")
def dataset(influxdb_server: InfluxDBServer) -> Iterator[CounterSketchDataset]:
    db = f"pct_{uuid.uuid4().hex[:10]}"
    yield write_dataset(influxdb_server.url, db, time.time_ns())
    httpx.post(f"{influxdb_server.url}/query", data={"q": f'DROP DATABASE "{db}"'})


def time_filter(ds: CounterSketchDataset, start_offset_ns: int, end_offset_ns: int) -> str:
    start = ds.start_ns + start_offset_ns
    end = ds.end_ns - end_offset_ns
    return f"time >= {start // 1_000_000}ms and time <= {end // 1_000_000}ms"


def lag_for_tail(ds: CounterSketchDataset, tail_ns: int) -> float:
    """A ``query_tier_lag_s`` that leaves the last ``tail_ns`` of the data to the raw tier."""
    return (time.time_ns() - ds.end_ns + tail_ns) / NS


async def ask(
    api: httpx.AsyncClient, influxdb_url: str, db: str, q: str
) -> tuple[httpx.Response, dict[str, Any]]:
    params = {"db": db, "q": q, "epoch": "ns"}
    got = await api.get("/query", params=params)
    async with httpx.AsyncClient(timeout=60) as direct:
        want = await direct.get(f"{influxdb_url}/query", params=params)
    assert got.status_code == 200, got.text
    assert want.status_code == 200, want.text
    return got, want.json()


def series_of(answer: dict[str, Any]) -> list[dict[str, Any]]:
    result = answer["results"][0]
    assert "error" not in result, result
    series: list[dict[str, Any]] = result.get("series", [])
    return series


# --------------------------------------------------------------------------------------------
# Percentiles
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("interval", "tier", "tail_minutes"),
    [("1m", "1m", 0), ("5m", "1m", 17), ("1h", "1h", 0), ("2h", "1h", 95)],
)
async def test_percentiles_from_merged_sketches_are_within_1_percent_of_influxdb_over_raw(
    interval: str,
    tier: str,
    tail_minutes: int,
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    api = query_client_factory(query_tier_lag_s=lag_for_tail(ds, tail_minutes * MINUTE_NS))
    tf = time_filter(ds, 7 * MINUTE_NS + 13_500_000_000, 3 * MINUTE_NS)
    q = (
        'SELECT percentile("latency", 50), percentile("latency", 90) AS p90, '
        'percentile("latency", 99.9), percentile(latency, 99) FROM "http" '
        f'WHERE {tf} GROUP BY time({interval}), "host" fill(null)'
    )
    got, want = await ask(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == tier
    got_series, want_series = series_of(got.json()), series_of(want)
    assert [(s["name"], s.get("tags")) for s in got_series] == [
        (s["name"], s.get("tags")) for s in want_series
    ]
    compared = 0
    for gs, ws in zip(got_series, want_series, strict=True):
        assert (
            gs["columns"]
            == ws["columns"]
            == [
                "time",
                "percentile",
                "p90",
                "percentile_1",
                "percentile_2",
            ]
        )
        assert [r[0] for r in gs["values"]] == [r[0] for r in ws["values"]]
        for g_row, w_row in zip(gs["values"], ws["values"], strict=True):
            for g, w in zip(g_row[1:], w_row[1:], strict=True):
                if w is None:
                    assert g is None, (gs["tags"], g_row, w_row)
                    continue
                assert g is not None, (gs["tags"], g_row, w_row)
                assert math.isclose(g, w, rel_tol=RELATIVE_ACCURACY, abs_tol=1e-300), (
                    gs["tags"],
                    g_row,
                    w_row,
                )
                compared += 1
    assert compared > 20


async def test_a_percentile_over_all_series_merges_every_series_sketch(
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    tf = time_filter(ds, 0, 0)
    q = f"SELECT percentile(latency, 95) FROM http WHERE {tf} GROUP BY time(30m) fill(none)"
    got, want = await ask(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1m"
    (gs,) = series_of(got.json())
    (ws,) = series_of(want)
    assert "tags" not in gs
    assert [r[0] for r in gs["values"]] == [r[0] for r in ws["values"]]
    for (_, g), (_, w) in zip(gs["values"], ws["values"], strict=True):
        assert math.isclose(g, w, rel_tol=RELATIVE_ACCURACY)


# --------------------------------------------------------------------------------------------
# Counters
# --------------------------------------------------------------------------------------------


def reference_increases(
    samples: dict[str, list[Sample]], interval_ns: int, start_ns: int, end_ns: int, by_host: bool
) -> dict[str | None, dict[int, float]]:
    """Independent reference: per output series, interval start -> the summed increase of the
    pairs whose later sample is in that interval and before ``end`` (a drop counts from
    zero; the first interval also counts the pairs before ``start``), for the intervals
    holding a sample of ``[start - interval, end)`` (InfluxDB reads one interval more for
    ``difference()``) but the first of them, as InfluxDB lays out ``difference()``."""
    first_bucket = start_ns - start_ns % interval_ns
    out: dict[str | None, dict[int, float]] = {}
    holding: dict[str | None, set[int]] = {}
    increase: dict[str | None, dict[int, float]] = {}
    for host, points in samples.items():
        key = host if by_host else None
        held = holding.setdefault(key, set())
        inc = increase.setdefault(key, {})
        previous = None
        for t, v in points:
            b = t - t % interval_ns
            if start_ns - interval_ns <= t < end_ns:
                held.add(b)
            if t >= end_ns:
                break
            delta = 0.0 if previous is None else (v - previous if v >= previous else v)
            inc[b] = inc.get(b, 0.0) + delta
            previous = v
    for key, held in holding.items():
        if held:
            held.discard(min(held))
        out[key] = {b: increase[key][b] for b in sorted(held) if b >= first_bucket}
    return out


@pytest.mark.parametrize(
    ("function", "interval", "tier", "tail_minutes"),
    [
        ("difference", "1m", "1m", 0),
        ("non_negative_difference", "5m", "1m", 23),
        ("non_negative_derivative", "1h", "1h", 0),
        ("derivative", "2h", "1h", 75),
    ],
)
async def test_counter_functions_answer_the_reset_aware_increase_from_the_tiers(
    function: str,
    interval: str,
    tier: str,
    tail_minutes: int,
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    api = query_client_factory(query_tier_lag_s=lag_for_tail(ds, tail_minutes * MINUTE_NS))
    start_offset, end_offset = 4 * MINUTE_NS + 2_250_000_000, 2 * MINUTE_NS
    tf = time_filter(ds, start_offset, end_offset)
    unit = ", 1m" if function.endswith("derivative") else ""
    q = (
        f'SELECT {function}(last("requests_total"){unit}) FROM "http" WHERE {tf} '
        f'GROUP BY time({interval}), "host"'
    )
    got, want = await ask(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == tier
    interval_ns = {"1m": 1, "5m": 5, "1h": 60, "2h": 120}[interval] * MINUTE_NS
    start = (ds.start_ns + start_offset) // 1_000_000 * 1_000_000
    end = (ds.end_ns - end_offset) // 1_000_000 * 1_000_000 + 1
    reference = reference_increases(ds.counter, interval_ns, start, end, by_host=True)
    got_series = series_of(got.json())
    assert [s["tags"]["host"] for s in got_series] == ["a", "b", "c"]
    # InfluxDB's own difference() over raw: the same rows (it differs in value at resets).
    diff_q = q.replace(f"{function}(", "difference(").replace(unit, "")
    _, raw_diff = await ask(api, influxdb_server.url, ds.database, diff_q)
    raw_times = {s["tags"]["host"]: [r[0] for r in s["values"]] for s in series_of(raw_diff)}
    unit_ns = float(MINUTE_NS) if unit else 0.0
    resets_seen = 0
    for s in got_series:
        host = s["tags"]["host"]
        assert s["columns"] == ["time", function]
        times = [r[0] for r in s["values"]]
        assert times == sorted(reference[host]) == raw_times[host]
        for t, value in s["values"]:
            increase = reference[host][t]
            assert value == (increase * unit_ns / interval_ns if unit else increase), (host, t)
        raw_values = dict(
            next(r for r in series_of(raw_diff) if r["tags"]["host"] == host)["values"]
        )
        resets_seen += sum(1 for t in times if raw_values[t] < 0)
        # InfluxDB's own answer of the same function over raw: where no reset (and no gap,
        # for a derivative) is involved the same value, else less (a reset loses increase).
        influx = dict(next(w for w in series_of(want) if w["tags"]["host"] == host)["values"])
        same = 0
        for t, value in s["values"]:
            if t in influx:
                assert influx[t] <= value * (1 + 1e-12), (host, t, influx[t], value)
                same += math.isclose(influx[t], value, rel_tol=1e-12)
        if interval_ns <= 5 * MINUTE_NS:  # coarser intervals nearly all hold a reset
            assert same >= 0.8 * len(influx) > 0
    assert resets_seen > 0, "the data should have resets inside the range"


async def test_a_counter_over_all_series_is_the_sum_of_their_increases(
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    api = query_client_factory(query_tier_lag_s=lag_for_tail(ds, 50 * MINUTE_NS))
    tf = time_filter(ds, 0, 0)
    q = (
        "SELECT non_negative_difference(max(requests_total)) FROM http "
        f"WHERE {tf} GROUP BY time(30m)"
    )
    got, _ = await ask(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1m"
    (s,) = series_of(got.json())
    reference = reference_increases(ds.counter, 30 * MINUTE_NS, ds.start_ns, ds.end_ns, False)
    assert dict(s["values"]) == reference[None]


@pytest.mark.parametrize(
    "select",
    [
        'percentile("requests_total", 50)',  # no sketch_requests_total in the tiers
        'non_negative_derivative(last("latency"), 1s)',  # not a counter: no increase_latency
        'non_negative_derivative(first("requests_total"), 1s)',
        'percentile("latency", 50), mean("latency")',
    ],
)
async def test_what_the_tiers_cannot_answer_goes_to_raw(
    select: str,
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    q = f'SELECT {select} FROM "http" WHERE {time_filter(ds, 0, 0)} GROUP BY time(5m), "host"'
    got, want = await ask(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "raw"
    assert got.json() == want


@pytest.mark.parametrize(
    "start_offset_ms", [0, 1_000, 9_999, 59_000, 295_000, 299_500, 300_000, 450_000]
)
async def test_counter_rows_start_where_influxdb_starts_them_for_any_range_start(
    start_offset_ms: int,
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    """InfluxDB reads one interval before the range start for difference(): whatever the
    start (on a boundary, just after one, with the first interval's samples all before it),
    the rows are InfluxDB's and the values the reference increases."""
    ds = dataset
    start = ds.start_ns + 3600 * NS + start_offset_ms * 1_000_000
    end = start + 3600 * NS
    q = (
        'SELECT difference(last("requests_total")) FROM "http" '
        f'WHERE time >= {start}ns AND time < {end}ns GROUP BY time(5m), "host"'
    )
    got, want = await ask(query_client_factory(), influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1m"
    reference = reference_increases(ds.counter, 5 * MINUTE_NS, start, end, by_host=True)
    raw_times = {s["tags"]["host"]: [r[0] for r in s["values"]] for s in series_of(want)}
    for s in series_of(got.json()):
        host = s["tags"]["host"]
        assert [r[0] for r in s["values"]] == raw_times[host], host
        assert dict(s["values"]) == reference[host], host


async def test_a_percentile_reading_more_rows_than_allowed_goes_to_raw(
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    tf = time_filter(ds, 0, 0)
    q = f'SELECT percentile("latency", 99) FROM "http" WHERE {tf} GROUP BY time(1h)'
    # 3 series x 6 h of 1h windows = 18 sketches, and no raw value at the edges: 18 rows
    allowed = query_client_factory(query_max_percentile_rows=18, query_tier_lag_s=0)
    got, want = await ask(allowed, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1h"
    refused = query_client_factory(query_max_percentile_rows=17, query_tier_lag_s=0)
    got, want = await ask(refused, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "raw"
    assert got.json() == want


async def test_a_percentile_of_an_integer_field_is_an_integer_as_influxdb_answers(
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    """Values below 50 come back exactly (1 % of them is under one half)."""
    ds = dataset
    rng = np.random.default_rng(3)
    times = ds.start_ns + np.arange(180, dtype=np.int64) * 10 * NS  # 30 minutes
    sizes = rng.integers(1, 48, times.shape[0])
    windows = times - times % MINUTE_NS
    starts, group = np.unique(windows, return_inverse=True)
    _, encoded = sketches.encode(sketches.from_values(group.astype(np.int64), sizes * 1.0))
    raw = [f"sizes,host=a size={v}i {t}" for t, v in zip(times, sizes, strict=True)]
    tier = [f'sizes,host=a sketch_size="{e}" {w}' for w, e in zip(starts, encoded, strict=True)]
    async with httpx.AsyncClient(base_url=influxdb_server.url) as client:
        for rp, lines in (("raw", raw), ("1m", tier)):
            r = await client.post(
                "/write", params={"db": ds.database, "rp": rp}, content="\n".join(lines)
            )
            assert r.status_code == 204, r.text
    end = ds.start_ns + 30 * MINUTE_NS
    q = (
        "SELECT percentile(size, 50), percentile(size, 90), percentile(size, 99) FROM sizes "
        f"WHERE time >= {ds.start_ns} AND time < {end} GROUP BY time(5m)"
    )
    api = query_client_factory(query_tier_lag_s=0)
    got, want = await ask(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1m"
    assert got.json() == want


# --------------------------------------------------------------------------------------------
# A counter declared by remote-write metadata after some of its windows were written
# --------------------------------------------------------------------------------------------


def write_declared_counter(influxdb_url: str, ds: CounterSketchDataset, switch_ns: int) -> None:
    """Measurement ``legacy``: host ``a``'s counter samples in raw, and 1m/1h tier rows whose
    windows before ``switch_ns`` have no ``increase_value`` (they were written while the field
    was still a gauge: docs/counters-and-percentiles.md, "Types from remote-write metadata")."""
    samples = ds.counter["a"]
    raw = [f"legacy,host=a value={v!r} {t}" for t, v in samples]
    batches: list[tuple[str, list[str]]] = [("raw", raw)]
    for rp, window in (("1m", MINUTE_NS), ("1h", 60 * MINUTE_NS)):
        inc = increases(samples, window)
        by_window: dict[int, list[float]] = {}
        for t, v in samples:
            by_window.setdefault(t - t % window, []).append(v)
        lines = []
        for w, values in sorted(by_window.items()):
            fields = gauge_fields("value", values)
            if w >= switch_ns:
                fields += [f"increase_value={inc[w][0]!r}", f"resets_value={inc[w][1]}i"]
            lines.append(f"legacy,host=a {','.join(fields)} {w}")
        batches.append((rp, lines))
    with httpx.Client(base_url=influxdb_url, timeout=60) as client:
        for rp, lines in batches:
            r = client.post(
                "/write", params={"db": ds.database, "rp": rp}, content="\n".join(lines)
            )
            assert r.status_code == 204, r.text


async def test_a_counter_query_over_windows_without_increase_goes_to_raw_and_after_them_to_tiers(
    dataset: CounterSketchDataset,
    query_client_factory: QueryClientFactory,
    influxdb_server: InfluxDBServer,
) -> None:
    ds = dataset
    switch = ds.start_ns + 3 * 60 * MINUTE_NS
    write_declared_counter(influxdb_server.url, ds, switch)
    api = query_client_factory()
    before = time_filter(ds, 0, 0)
    q = (
        f'SELECT non_negative_difference(last("value")) FROM "legacy" WHERE {before} '
        "GROUP BY time(5m)"
    )
    got, want = await ask(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "raw"
    assert got.json() == want
    after = time_filter(ds, switch - ds.start_ns + 10 * MINUTE_NS, 0)
    q = f'SELECT difference(last("value")) FROM "legacy" WHERE {after} GROUP BY time(5m)'
    got, _ = await ask(api, influxdb_server.url, ds.database, q)
    assert got.headers[TIER_HEADER] == "1m"
    start = switch + 10 * MINUTE_NS
    reference = reference_increases({"a": ds.counter["a"]}, 5 * MINUTE_NS, start, ds.end_ns, False)
    assert dict(series_of(got.json())[0]["values"]) == reference[None]
