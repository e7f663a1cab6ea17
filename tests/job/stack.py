"""The end-to-end stack shared by the job and worker tests: a gateway and worker processes
on the real Kafka and InfluxDB (tests/conftest.py), a sender that records every acknowledged
point, and the oracle (an independent Python reference and InfluxQL over the raw tier).

Real subprocesses (``metricsflow gateway``, ``metricsflow worker``), stopped by PID. Tiers are
short (1s, 5s, 10s) so that windows close within a test; event time is the wall clock at
sending (the gateway stamps nothing: the sender does).
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

TIERS = {"1s": 1_000_000_000, "5s": 5_000_000_000, "10s": 10_000_000_000}
TIER_SPEC = "raw:7d,1s:7d,5s:7d,10s:7d"
METRICSFLOW = [str(Path(sys.executable).parent / "metricsflow")]
HTTP = httpx.Client(timeout=60)
"""The tests' client for polling the stack: ``httpx.get`` builds a client, and its TLS
context, per call (~30 ms of CPU), which the polling loops below paid several times a
second while the processes they wait for needed the CPU."""


def wait_http(url: str, timeout_s: float = 60, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{url}: process exited with {proc.returncode}")
        try:
            if HTTP.get(url, timeout=2).status_code == 200:
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
            [*METRICSFLOW, *args],
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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
        proc = spawn(
            ["worker", "--worker-id", worker_id, "--port", str(port), *args],
            base,
            self.tmp / f"worker-{worker_id}.log",
            f"http://127.0.0.1:{port}",
        )
        self.procs.append(proc)
        wait_http(f"{proc.url}/health", proc=proc.proc)
        return proc


@pytest.fixture
def stack_factory(
    kafka_broker: KafkaServer,
    influxdb_server: InfluxDBServer,
    topic_factory: Any,
    influx_database_factory: Callable[..., str],
    tmp_path: Path,
) -> Iterator[Callable[..., Any]]:
    stacks: list[Stack] = []

    async def make(partitions: int = 4) -> Stack:
        topic = await topic_factory(partitions=partitions)
        db = influx_database_factory()
        port = free_port()
        gateway = spawn(
            [
                "gateway",
                "--port",
                str(port),
                "--bootstrap-servers",
                kafka_broker.bootstrap,
                "--topic",
                topic,
            ],
            {},
            tmp_path / "gateway.log",
            f"http://127.0.0.1:{port}",
        )
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
    value). ``max_rewrite_age_s`` keeps rewrites within the worker's allowed lateness (later
    rewrites are corrections, tested with their own oracle in tests/truth/).
    """

    def __init__(
        self,
        gateway_url: str,
        db: str,
        series: int = 40,
        seed: int = 7,
        max_rewrite_age_s: float = 20.0,
    ) -> None:
        self.url = f"{gateway_url}/write"
        self.db = db
        self.series = series
        self.rng = random.Random(seed)
        self.acked: dict[tuple[str, int], float] = {}
        self.client = httpx.Client(timeout=10)
        self.last_ts = 0
        self.batches_acked = 0
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
                r = self.client.post(
                    self.url,
                    params={"db": self.db, "precision": "ns"},
                    content="\n".join(lines).encode(),
                )
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if r.status_code == 204:
                break
            time.sleep(0.2)  # 503 while Kafka is down: retry the same points
        self.acked.update(batch)
        self.batches_acked += 1
        self._recent.extend(k for k in sorted(batch, key=lambda k: k[1]) if k[1] >= horizon)
        self.last_ts = max(self.last_ts, now)

    def run_for(self, seconds: float, interval_s: float = 0.05) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.send_batch()
            time.sleep(interval_s)

    def in_background(self, interval_s: float = 0.05) -> contextlib.AbstractContextManager[None]:
        """Keep sending from a thread (``acked`` is only read after the block)."""
        return repeating(self.send_batch, interval_s, name="sender")


