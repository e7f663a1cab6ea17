"""A counter declared in the log (a ``kinds1`` record, as the gateway writes for Prometheus
remote-write metadata) on the real stack (Kafka, a worker process, InfluxDB): from the window
where it switches, every tier's ``increase_value``/``resets_value`` equals a plain-loop
reference over the raw tier as InfluxDB holds it, also after late points beyond the allowed
lateness made the worker re-derive windows from InfluxDB (corrections), and it stays equal."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from metricsflow.model.declarations import DeclaredKind, KindDeclarations, encode_declarations
from tests.job.stack import Stack, metrics_of, query, stack_factory

__all__ = ["stack_factory"]  # the fixture, used by this module's test

S = 1_000_000_000
TIERS = "raw:7d,10s:7d,1m:7d"


def post(stack: Stack, lines: list[str]) -> None:
    r = httpx.post(
        f"{stack.gateway.url}/write",
        params={"db": stack.db, "precision": "ns"},
        content="\n".join(lines).encode(),
        timeout=30,
    )
    assert r.status_code == 204, r.text


def reference(stack: Stack, window: int) -> dict[int, tuple[float, int]]:
    """window start -> (increase, resets) from every raw sample, with a plain loop."""
    points = [
        (int(r["time"]), float(r["value"]))
        for r in query(stack.influx.url, stack.db, 'SELECT "value" FROM "raw"."app_requests"')
    ]
    points.sort()
    out: dict[int, tuple[float, int]] = {}
    for i, (t, v) in enumerate(points):
        inc, resets = out.get(t - t % window, (0.0, 0))
        if i:
            before = points[i - 1][1]
            inc, resets = (inc + v, resets + 1) if v < before else (inc + v - before, resets)
        out[t - t % window] = (inc, resets)
    return out


def tier(stack: Stack, name: str) -> dict[int, tuple[float | None, int | None]]:
    q = f'SELECT increase_value, resets_value, count_value FROM "{name}"."app_requests"'
    r = httpx.get(f"{stack.influx.url}/query", params={"db": stack.db, "q": q}, timeout=30)
    if "not found" in r.json()["results"][0].get("error", ""):
        return {}  # nothing written to that retention policy yet
    return {
        int(r["time"]): (r["increase_value"], r["resets_value"])
        for r in query(stack.influx.url, stack.db, q)
    }


async def fired_through(stack: Stack, start: int) -> None:
    """Until the 10 s window starting at ``start`` is in InfluxDB."""
    deadline = time.monotonic() + 30
    while start not in tier(stack, "10s"):
        assert time.monotonic() < deadline, f"window {start} never fired"
        await asyncio.sleep(0.3)


def problems(stack: Stack, switch: int, until: int) -> list[str]:
    """What differs from the reference in the windows that end by ``until``."""
    found: list[str] = []
    for name, window in (("10s", 10 * S), ("1m", 60 * S)):
        ref = {s: r for s, r in reference(stack, window).items() if s + window <= until}
        rows = {s: r for s, r in tier(stack, name).items() if s + window <= until}
        if set(rows) != set(ref):
            found.append(f"{name}: windows {sorted(rows)} != raw's {sorted(ref)}")
        first = -(-switch // window) * window  # the first window wholly after the switch
        for start, (inc, resets) in sorted(rows.items()):
            if start >= first and (inc, resets) != ref.get(start):
                found.append(f"{name}/{start}: {(inc, resets)} != {ref.get(start)}")
            if start < switch and name == "10s" and inc is not None:
                found.append(f"{name}/{start}: an increase before the switch {switch}")
    return found


async def test_a_counter_declared_in_the_log_is_exact_from_its_switch_at_every_tier(
    stack_factory: Callable[..., Any],
) -> None:
    from aiokafka import AIOKafkaProducer

    stack: Stack = await stack_factory(partitions=1)
    # no idle advance: every watermark comes from the data, so the switch is where the log
    # says (an idle advance to the wall clock would move it to "now")
    worker = stack.worker(
        "w1",
        METRICSFLOW_TIERS=TIERS,
        METRICSFLOW_ALLOWED_LATENESS="2s",
        METRICSFLOW_IDLE_TIMEOUT="10m",
    )
    now = time.time_ns()
    t0 = now - now % (60 * S) - 5 * 60 * S  # five minutes ago, on a minute
    value = 0

    def samples(first_s: int, last_s: int) -> list[str]:
        nonlocal value
        out = []
        for s in range(first_s, last_s):
            value = 0 if s % 47 == 0 else value + 1 + s % 3  # a reset now and then
            out.append(f"app_requests,host=a value={value} {t0 + s * S}")
        return out

    post(stack, samples(0, 95))  # a gauge by every pattern: no increase_
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    declared = KindDeclarations(stack.db, {"app_requests": DeclaredKind.COUNTER})
    for value_bytes, headers in encode_declarations(declared):
        await producer.send_and_wait(stack.topic, value_bytes, headers=headers, partition=0)
    await producer.stop()
    # the watermark at the declaration is 93 s (bound 1 s): window 90 has not fired but window
    # 80 is purged (lateness 2 s), so the switch is at 100 s (windows/declared.py)
    switch = t0 + 100 * S
    post(stack, samples(95, 200))
    post(stack, [f"tick,host=m v=1 {t0 + 215 * S}"])  # the watermark to 214 s: fires to 210 s
    until = t0 + 210 * S
    # late points beyond the allowed lateness, after the switch: re-derived from InfluxDB
    await fired_through(stack, t0 + 190 * S)
    post(stack, [f"app_requests,host=a value=1000 {t0 + 123 * S + 500_000_000}"])
    post(stack, [f"app_requests,host=a value=3 {t0 + 150 * S + 500_000_000}"])
    deadline = time.monotonic() + 60
    found = ["not checked yet"]
    while found and time.monotonic() < deadline:
        found = problems(stack, switch, until)
        await asyncio.sleep(1)
    assert not found, found[:8]
    stable = time.monotonic() + 10
    while time.monotonic() < stable:
        found = problems(stack, switch, until)
        assert not found, ("changed after the first match", found[:8])
        await asyncio.sleep(1)
    ten = tier(stack, "10s")
    assert ten[t0 + 90 * S][0] is None  # fired as a gauge: the window before the switch
    assert all(ten[start][0] is not None for start in ten if switch <= start < until)
    metrics = metrics_of(worker)
    assert metrics['metricsflow_worker_tier_declared_kinds_total{tier="10s"}'] == 1
    assert metrics['metricsflow_worker_tier_corrections_total{tier="10s"}'] > 0
