"""Hand-overs that cannot lose or regress state (issue 12), on the real stack: Kafka,
InfluxDB, the gateway and several ``metricsflow worker`` processes (tests/job/stack.py).

* fencing: while InfluxDB is down two workers join (the old owner's queued writes for the
  partitions it loses are dropped, never sent late); late rewrites of fired windows keep
  coming; after InfluxDB is back every tier equals InfluxDB's own GROUP BY over raw, and stays
  equal for 60 s;
* retention follows partitions: the checkpoint holding a handed-over partition survives the
  old owner's retention, so a new owner SIGKILLed before its first checkpoint restores it;
* ``--from-savepoint`` restores that savepoint even when newer checkpoints exist;
* a second live worker with a used ``--worker-id`` is refused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.job.stack import (
    TIERS,
    Proc,
    Sender,
    Stack,
    assert_tiers_match_oracle,
    diff,
    influxql_rows,
    metrics_of,
    reference,
    stack_factory,
    tier_rows,
)

__all__ = ["stack_factory"]

# ruff: noqa: ASYNC251 - the tests drive subprocesses synchronously on purpose
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def owned(worker: Proc) -> list[int]:
    jobs = httpx.get(f"{worker.url}/jobs/overview", timeout=10).json()["jobs"]
    return list(jobs[0]["key_groups"])


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s}s waiting for {what}"
        time.sleep(0.3)


def tier_problems(stack: Stack, sender: Sender) -> dict[str, list[str]]:
    """Every tier against the Python reference and against InfluxQL over the raw tier."""
    lo = min(ts for _, ts in sender.acked) // 10_000_000_000 * 10_000_000_000
    hi = max(ts for _, ts in sender.acked) + 10_000_000_000
    problems: dict[str, list[str]] = {}
    for tier, window in TIERS.items():
        actual = tier_rows(stack, tier)
        p = diff(reference(sender.acked, window), actual)
        p += diff(influxql_rows(stack, tier, lo, hi), actual)
        if p:
            problems[tier] = p
    return problems


async def test_joining_workers_during_an_influxdb_outage_never_regress_a_tier(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=6)
    sender = Sender(stack.gateway.url, stack.db, seed=21)
    w1 = stack.worker("w1")
    with sender.in_background(interval_s=0.05):
        time.sleep(3)
        stack.influx.stop()
        try:
            time.sleep(2)  # w1's sink queues writes it cannot send
            w2 = stack.worker("w2")
            w3 = stack.worker("w3")
            wait_for(lambda: all(owned(w) for w in (w1, w2, w3)), "every worker to own partitions")
            time.sleep(4)  # rewrites of fired windows keep coming while InfluxDB is down
        finally:
            stack.influx.start()
        time.sleep(3)
    fenced = metrics_of(w1)["metricsflow_worker_influxdb_points_fenced_total"]
    assert fenced > 0, "the old owner had queued writes of the partitions it lost"
    assert_tiers_match_oracle(stack, sender, timeout_s=150)
    # ... and they stay equal: no late write of an old owner lands afterwards
    end = time.monotonic() + 60
    while time.monotonic() < end:
        problems = tier_problems(stack, sender)
        assert not problems, {t: (len(p), p[:5]) for t, p in problems.items()}
        time.sleep(5)
    for w in (w1, w2, w3):
        assert metrics_of(w)["metricsflow_worker_influxdb_unconfirmed_writes_total"] == 0