@contextlib.contextmanager
def repeating(step: Callable[[], None], interval_s: float, *, name: str) -> Iterator[None]:
    """Call ``step`` from a thread every ``interval_s`` until the block ends; an exception it
    raised fails the block afterwards."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        try:
            while not stop.is_set():
                step()
                stop.wait(interval_s)
        except BaseException as exc:  # surfaced after the block
            errors.append(exc)

    thread = threading.Thread(target=loop, name=name, daemon=True)
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
        out[key] = {
            "count": len(values),
            "sum": math.fsum(values),
            "min": min(values),
            "max": max(values),
            "first": values[0],
            "last": values[-1],
        }
    return out


def query(url: str, db: str, q: str) -> list[dict[str, Any]]:
    result = _query(url, db, q)
    assert "error" not in result, result
    return _rows(result)


def _query(url: str, db: str, q: str) -> dict[str, Any]:
    r = HTTP.get(f"{url}/query", params={"db": db, "q": q, "epoch": "ns"})
    r.raise_for_status()
    result: dict[str, Any] = r.json()["results"][0]
    return result


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for series in result.get("series", []):
        for values in series.get("values", []):
            rows.append(
                {**series.get("tags", {}), **dict(zip(series["columns"], values, strict=False))}
            )
    return rows


def tier_rows(stack: Stack, tier: str) -> dict[tuple[str, int], dict[str, float]]:
    result = _query(stack.influx.url, stack.db, f'SELECT * FROM "{tier}"."m" GROUP BY *')
    if "retention policy not found" in result.get("error", ""):
        return {}  # the worker has not written anything yet (a slow start): poll again
    assert "error" not in result, result
    rows = _rows(result)
    return {
        (f"m,host={r['host']}", r["time"]): {
            "count": r["count_v"],
            "sum": r["sum_v"],
            "min": r["min_v"],
            "max": r["max_v"],
            "first": r["first_v"],
            "last": r["last_v"],
            "mean": r["mean_v"],
        }
        for r in rows
    }


def influxql_rows(
    stack: Stack, tier: str, lo: int, hi: int
) -> dict[tuple[str, int], dict[str, float]]:
    rows = query(
        stack.influx.url,
        stack.db,
        f'SELECT count(v), sum(v), min(v), max(v), first(v), last(v) FROM "raw"."m" '
        f"WHERE time >= {lo} AND time < {hi} GROUP BY time({tier}), *",
    )
    return {
        (f"m,host={r['host']}", r["time"]): {
            "count": r["count"],
            "sum": r["sum"],
            "min": r["min"],
            "max": r["max"],
            "first": r["first"],
            "last": r["last"],
        }
        for r in rows
        if r["count"]
    }


def diff(expected: dict[Any, dict[str, float]], actual: dict[Any, dict[str, float]]) -> list[str]:
    problems = []
    for key in sorted(set(expected) | set(actual)):
        e, a = expected.get(key), actual.get(key)
        if e is None or a is None:
            problems.append(f"{key}: expected {e} got {a}")
            continue
        if any(value is None for value in a.values()):
            # InfluxDB stores each field of a point separately: a query racing the sink's
            # write can see some of a tier point's fields before the others. A mismatch, so
            # the callers' polling loops look again; still a failure at their deadline.
            problems.append(f"{key}: incomplete row {a}")
            continue
        for name in ("count", "min", "max", "first", "last"):
            if e[name] != a[name]:
                problems.append(f"{key}.{name}: expected {e[name]} got {a[name]}")
        if not math.isclose(e["sum"], a["sum"], rel_tol=1e-9, abs_tol=1e-9):
            problems.append(f"{key}.sum: expected {e['sum']} got {a['sum']}")
        if "mean" in a and not math.isclose(
            e["sum"] / e["count"], a["mean"], rel_tol=1e-9, abs_tol=1e-9
        ):
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
    for line in HTTP.get(f"{proc.url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
