"""Importing 60 days of history through the gateway (issue 12): 100 series, one point per
10 minutes (864,000 points) in batches of 1000 (Telegraf's default), oldest first, with the
default tiers ``raw:7d, 1m:30d, 1h:365d, 1d:INF``.

The raw tier keeps what its 7 days allow and the 1m tier its 30 days; points beyond a tier's
retention are not sent (InfluxDB would drop them: before, each batch came back as a partial
write and was bisected down to single lines, one HTTP request and two log lines per point).
Checked: every point within raw's retention is in raw; every 1m/1h/1d window its retention
allows equals the Python reference; nothing older is in the tier; InfluxDB requests <= 2x the
client's batches; the worker log stays under 1 MB; the worker, with the default fetch and
session settings, is assigned its partitions once (never kicked out of the group).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.job.stack import Stack, metrics_of, query, stack_factory

__all__ = ["stack_factory"]

# ruff: noqa: ASYNC212, ASYNC251 - the test drives subprocesses synchronously on purpose
pytestmark = [pytest.mark.integration, pytest.mark.slow]

NS = 1_000_000_000
DAY = 86_400 * NS
STEP = 600 * NS
SERIES = 100
TIERS = {"1m": (60 * NS, 30 * DAY), "1h": (3600 * NS, 365 * DAY), "1d": (DAY, 0)}


def value(s: int, ts: int) -> float:
    return round(math.sin(ts / 3.7e12 + s) * 100 + s, 3)


async def test_sixty_days_of_history_land_in_the_tiers_their_retention_allows(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=4)
    worker = stack.worker(
        "w1",
        METRICSFLOW_TIERS="raw:7d,1m:30d,1h:365d,1d:INF",
        METRICSFLOW_CHECKPOINT_INTERVAL_MS="5000",
        METRICSFLOW_INFLUXDB_FLUSH_INTERVAL_S="1",
    )
    now = time.time_ns() // STEP * STEP
    start = now - 60 * DAY
    stamps = list(range(start, now, STEP))
    client = httpx.Client(timeout=60)
    batches = 0
    lines: list[str] = []
    for ts in stamps:
        lines.extend(f"m,host=h{s:03d} v={value(s, ts)} {ts}" for s in range(SERIES))
        if len(lines) >= 1000:
            r = client.post(
                f"{stack.gateway.url}/write",
                params={"db": stack.db, "precision": "ns"},
                content="\n".join(lines).encode(),
            )
            assert r.status_code == 204, r.text
            batches += 1
            lines = []
    assert not lines
    sent = len(stamps) * SERIES
    assert sent == 864_000
    # the newest windows close once the partitions are idle (2 s) and the wall clock passes
    # their end: wait until the last whole 1h window of every series is there
    last_hour = (stamps[-1] // (3600 * NS)) * 3600 * NS - 3600 * NS
    deadline = time.monotonic() + 240
    while True:
        rows = query(
            stack.influx.url,
            stack.db,
            f'SELECT count(count_v) FROM "1h"."m" WHERE time = {last_hour} GROUP BY host',
        )
        if len(rows) == SERIES:
            break
        assert time.monotonic() < deadline, f"{len(rows)} series have the last 1h window"
        time.sleep(2)
    # raw: every point within its retention (a margin for the edge moving meanwhile)
    edge = time.time_ns() - 7 * DAY + 30 * 60 * NS
    expected_raw = sum(1 for ts in stamps if ts >= edge) * SERIES
    got = query(stack.influx.url, stack.db, f'SELECT count(v) FROM "raw"."m" WHERE time >= {edge}')
    assert got[0]["count"] == expected_raw
    # tiers: every window whose retention allows it is there (all series: row count and
    # point count); ten series compared value by value with the reference; nothing older
    check_now = time.time_ns()
    detail = 10
    for tier, (window, retention) in TIERS.items():
        lo = check_now - retention + 30 * 60 * NS if retention else 0
        lo = -(-lo // window) * window  # whole windows only
        hi = last_hour + 3600 * NS  # windows that ended before the last whole hour
        expected: dict[tuple[str, int], list[float]] = defaultdict(list)
        points = 0
        for ts in stamps:
            w = ts - ts % window
            if lo <= w and w + window <= hi:
                points += SERIES
                for s in range(detail):
                    expected[(f"h{s:03d}", w)].append(value(s, ts))
        where = f"time >= {lo} AND time <= {hi - window}"
        windows = len({w for _, w in expected})
        deadline = time.monotonic() + 120
        while True:  # the finer tiers' writes may still be queued behind the last 1h row
            total = query(
                stack.influx.url,
                stack.db,
                f'SELECT count(count_v), sum(count_v) FROM "{tier}"."m" WHERE {where}',
            )
            got_total = (total[0]["count"], total[0]["sum"]) if total else (0, 0)
            if got_total == (windows * SERIES, points) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert got_total == (windows * SERIES, points), tier
        rows = query(
            stack.influx.url,
            stack.db,
            f'SELECT count_v, sum_v, min_v, max_v FROM "{tier}"."m" '
            f"WHERE {where} AND host =~ /^h00[0-9]$/ GROUP BY host",
        )
        actual = {(r["host"], r["time"]): r for r in rows}
        assert set(actual) == set(expected), (tier, len(actual), len(expected))
        for key, values in expected.items():
            r = actual[key]
            assert (r["count_v"], r["min_v"], r["max_v"]) == (
                len(values),
                min(values),
                max(values),
            ), (tier, key)
            assert math.isclose(r["sum_v"], math.fsum(values), rel_tol=1e-9, abs_tol=1e-9)
        if retention:
            older = query(
                stack.influx.url,
                stack.db,
                f'SELECT count(count_v) FROM "{tier}"."m" '
                f"WHERE time < {check_now - retention - 3600 * NS}",
            )
            assert not older, (tier, older)
    metrics = metrics_of(worker)
    requests = metrics["metricsflow_worker_influxdb_requests_total"]
    beyond = {
        k: v for k, v in metrics.items() if k.startswith("metricsflow_worker_beyond_retention")
    }
    log_size = worker.log.stat().st_size
    rebalances = metrics["metricsflow_worker_rebalances_total"]
    print(
        f"\n{sent} points in {batches} batches; InfluxDB requests {requests:.0f}; "
        f"beyond retention {beyond}; worker log {log_size} bytes; assignments {rebalances:.0f}"
    )
    # one assignment: the member was never kicked out of the group (a micro-batch is bounded
    # by points, so no fetch holds the event loop past the session timeout)
    assert rebalances == 1
    assert requests <= 2 * batches
    assert beyond['metricsflow_worker_beyond_retention_points_total{tier="raw"}'] > 0
    assert log_size < 1_000_000
