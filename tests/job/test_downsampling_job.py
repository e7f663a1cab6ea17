"""The downsampling job end to end: gateway -> Kafka -> worker processes -> InfluxDB.

Real servers (tests/conftest.py), real subprocesses (``metricsflow gateway``, ``metricsflow
worker``), stopped by PID. Tiers are short (1s, 5s, 10s) so that windows close within the
test; event time is the wall clock at sending (the gateway stamps nothing: the sender does).

The oracle: (1) an independent Python reference computed from every point the gateway
acknowledged (InfluxDB identity: the last write of (series, field, ts) wins); (2) InfluxQL's
own ``count/sum/min/max/first/last ... GROUP BY time(<tier>), *`` over the raw tier. Tiers
must equal both: exactly for count/min/max/first/last, within 1e-9 relative for sum/mean.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.job.stack import (
    HTTP,
    TIER_SPEC,
    TIERS,
    Proc,
    Sender,
    Stack,
    assert_tiers_match_oracle,
    diff,
    metrics_of,
    query,
    reference,
    stack_factory,
    tier_rows,
)

__all__ = ["stack_factory"]  # the fixture, used by this module's tests

# ruff: noqa: ASYNC251 - the tests drive subprocesses synchronously on purpose
pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_every_tier_equals_the_python_reference_and_influxql_over_the_raw_tier(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory()
    worker = stack.worker("w1")
    sender = Sender(stack.gateway.url, stack.db)
    sender.run_for(8)
    assert_tiers_match_oracle(stack, sender)
    raw = query(stack.influx.url, stack.db, 'SELECT count(v) FROM "raw"."m"')
    assert raw[0]["count"] == len(sender.acked)
    overview = HTTP.get(f"{worker.url}/jobs/overview").json()["jobs"][0]
    assert overview["state"] == "RUNNING"
    assert overview["key_groups"] == [0, 1, 2, 3]
    checkpoints = HTTP.get(f"{worker.url}/checkpoints").json()
    assert checkpoints["counts"]["completed"] > 0
    metrics = metrics_of(worker)
    assert metrics["metricsflow_worker_points_in_total"] >= len(sender.acked)
    assert metrics.get("metricsflow_worker_late_points_total", 0) == 0


async def test_sigkilled_workers_restart_and_the_tiers_still_equal_the_oracle(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory()
    sender = Sender(stack.gateway.url, stack.db, seed=11)
    rng = random.Random(3)
    worker = stack.worker("w1")
    for _ in range(5):
        sender.run_for(rng.uniform(1.0, 3.0))
        # checkpoints run every 500 ms and take a few ms to ~100 ms: random moments include
        # moments inside a checkpoint (barrier in flight, async part persisting, metadata).
        worker.kill()
        sender.run_for(rng.uniform(0.2, 1.0))  # the gateway keeps accepting meanwhile
        worker = stack.worker("w1")
    sender.run_for(2)
    assert_tiers_match_oracle(stack, sender, timeout_s=90)


async def test_a_poison_message_goes_to_the_dead_letter_topic_and_the_worker_keeps_running(
    stack_factory: Callable[..., Any],
) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    stack: Stack = await stack_factory(partitions=1)
    worker = stack.worker("w1")
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    await producer.send_and_wait(
        stack.topic,
        b"\xff\xfe not line protocol",
        headers=[("mf-format", b"lp1"), ("mf-db", stack.db.encode())],
    )
    await producer.stop()
    sender = Sender(stack.gateway.url, stack.db, series=5)
    sender.run_for(2)
    assert_tiers_match_oracle(stack, sender)
    assert worker.proc.poll() is None
    assert (
        metrics_of(worker)['metricsflow_worker_dead_letters_total{reason="undecodable_record"}']
        == 1
    )
    dlq = AIOKafkaConsumer(
        f"{stack.topic}.dlq", bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest"
    )
    await dlq.start()
    got = await dlq.getmany(timeout_ms=10_000)
    await dlq.stop()
    records = [r for rs in got.values() for r in rs]
    assert [r.value for r in records] == [b"\xff\xfe not line protocol"]
    assert dict(records[0].headers)["mf-dlq-offset"] == b"0"


async def test_rebalancing_one_to_three_to_one_workers_with_one_sigkilled_keeps_the_tiers_exact(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=6)
    sender = Sender(stack.gateway.url, stack.db, seed=5)
    w1 = stack.worker("w1")
    sender.run_for(2)
    w2 = stack.worker("w2")
    sender.run_for(1)
    w3 = stack.worker("w3")
    sender.run_for(3)
    deadline = time.monotonic() + 60
    while True:  # keep sending until the group has settled on three owners
        owned = [
            HTTP.get(f"{w.url}/jobs/overview").json()["jobs"][0]["key_groups"] for w in (w1, w2, w3)
        ]
        settled = sorted(kg for kgs in owned for kg in kgs) == [0, 1, 2, 3, 4, 5] and all(owned)
        if settled or time.monotonic() > deadline:
            break
        sender.run_for(1)
    assert sorted(kg for kgs in owned for kg in kgs) == [0, 1, 2, 3, 4, 5]
    assert all(owned), owned
    w2.kill()
    sender.run_for(3)
    w3.terminate()
    sender.run_for(3)
    assert_tiers_match_oracle(stack, sender, timeout_s=90)
    assert HTTP.get(f"{w1.url}/jobs/overview").json()["jobs"][0]["key_groups"] == list(range(6))


async def test_an_upgrade_through_stop_with_savepoint_changes_lateness_and_adds_a_tier(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    sender = Sender(stack.gateway.url, stack.db, seed=9)
    old = {"METRICSFLOW_TIERS": "raw:7d,1s:7d,5s:7d", "METRICSFLOW_ALLOWED_LATENESS": "1m"}
    w1 = stack.worker("w1", **old)
    sender.run_for(3)
    stopped = HTTP.post(f"{w1.url}/stop", timeout=60)
    assert stopped.status_code == 200, stopped.text
    savepoint = stopped.json()["location"]
    assert w1.proc.wait(30) == 0
    assert (Path(savepoint) / "_metadata").is_file()
    sender.run_for(1)  # written while no worker runs
    resumed_ns = time.time_ns()
    new = {"METRICSFLOW_TIERS": TIER_SPEC, "METRICSFLOW_ALLOWED_LATENESS": "2m"}
    stack.worker("w1", "--from-savepoint", savepoint, **new)
    sender.run_for(4)
    # the new 10s tier starts from the upgrade: check its windows that start after it
    first_new = (resumed_ns // TIERS["10s"] + 1) * TIERS["10s"]
    deadline = time.monotonic() + 60
    while True:
        problems = {}
        for tier, window in TIERS.items():
            expected = reference(sender.acked, window)
            actual = tier_rows(stack, tier)
            if tier == "10s":
                expected = {k: v for k, v in expected.items() if k[1] >= first_new}
                actual = {k: v for k, v in actual.items() if k[1] >= first_new}
            if p := diff(expected, actual):
                problems[tier] = p
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not problems, {t: (len(p), p[:3]) for t, p in problems.items()}


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def labelled(metrics: dict[str, float], name: str) -> dict[str, float]:
    """``{label value: sample}`` of a metric with one label."""
    prefix = f"metricsflow_worker_{name}{{"
    return {k[len(prefix) :].split('"')[1]: v for k, v in metrics.items() if k.startswith(prefix)}


def wait_until_accepting(sender: Sender, batches: int = 20, timeout_s: float = 60) -> None:
    """Until the gateway has acknowledged ``batches`` more of the sender's batches."""
    start = sender.batches_acked
    deadline = time.monotonic() + timeout_s
    while sender.batches_acked < start + batches:
        assert time.monotonic() < deadline, (
            f"the gateway acknowledged {sender.batches_acked - start} batches in {timeout_s} s "
            "after Kafka came back"
        )
        time.sleep(0.2)


