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

import contextlib
import math
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.infra.kafka import KafkaServer
from metricsflow.infra.process import free_port

# ruff: noqa: ASYNC210, ASYNC251 - the tests drive subprocesses synchronously on purpose
pytestmark = [pytest.mark.integration, pytest.mark.slow]

TIERS = {"1s": 1_000_000_000, "5s": 5_000_000_000, "10s": 10_000_000_000}
TIER_SPEC = "raw:7d,1s:7d,5s:7d,10s:7d"
METRICSFLOW = [str(Path(sys.executable).parent / "metricsflow")]


def wait_http(url: str, timeout_s: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not healthy after {timeout_s}s")


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def spawn(args: list[str], env: dict[str, str], log: Path, url: str) -> Proc:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*METRICSFLOW, *args], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Proc(proc, url, log)


@dataclass
class Stack:
    kafka: KafkaServer
    influx: InfluxDBServer
    topic: str
    db: str
    tmp: Path
    gateway: Proc
    procs: list[Proc] = field(default_factory=list)

    def worker(self, worker_id: str, *args: str, **env: str) -> Proc:
        port = free_port()
        base = {
            "METRICSFLOW_KAFKA_BOOTSTRAP_SERVERS": self.kafka.bootstrap,
            "METRICSFLOW_KAFKA_TOPIC": self.topic,
            "METRICSFLOW_KAFKA_GROUP_ID": f"g-{self.topic}",
            "METRICSFLOW_INFLUXDB_URL": self.influx.url,
            "METRICSFLOW_DATA_DIR": str(self.tmp / "worker"),
            "METRICSFLOW_DEAD_LETTER_DIR": str(self.tmp / f"dead-letter-{worker_id}"),
            "METRICSFLOW_TIERS": TIER_SPEC,
            "METRICSFLOW_MAX_OUT_OF_ORDERNESS": "1s",
            "METRICSFLOW_IDLE_TIMEOUT": "2s",
            "METRICSFLOW_ALLOWED_LATENESS": "1m",
            "METRICSFLOW_CHECKPOINT_INTERVAL_MS": "500",
            "METRICSFLOW_INFLUXDB_FLUSH_INTERVAL_S": "0.2",
            "METRICSFLOW_KAFKA_SESSION_TIMEOUT_MS": "6000",
            **env,
        }
        proc = spawn(["worker", "--worker-id", worker_id, "--port", str(port), *args], base,
                     self.tmp / f"worker-{worker_id}.log", f"http://127.0.0.1:{port}")  # fmt: skip
        self.procs.append(proc)
        wait_http(f"{proc.url}/health", proc=proc.proc)
        return proc


@pytest.fixture
def stack_factory(
    kafka_broker: KafkaServer, influxdb_server: InfluxDBServer, topic_factory: Any,
    influx_database_factory: Callable[..., str], tmp_path: Path,
) -> Iterator[Callable[..., Any]]:  # fmt: skip
    stacks: list[Stack] = []

    async def make(partitions: int = 4) -> Stack:
        topic = await topic_factory(partitions=partitions)
        db = influx_database_factory()
        port = free_port()
        gateway = spawn(
            ["gateway", "--port", str(port), "--bootstrap-servers", kafka_broker.bootstrap,
             "--topic", topic], {}, tmp_path / "gateway.log", f"http://127.0.0.1:{port}",
        )  # fmt: skip
        wait_http(f"{gateway.url}/health", proc=gateway.proc)
        stack = Stack(kafka_broker, influxdb_server, topic, db, tmp_path, gateway)
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        for proc in [*stack.procs, stack.gateway]:
            proc.kill()


