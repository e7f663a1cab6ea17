"""The truth invariant on the real stack (docs/windows.md, "The invariant").

Gateway, Kafka, worker processes and InfluxDB (tests/conftest.py, tests/job/stack.py). Several
generated streams run at once, each on its own measurement, into the same partitions:

* ``inorder``: live points, in order;
* ``ooo``: points later than allowed lateness + bound (corrections);
* ``buffer``: an agent's buffer of 4 minutes, replayed 30 minutes late into live traffic;
* ``rewrite``: retries (same value) and overwrites (new value) of late points, sent after the
  first versions were corrected;
* ``future``: one point a day ahead and one 30 s ahead (beyond ``max_future``) among live
  points of the same series: they must not stop the other windows, and the 30 s one joins its
  tier when its window's time comes;
* ``churn``: 12 new series every 0.5 s for 4 s, each reporting once (their keys expire from
  the tiers' dictionaries, docs/windows.md "State expiry"), and one series that reports, goes
  silent until its key expired, then comes back live and with a late point for its first
  window (a correction of a window whose key was gone).

Each variant runs with ``max_records_per_fetch`` 1 or 2000, with or without a SIGKILL of the
worker in the middle of the streams. The oracle is InfluxDB itself: every tier row of every
window that has ended must equal ``SELECT count(v), sum(v), min(v), max(v), first(v), last(v)
FROM "raw".<m> ... GROUP BY time(<tier>), *`` (sum and mean within 1e-9 relative), for the
finest tier and two coarser ones; once equal, the test keeps checking for 30 s that it stays
equal.

Issue 15's fields ride along: ``ctr_total`` is a counter (Prometheus naming) with resets at and
between window boundaries, late points within and beyond the allowed lateness; its
``increase_v``/``resets_v`` must equal a reference computed here with a plain loop over the raw
tier's samples, exactly, at every tier. ``req_latency`` is sketched: its ``p50_v``..``p99_v``
must be within the sketch's 1 % of ``SELECT percentile(v, N)`` over raw for the same window.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from gateway.query.base import TIER_HEADER, QuerySettings
from gateway.query.router import create_query_router
from tests.job.stack import Stack, metrics_of, query, repeating, stack_factory
from tests.truth.prometheus import (
    check_against_prometheus,
    check_declared_kinds,
    start_prometheus,
)

__all__ = ["stack_factory"]

# ruff: noqa: ASYNC251 - the tests drive subprocesses synchronously on purpose
pytestmark = [pytest.mark.integration, pytest.mark.slow]

S = 1_000_000_000
TIERS = {"1s": S, "10s": 10 * S, "1m": 60 * S}
MEASUREMENTS = (
    "inorder",
    "ooo",
    "buffer",
    "rewrite",
    "future",
    "ctr_total",
    "req_latency",
    "churn",
)
PERCENTILES = (50, 90, 95, 99)
BOUND_NS = 1 * S
SETTLE_NS = 10 * S  # windows ending this long before "now" must be final
STABLE_S = 30.0


class Client:
    """Writes line protocol through the gateway; retries until it is acknowledged."""

    def __init__(self, stack: Stack) -> None:
        self.url = f"{stack.gateway.url}/write"
        self.db = stack.db
        self.http = httpx.Client(timeout=10)
        self.lock = threading.Lock()
        self.sent: dict[tuple[str, int], float] = {}

    def write(self, points: list[tuple[str, int, float]]) -> None:
        body = "\n".join(f"{series} v={value!r} {ts}" for series, ts, value in points)
        while True:
            try:
                r = self.http.post(
                    self.url, params={"db": self.db, "precision": "ns"}, content=body.encode()
                )
                if r.status_code == 204:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        with self.lock:
            for series, ts, value in points:
                self.sent[(series, ts)] = value


def live_traffic(client: Client, rng: random.Random) -> AbstractContextManager[None]:
    """In-order points at the wall clock for ``inorder``, ``future``, the counter
    ``ctr_total`` (resets now and then) and ``req_latency`` (every 100 ms)."""
    counter = [0.0, 0.0]

    def step() -> None:
        now = time.time_ns()
        points = [(f"inorder,host=h{i}", now + i, rng.uniform(-100, 100)) for i in range(8)]
        points += [(f"future,host=f{i}", now + i, rng.uniform(-1, 1)) for i in range(2)]
        tick = now - now % (S // 10)  # every tenth lands on a 1 s window start
        for i in range(2):
            counter[i] = (
                float(rng.randrange(3)) if rng.random() < 0.08 else counter[i] + rng.randrange(6)
            )
            points.append((f"ctr_total,host=c{i}", tick + i, counter[i]))
        points += [(f"req_latency,host=l{i}", now + i, rng.lognormvariate(3, 1)) for i in range(2)]
        client.write(points)

    return repeating(step, 0.1, name="live")


def run_streams(client: Client, rng: random.Random, kill: Callable[[], None] | None) -> None:
    """Every stream but the live one, about 8 s long; ``kill`` is called in the middle."""
    late: list[tuple[str, int, float]] = []
    back_ns = time.time_ns()
    for step in range(16):
        now = time.time_ns()
        if step < 8:  # series that report once and stop; one that comes back at step 14
            client.write([(f"churn,host=c{step}-{i}", now + i, rng.random()) for i in range(12)])
        if step == 0:
            client.write([("churn,host=back", back_ns, 1.0)])
        if step == 14:  # 7 s later: its 1s and 10s keys expired; live, and late for its 1st
            client.write([("churn,host=back", now, 2.0), ("churn,host=back", back_ns + 1, 3.0)])
        # out of order by more than allowed lateness (2 s) + bound (1 s): 4 s to 40 s late
        batch = [
            (f"ooo,host=o{rng.randrange(6)}", now - rng.randrange(4 * S, 40 * S), rng.random())
            for _ in range(10)
        ]
        client.write(batch)
        late += batch
        # counter points late within (1.5 s) and beyond (4 s to 40 s) the lateness, latencies
        ctr = [("ctr_total,host=c0", now - 1_500_000_000 - 3, float(rng.randrange(50)))]
        ctr += [
            (f"ctr_total,host=c{rng.randrange(2)}", now - rng.randrange(4 * S, 40 * S), float(v))
            for v in rng.sample(range(100), 2)
        ]
        ctr += [("req_latency,host=l0", now - rng.randrange(4 * S, 40 * S), rng.random() * 50)]
        client.write(ctr)
        if step == 3:  # one point a day ahead, one 30 s ahead (max_future is 10 s)
            client.write([("future,host=f0", now + 86_400 * S, 5.0)])
            client.write([("future,host=f1", now + 30 * S + 7, 6.0)])
        if step == 5:  # an agent's 4-minute buffer, 30 minutes late, in four requests
            start = now - 34 * 60 * S
            buffer = [
                (f"buffer,host=b{i}", start + j * S + i, rng.uniform(0, 10))
                for j in range(240)
                for i in range(5)
            ]
            for k in range(0, len(buffer), 300):
                client.write(buffer[k : k + 300])
            late += buffer[::7]
        if step == 6 and kill is not None:
            kill()
        if step == 8:  # late points of their own, first versions
            first = [(f"rewrite,host=r{i % 4}", now - (60 + i) * S, float(i)) for i in range(40)]
            client.write(first)
            late += first
        if step == 12:  # overwrites (new values) and retries (same values) of late points
            with client.lock:
                sent = dict(client.sent)
            chosen = rng.sample(late, 40)
            client.write([(s, ts, sent[(s, ts)] + 1000.0) for s, ts, _ in chosen[:20]])
            client.write([(s, ts, sent[(s, ts)]) for s, ts, _ in chosen[20:]])
            again = [(s, ts, -v) for s, ts, v in late if s.startswith("rewrite")][:15]
            client.write(again)
        time.sleep(0.5)


def rows(stack: Stack, q: str) -> dict[tuple[str, int], dict[str, Any]]:
    out: dict[tuple[str, int], dict[str, Any]] = {}
    r = httpx.get(
        f"{stack.influx.url}/query", params={"db": stack.db, "q": q, "epoch": "ns"}, timeout=60
    )
    if "not found" in r.json()["results"][0].get("error", ""):
        return out  # nothing written to that retention policy yet
    for r in query(stack.influx.url, stack.db, q):
        out[(r["host"], r["time"])] = r
    return out


def counter_reference(stack: Stack, window: int) -> dict[tuple[str, int], tuple[float, int]]:
    """(host, window start) -> (increase, resets) from every raw sample of ``ctr_total``,
    with a plain loop: a drop is a reset and counts from zero; a pair belongs to the window of
    its later sample."""
    samples: dict[str, list[tuple[int, float]]] = {}
    for r in query(stack.influx.url, stack.db, 'SELECT v FROM "raw"."ctr_total" GROUP BY *'):
        samples.setdefault(r["host"], []).append((r["time"], r["v"]))
    out: dict[tuple[str, int], tuple[float, int]] = {}
    for host, points in samples.items():
        points.sort()
        for i, (t, v) in enumerate(points):
            key = (host, t - t % window)
            inc, resets = out.get(key, (0.0, 0))
            if i:
                before = points[i - 1][1]
                inc, resets = (inc + v, resets + 1) if v < before else (inc + v - before, resets)
            out[key] = (inc, resets)
    return out


def compare_issue15(stack: Stack, m: str, tier: str, window: int, lo: int, top: int) -> list[str]:
    where = f"WHERE time >= {lo} AND time < {top}"
    actual = rows(stack, f'SELECT * FROM "{tier}"."{m}" {where} GROUP BY *')
    problems: list[str] = []
    if m == "ctr_total":
        expected = counter_reference(stack, window)
        for key, a in sorted(actual.items()):
            got = (a.get("increase_v"), a.get("resets_v"))
            if got != expected.get(key):
                problems.append(f"{m}/{tier}/{key}: increase, resets {got} != {expected.get(key)}")
        return problems
    pcts = ", ".join(f"percentile(v, {p}) AS p{p}" for p in PERCENTILES)
    expected_p = rows(
        stack, f'SELECT {pcts} FROM "raw"."{m}" {where} GROUP BY time({tier}), * fill(none)'
    )
    for key, e in sorted(expected_p.items()):
        a = actual.get(key, {})
        for p in PERCENTILES:
            got, want = a.get(f"p{p}_v"), e[f"p{p}"]
            if got is None or abs(got - want) > 0.01 * abs(want) + 1e-12:
                problems.append(f"{m}/{tier}/{key}: p{p} {got} not within 1 % of {want}")
    return problems


async def check_tier_aware_query(stack: Stack, lo: int, hi: int) -> None:
    """The query API over the worker's own tier rows (issue 15's read side): ``percentile()``
    from the merged ``sketch_v`` within 1 % of InfluxDB's over raw with the same rows, and
    ``difference(last(v))`` of the counter with InfluxDB's rows and the plain-loop increases
    as values. ``[lo, hi)`` is whole 10 s intervals that are final."""
    app = FastAPI()
    settings = QuerySettings(
        influxdb_url=stack.influx.url,
        query_tiers="raw:7d,1s:7d,10s:7d,1m:7d",
        query_tier_lag_s=(time.time_ns() - hi) / S,
    )
    app.include_router(create_query_router(settings))
    where = f"WHERE time >= {lo} AND time < {hi} GROUP BY time(10s), host"
    pct = f"SELECT percentile(v, 50), percentile(v, 99) FROM req_latency {where} fill(none)"
    diff = f"SELECT difference(last(v)) FROM ctr_total {where}"
    async with (
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gw", timeout=60
        ) as api,
        httpx.AsyncClient(base_url=stack.influx.url, timeout=60) as direct,
    ):
        answers = {}
        for q in (pct, diff):
            params = {"db": stack.db, "q": q, "epoch": "ns"}
            got = await api.get("/query", params=params)
            assert got.headers[TIER_HEADER] == "10s", (q, got.headers[TIER_HEADER])
            want = await direct.get("/query", params=params)
            answers[q] = (got.json()["results"][0]["series"], want.json()["results"][0]["series"])
    got_p, want_p = answers[pct]
    assert [(s["tags"], [r[0] for r in s["values"]]) for s in got_p] == [
        (s["tags"], [r[0] for r in s["values"]]) for s in want_p
    ]
    for gs, ws in zip(got_p, want_p, strict=True):
        for g_row, w_row in zip(gs["values"], ws["values"], strict=True):
            for g, w in zip(g_row[1:], w_row[1:], strict=True):
                assert math.isclose(g, w, rel_tol=0.01), (gs["tags"], g_row, w_row)
    reference = counter_reference(stack, 10 * S)
    got_c, want_c = answers[diff]
    assert [(s["tags"], [r[0] for r in s["values"]]) for s in got_c] == [
        (s["tags"], [r[0] for r in s["values"]]) for s in want_c
    ]
    for s in got_c:
        for t, value in s["values"]:
            assert value == reference[(s["tags"]["host"], t)][0], (s["tags"], t, value)


def compare(stack: Stack, lo: int, hi: int) -> list[str]:
    """Tier rows vs InfluxQL over raw, for every measurement and tier, windows in [lo, hi)."""
    problems: list[str] = []
    for m in MEASUREMENTS:
        for tier, window in TIERS.items():
            top = hi - hi % window
            expected = rows(
                stack,
                f'SELECT count(v), sum(v), min(v), max(v), first(v), last(v) FROM "raw"."{m}" '
                f"WHERE time >= {lo} AND time < {top} GROUP BY time({tier}), * fill(none)",
            )
            actual = rows(
                stack,
                f'SELECT * FROM "{tier}"."{m}" WHERE time >= {lo} AND time < {top} GROUP BY *',
            )
            for key in sorted(set(expected) | set(actual)):
                e, a = expected.get(key), actual.get(key)
                where = f"{m}/{tier}/{key}"
                if e is None or a is None:
                    problems.append(f"{where}: expected {e} got {a}")
                    continue
                for name in ("count", "min", "max", "first", "last"):
                    if e[name] != a[f"{name}_v"]:
                        problems.append(f"{where}.{name}: expected {e[name]} got {a[name + '_v']}")
                if a["sum_v"] is None or not math.isclose(
                    e["sum"], a["sum_v"], rel_tol=1e-9, abs_tol=1e-9
                ):
                    problems.append(f"{where}.sum: expected {e['sum']} got {a['sum_v']}")
                mean = e["sum"] / e["count"]
                if a["mean_v"] is None or not math.isclose(
                    mean, a["mean_v"], rel_tol=1e-9, abs_tol=1e-9
                ):
                    problems.append(f"{where}.mean: expected {mean} got {a['mean_v']}")
            if m in ("ctr_total", "req_latency"):
                problems += compare_issue15(stack, m, tier, window, lo, top)
    return problems


@pytest.mark.parametrize(
    ("fetch", "sigkill"),
    [(1, False), (2000, False), (2000, True), (1, True)],
    ids=["fetch1", "fetch2000", "fetch2000-sigkill", "fetch1-sigkill"],
)
async def test_every_tier_converges_to_influxdb_group_by_over_raw_and_stays_there(
    stack_factory: Callable[..., Any], fetch: int, sigkill: bool, tmp_path: Path
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    env = {
        "METRICSFLOW_TIERS": "raw:7d,1s:7d,10s:7d,1m:7d",
        "METRICSFLOW_KAFKA_MAX_RECORDS_PER_FETCH": str(fetch),
        "METRICSFLOW_ALLOWED_LATENESS": "2s",
        "METRICSFLOW_MAX_FUTURE": "10s",
    }
    workers = [stack.worker("w1", **env)]

    def kill() -> None:
        workers[0].kill()
        workers[0] = stack.worker("w1", **env)

    # one variant also carries a real Prometheus' remote write (tests/truth/prometheus.py)
    prom = (
        start_prometheus(stack, tmp_path / "prometheus")
        if (fetch, sigkill) == (2000, False)
        else None
    )
    try:
        rng = random.Random(fetch * 2 + sigkill)
        client = Client(stack)
        started = time.time_ns()
        with live_traffic(client, random.Random(5)):
            run_streams(client, rng, kill if sigkill else None)
        lo = started - 40 * 60 * S
        lo -= lo % (60 * S)
        deadline = time.monotonic() + 120
        problems = ["not checked yet"]
        while time.monotonic() < deadline:
            problems = compare(stack, lo, time.time_ns() - SETTLE_NS)
            if not problems:
                break
            time.sleep(1)
        assert not problems, (len(problems), problems[:8])
        # stays true: nothing stale overwrites a corrected row later
        stable_until = time.monotonic() + STABLE_S
        while time.monotonic() < stable_until:
            problems = compare(stack, lo, time.time_ns() - SETTLE_NS)
            assert not problems, ("changed after the first match", len(problems), problems[:8])
            time.sleep(2)
        # the point 30 s ahead joined its tiers once its windows' time came
        f1 = rows(
            stack, 'SELECT * FROM "1s"."future" WHERE "host" = \'f1\' AND "max_v" = 6.0 GROUP BY *'
        )
        assert len(f1) == 1, f1
        metrics = metrics_of(workers[0])
        if not sigkill:  # a restarted worker counts from zero (and may resume past them)
            assert metrics["metricsflow_worker_future_points_total"] >= 2
            assert metrics['metricsflow_worker_tier_expired_keys_total{tier="1s"}'] > 0
        assert metrics['metricsflow_worker_tier_corrections_total{tier="1s"}'] > 0
        if fetch == 2000 and not sigkill:  # once: the query API over these tier rows
            hi = time.time_ns() - SETTLE_NS
            await check_tier_aware_query(stack, started - started % (10 * S), hi - hi % (10 * S))
        assert metrics["metricsflow_worker_correction_backlog"] == 0
        raw = query(stack.influx.url, stack.db, 'SELECT count(v) FROM "raw"."buffer"')
        assert raw[0]["count"] == 1200
        if prom is not None:
            check_against_prometheus(stack, prom)
            check_declared_kinds(stack, prom)
    finally:
        if prom is not None:
            prom.stop()