def wait_until_caught_up(worker: Proc, timeout_s: float = 90) -> None:
    """Until the worker reads again: every partition at most a few records behind its end
    (consumer lag, in records: a wall-clock criterion would depend on the machine's load)."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = metrics_of(worker)
        lag = labelled(metrics, "consumer_lag")
        if len(lag) == 4 and max(lag.values()) <= 20:
            return
        wm_lag = labelled(metrics, "watermark_lag_seconds")
        assert time.monotonic() < deadline, (
            f"worker not caught up: consumer lag {lag}, watermark lag {wm_lag}"
        )
        time.sleep(0.5)


HELD_BACK_S = 36
"""How far behind the wall clock the watermarks must fall before InfluxDB comes back."""


def wm_lag_of(metrics: dict[str, float]) -> float:
    return max(labelled(metrics, "watermark_lag_seconds").values(), default=0.0)


async def test_a_kafka_restart_and_a_long_influxdb_outage_lose_nothing_with_bounded_memory(
    stack_factory: Callable[..., Any],
) -> None:
    """Kafka restarts mid-stream, then InfluxDB is down (until the watermarks lag 36 s behind:
    about 40 s, at most 60 s) while the gateway keeps accepting. The worker must slow down
    (not buffer), stay responsive and in its consumer group, hold its watermarks (data
    waiting in Kafka is not idleness), and afterwards every tier must equal the oracle with no
    point judged late."""
    stack: Stack = await stack_factory(partitions=4)
    sender = Sender(stack.gateway.url, stack.db, seed=13)
    # small sink limits: the sink saturates within seconds of the outage
    worker = stack.worker(
        "w1",
        METRICSFLOW_INFLUXDB_BATCH_MAX_POINTS="5000",
        METRICSFLOW_INFLUXDB_MAX_PENDING_REQUESTS="4",
    )
    samples: list[tuple[float, int, float, dict[str, float], float]] = []
    with sender.in_background(interval_s=0.02):
        time.sleep(3)
        try:
            stack.kafka.stop()
            time.sleep(3)
        finally:
            stack.kafka.start()
        # the gateway accepts writes again (a producer whose sequence numbers the restarted
        # broker refuses must be replaced, not retried forever) ...
        wait_until_accepting(sender)
        # ... and the worker reads them
        wait_until_caught_up(worker)
        before_rss = rss_bytes(worker.proc.pid)
        before = metrics_of(worker)
        stack.influx.stop()
        try:
            # the outage lasts until the readers have been held back well past the 30 s the
            # watermark check below needs (about 40 s here), never more than 60 s: readers
            # that were not held back (idle partitions advancing the watermarks) keep the
            # lag small and meet the 60 s bound, and the check fails
            end = time.monotonic() + 60
            while time.monotonic() < end and not (
                samples and wm_lag_of(samples[-1][3]) > HELD_BACK_S
            ):
                started = time.monotonic()
                # the event loop must stay free: the REST API answers within a second
                health = HTTP.get(f"{worker.url}/health", timeout=1).json()
                latency = time.monotonic() - started
                samples.append(
                    (
                        latency,
                        rss_bytes(worker.proc.pid),
                        float(health["influxdb_blocked"]),
                        metrics_of(worker),
                        started,
                    )
                )
                time.sleep(0.5)
        finally:
            stack.influx.start()
        time.sleep(2)
    assert_tiers_match_oracle(stack, sender, timeout_s=150)
    after = metrics_of(worker)
    peak_rss = max(s[1] for s in samples)
    max_wm_lag = max(wm_lag_of(s[3]) for s in samples)
    outage_s = len(samples) and samples[-1][4] - samples[0][4]
    print(
        f"\nworker RSS before the outage {before_rss / 2**20:.0f} MiB, peak during the "
        f"{outage_s:.0f} s outage {peak_rss / 2**20:.0f} MiB "
        f"(+{(peak_rss - before_rss) / 2**20:.1f} MiB); "
        f"max /health latency {max(s[0] for s in samples) * 1000:.0f} ms; max watermark lag "
        f"{max_wm_lag:.0f} s; max pending requests "
        f"{max(s[3]['metricsflow_worker_influxdb_pending_requests'] for s in samples):.0f}; "
        f"points acknowledged {len(sender.acked)}"
    )
    assert worker.proc.poll() is None
    assert samples[-1][2] == 1.0  # the outage was seen (influxdb_blocked)
    assert max(s[0] for s in samples) < 1.0
    # bounded: every queue is, so memory does not follow the backlog of the outage
    assert peak_rss - before_rss < 64 * 2**20, (before_rss, peak_rss)
    assert max(s[3]["metricsflow_worker_influxdb_pending_requests"] for s in samples) <= 4 + 4
    assert after["metricsflow_worker_influxdb_hard_limit_waits_total"] == 0
    # heartbeats kept flowing: no rebalance during or after the outage
    rebalances = "metricsflow_worker_rebalances_total"
    assert after[rebalances] == before[rebalances]
    # the readers were held back, not idle: the watermarks waited for the data in Kafka ...
    assert max_wm_lag > 30, max_wm_lag
    idle = labelled(samples[-1][3], "partition_idle")
    assert idle, "no partition_idle metric"
    assert all(v == 0 for v in idle.values()), idle
    # ... so nothing that was merely delayed became late
    assert after.get("metricsflow_worker_late_points_total", 0) == 0