class Sender:
    """Writes points through the gateway and remembers what was acknowledged (204).

    About 5% of the points rewrite an acknowledged point (same series and timestamp, new
    value). ``max_rewrite_age_s`` keeps rewrites within the worker's allowed lateness: a point
    rewritten later than that goes to the raw tier only, by design (docs/windows.md), so the
    reference over every acknowledged point would no longer describe the tiers.
    """

    def __init__(
        self, gateway_url: str, db: str, series: int = 40, seed: int = 7,
        max_rewrite_age_s: float = 20.0,
    ) -> None:  # fmt: skip
        self.url = f"{gateway_url}/write"
        self.db = db
        self.series = series
        self.rng = random.Random(seed)
        self.acked: dict[tuple[str, int], float] = {}
        self.client = httpx.Client(timeout=10)
        self.last_ts = 0
        self.max_rewrite_age_ns = int(max_rewrite_age_s * 1e9)
        self._recent: list[tuple[str, int]] = []

    def send_batch(self, points_per_series: int = 2) -> None:
        now = time.time_ns()
        lines: list[str] = []
        batch: dict[tuple[str, int], float] = {}
        horizon = now - self.max_rewrite_age_ns
        while self._recent and self._recent[0][1] < horizon:
            del self._recent[: max(1, len(self._recent) // 8)]
        for s in range(self.series):
            for _ in range(points_per_series):
                ts = now - self.rng.randrange(0, 500_000_000)
                ts = max(ts, self.last_ts - 900_000_000)
                series = f"m,host=h{s:03d}"
                if self._recent and self.rng.random() < 0.05:  # rewrite an acknowledged point
                    series, ts = self.rng.choice(self._recent)
                value = round(self.rng.uniform(-100, 100), 3)
                batch[(series, ts)] = value
        for (series, ts), value in batch.items():
            lines.append(f"{series} v={value} {ts}")
        while True:
            try:
                r = self.client.post(self.url, params={"db": self.db, "precision": "ns"},
                                     content="\n".join(lines).encode())  # fmt: skip
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if r.status_code == 204:
                break
            time.sleep(0.2)  # 503 while Kafka is down: retry the same points
        self.acked.update(batch)
        self._recent.extend(k for k in sorted(batch, key=lambda k: k[1]) if k[1] >= horizon)
        self.last_ts = max(self.last_ts, now)

    def run_for(self, seconds: float, interval_s: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.send_batch()
            time.sleep(interval_s)

    @contextlib.contextmanager
    def in_background(self, interval_s: float = 0.05) -> Iterator[None]:
        """Keep sending from a thread (``acked`` is only read after the block)."""
        stop = threading.Event()
        errors: list[BaseException] = []

        def loop() -> None:
            try:
                while not stop.is_set():
                    self.send_batch()
                    stop.wait(interval_s)
            except BaseException as exc:  # surfaced after the block
                errors.append(exc)

        thread = threading.Thread(target=loop, name="sender", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(30)
        assert not errors, errors


def reference(
    acked: dict[tuple[str, int], float], window_ns: int
) -> dict[tuple[str, int], dict[str, float]]:
    groups: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for (series, ts), value in acked.items():
        groups[(series, ts - ts % window_ns)].append((ts, value))
    out: dict[tuple[str, int], dict[str, float]] = {}
    for key, rows in groups.items():
        rows.sort()
        values = [v for _, v in rows]
        out[key] = {"count": len(values), "sum": math.fsum(values), "min": min(values),
                    "max": max(values), "first": values[0], "last": values[-1]}  # fmt: skip
    return out


def query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"}, timeout=60)
    r.raise_for_status()
    result = r.json()["results"][0]
    assert "error" not in result, result
    rows = []
    for series in result.get("series", []):
        for values in series.get("values", []):
            rows.append(
                {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=False))}
            )
    return rows


def tier_rows(stack: Stack, tier: str) -> dict[tuple[str, int], dict[str, float]]:
    rows = query(stack.influx.url, stack.db, f'SELECT * FROM "{tier}"."m" GROUP BY *')
    return {(f"m,host={r['host']}", r["time"]): {
        "count": r["count_v"], "sum": r["sum_v"], "min": r["min_v"], "max": r["max_v"],
        "first": r["first_v"], "last": r["last_v"], "mean": r["mean_v"]} for r in rows}  # fmt: skip


def influxql_rows(
    stack: Stack, tier: str, lo: int, hi: int
) -> dict[tuple[str, int], dict[str, float]]:
    rows = query(stack.influx.url, stack.db,
                 f'SELECT count(v), sum(v), min(v), max(v), first(v), last(v) FROM "raw"."m" '
                 f"WHERE time >= {lo} AND time < {hi} GROUP BY time({tier}), *")  # fmt: skip
    return {(f"m,host={r['host']}", r["time"]): {
        "count": r["count"], "sum": r["sum"], "min": r["min"], "max": r["max"],
        "first": r["first"], "last": r["last"]} for r in rows if r["count"]}  # fmt: skip


def diff(expected: dict[Any, dict[str, float]], actual: dict[Any, dict[str, float]]) -> list[str]:
    problems = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key), actual.get(key)
        if e is None or a is None:
            problems.append(f"{key}: expected {e} got {a}")
            continue
        for name in ("count", "min", "max", "first", "last"):
            if e[name] != a[name]:
                problems.append(f"{key}.{name}: expected {e[name]} got {a[name]}")
        if not math.isclose(e["sum"], a["sum"], rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"{key}.sum: expected {e['sum']} got {a['sum']}")
        if "mean" in a and not math.isclose(e["sum"] / e["count"], a["mean"], rel_tol=1e-9,
                                            abs_tol=1e-9):  # fmt: skip
            problems.append(f"{key}.mean: expected {e['sum'] / e['count']} got {a['mean']}")
    return problems


def assert_tiers_match_oracle(stack: Stack, sender: Sender, timeout_s: float = 60) -> None:
    """Wait until every tier equals the reference, then check InfluxQL over raw too."""
    deadline = time.monotonic() + timeout_s
    problems: dict[str, list[str]] = {}
    while time.monotonic() < deadline:
        problems = {}
        for tier, window in TIERS.items():
            p = diff(reference(sender.acked, window), tier_rows(stack, tier))
            if p:
                problems[tier] = p
        if not problems:
            break
        time.sleep(1)
    assert not problems, {t: (len(p), p[:5]) for t, p in problems.items()}
    lo = min(ts for _, ts in sender.acked) // 10_000_000_000 * 10_000_000_000
    hi = max(ts for _, ts in sender.acked) + 10_000_000_000
    for tier in TIERS:
        p = diff(influxql_rows(stack, tier, lo, hi), tier_rows(stack, tier))
        assert not p, (tier, len(p), p[:5])


def metrics_of(proc: Proc) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{proc.url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


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
    overview = httpx.get(f"{worker.url}/jobs/overview").json()["jobs"][0]
    assert overview["state"] == "RUNNING"
    assert overview["key_groups"] == [0, 1, 2, 3]
    checkpoints = httpx.get(f"{worker.url}/checkpoints").json()
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
    await producer.stop()  # fmt: skip
    sender = Sender(stack.gateway.url, stack.db, series=5)
    sender.run_for(2)
    assert_tiers_match_oracle(stack, sender)
    assert worker.proc.poll() is None
    assert (
        metrics_of(worker)['metricsflow_worker_dead_letters_total{reason="undecodable_record"}']
        == 1
    )
    dlq = AIOKafkaConsumer(f"{stack.topic}.dlq", bootstrap_servers=stack.kafka.bootstrap,
                           auto_offset_reset="earliest")  # fmt: skip
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
    owned = [httpx.get(f"{w.url}/jobs/overview").json()["jobs"][0]["key_groups"]
             for w in (w1, w2, w3)]  # fmt: skip
    assert sorted(kg for kgs in owned for kg in kgs) == [0, 1, 2, 3, 4, 5]
    assert all(owned), owned
    w2.kill()
    sender.run_for(3)
    w3.terminate()
    sender.run_for(3)
    assert_tiers_match_oracle(stack, sender, timeout_s=90)
    assert httpx.get(f"{w1.url}/jobs/overview").json()["jobs"][0]["key_groups"] == list(range(6))


async def test_an_upgrade_through_stop_with_savepoint_changes_lateness_and_adds_a_tier(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    sender = Sender(stack.gateway.url, stack.db, seed=9)
    old = {"METRICSFLOW_TIERS": "raw:7d,1s:7d,5s:7d", "METRICSFLOW_ALLOWED_LATENESS": "1m"}
    w1 = stack.worker("w1", **old)
    sender.run_for(3)
    stopped = httpx.post(f"{w1.url}/stop", timeout=60)
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


async def test_a_kafka_restart_and_a_60s_influxdb_outage_lose_nothing_with_bounded_memory(
    stack_factory: Callable[..., Any],
) -> None:
    """Kafka restarts mid-stream, then InfluxDB is down for 60 s while the gateway keeps
    accepting. The worker must slow down (not buffer), stay responsive and in its consumer
    group, hold its watermarks (data waiting in Kafka is not idleness), and afterwards every
    tier must equal the oracle with no point judged late."""
    stack: Stack = await stack_factory(partitions=4)
    sender = Sender(stack.gateway.url, stack.db, seed=13)
    # small sink limits: the sink saturates within seconds of the outage
    worker = stack.worker("w1", METRICSFLOW_INFLUXDB_BATCH_MAX_POINTS="5000",
                          METRICSFLOW_INFLUXDB_MAX_PENDING_REQUESTS="4")  # fmt: skip
    samples: list[tuple[float, int, float, dict[str, float]]] = []
    with sender.in_background(interval_s=0.02):
        time.sleep(3)
        try:
            stack.kafka.stop()
            time.sleep(3)
        finally:
            stack.kafka.start()
        wait_until_caught_up(worker)
        before_rss = rss_bytes(worker.proc.pid)
        before = metrics_of(worker)
        stack.influx.stop()
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end:
                started = time.monotonic()
                # the event loop must stay free: the REST API answers within a second
                health = httpx.get(f"{worker.url}/health", timeout=1).json()
                latency = time.monotonic() - started
                samples.append((latency, rss_bytes(worker.proc.pid),
                                float(health["influxdb_blocked"]), metrics_of(worker)))  # fmt: skip
                time.sleep(0.5)
        finally:
            stack.influx.start()
        time.sleep(2)
    assert_tiers_match_oracle(stack, sender, timeout_s=150)
    after = metrics_of(worker)
    peak_rss = max(s[1] for s in samples)
    max_wm_lag = max(max(labelled(s[3], "watermark_lag_seconds").values()) for s in samples)
    print(f"\nworker RSS before the outage {before_rss / 2**20:.0f} MiB, peak during the 60 s "
          f"outage {peak_rss / 2**20:.0f} MiB (+{(peak_rss - before_rss) / 2**20:.1f} MiB); "
          f"max /health latency {max(s[0] for s in samples) * 1000:.0f} ms; max watermark lag "
          f"{max_wm_lag:.0f} s; max pending requests "
          f"{max(s[3]['metricsflow_worker_influxdb_pending_requests'] for s in samples):.0f}; "
          f"points acknowledged {len(sender.acked)}")  # fmt: skip
    assert worker.proc.poll() is None
    assert samples[-1][2] == 1.0  # the outage was seen (influxdb_blocked)
    assert max(s[0] for s in samples) < 1.0
    # bounded: every queue is, so memory does not follow the 60 s backlog
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
