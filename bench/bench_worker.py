"""Worker throughput from a pre-filled topic: metricsflow vs Quix Streams vs Apache Flink; latency.

Starts a real Kafka broker and a real influxd (``metricsflow.infra``, free loopback ports),
fills a topic with ``lp1`` records (``metricsflow.model.encode_lines``: what the gateway
writes), then, one after the other in the same run, on the same topic (each with its own
consumer group and its own InfluxDB database):

* **metricsflow**: ``metricsflow worker`` as a real process (``METRICSFLOW_*`` env): raw tier
  (the record bytes, unchanged) + tiers 1m -> 1h -> 1d, checkpoints every 5 s (heap backend);
* **Quix Streams** (``quixstreams``, a separate process running :func:`quix_main`): the same
  1m tumbling aggregates (count/sum/min/max/mean/first/last per series + field), written to
  InfluxDB's ``1m`` retention policy as the same ``<agg>_<field>`` lines, and the record bytes
  to the raw tier. The records hold many series each and carry no key, so the idiomatic Quix
  pipeline is: explode each record into one row per sample (``apply(expand=True)``), set the
  event timestamp, ``group_by`` series + field (a repartition topic: Quix keys state by the
  message key), ``tumbling_window(60 s, grace = the watermark bound).agg(...)``,
  ``final(closing_strategy="key")``, a ``BatchingSink`` posting to ``/write``. Its
  state changelog topics stay on (Quix's fault tolerance; metricsflow checkpoints too);
* **Apache Flink 2.2.1** (``bench/flink``, built from Maven Central into the cache by
  ``flink_contender.build``; one JVM running a local MiniCluster, parallelism 2): KafkaSource
  whose deserializer checks the ``lp1`` headers and emits every numeric sample plus the record
  itself (so the per-partition watermark generators see each point's event time; bounded
  out-of-orderness = our bound) -> the record bytes to ``raw`` (side output) and the samples
  ``keyBy(series + field)`` -> 1m tumbling event-time windows -> ``aggregate(AggregateFunction,
  ProcessWindowFunction)`` -> the same ``count_/sum_/min_/max_/mean_/first_/last_<field>``
  lines to ``1m`` (a batched, gzip, async Sink V2 flushed before every checkpoint barrier),
  checkpoints every 5 s EXACTLY_ONCE, object reuse on; once per state backend in
  ``--flink-backends`` (``hashmap``, ``rocksdb`` incremental).

Before any figure is printed, every contender's 1m rows are read back and compared with the
metricsflow worker's (``tier_rows.compare_rows``: same rows and fields, counts exact, floats
within 1e-9 relative); a difference fails the run (exit 1) and lists the differences.

Completion = every point in the raw tier and every expected 1m window in the 1m tier (polled
in InfluxDB); one sentinel point per series 5 minutes ahead closes the last data windows for
both (counted in the points; their own windows stay open, as do the 1h/1d windows metricsflow
also computes: extra work only it does). CPU = user + sys
of the contender's process (all its threads, the JVM's included) from ``/proc``; Kafka and
InfluxDB are not counted; points per CPU-second = "per core". Also per contender: time from
start to the first complete 1m window (every series and field of the first minute in
InfluxDB) and peak RSS (``VmHWM``).

Then the **latency** phase: the gateway (``GatewayServer``) and a metricsflow worker on a new
topic; a client POSTs small batches at wall-clock time; per batch, time from the 204 until the
point is visible in the raw tier and in the 1m tier (polled every 50 ms); the 1m figure is
also given relative to ``window end + max out-of-orderness`` (target: p99 <= 2 s).

    .venv/bin/python bench/bench_worker.py                # full run, writes results/worker.json
    .venv/bin/python bench/bench_worker.py --quick        # smaller, for a smoke test
    .venv/bin/python bench/bench_worker.py --skip-quix --flink-backends hashmap --skip-latency
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer
from metricsflow.infra.kafka import KafkaConfig, KafkaServer
from metricsflow.infra.process import free_port, free_ports
from metricsflow.infra.settings import default_cache_dir
from metricsflow.model import encode_lines, partition_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
import flink_contender
from collapsed_stacks import summarize_file
from tier_rows import Rows, compare_rows, rows_from_series

S = 1_000_000_000
INTERVAL_S = 10
BOUND = "10s"
BOUND_NS = 10 * S
FIELDS = ("usage_idle", "usage_system", "usage_user", "usage_iowait")
RESULTS = Path(__file__).parent / "results" / "worker.json"
MF = "metricsflow worker"
QUIX = "Quix Streams app"
ROOT = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (VmHWM in /proc/<pid>/status), MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """SIGTERM to the process group we created (start_new_session), then SIGKILL."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def spawn(args: list[str], env: dict[str, str], log: Path) -> Proc:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
    return Proc(proc, log)


def start_worker(
    tmp: Path, name: str, bootstrap: str, topic: str, influx_url: str, **extra: str
) -> tuple[Proc, str]:
    port = free_port()
    env = {
        "METRICSFLOW_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "METRICSFLOW_KAFKA_TOPIC": topic,
        "METRICSFLOW_KAFKA_GROUP_ID": f"mf-{name}",
        "METRICSFLOW_INFLUXDB_URL": influx_url,
        "METRICSFLOW_DATA_DIR": str(tmp / f"worker-{name}"),
        "METRICSFLOW_TIERS": "raw:7d,1m:30d,1h:365d,1d:INF",
        "METRICSFLOW_MAX_OUT_OF_ORDERNESS": BOUND,
        **extra,
    }
    exe = str(Path(sys.executable).parent / "metricsflow")
    proc = spawn(
        [exe, "worker", "--worker-id", name, "--port", str(port)], env, tmp / f"{name}.log"
    )
    return proc, f"http://127.0.0.1:{port}"


# -- InfluxDB --------------------------------------------------------------------------------
class Influx:
    def __init__(self, url: str) -> None:
        self.url = url
        self.client = httpx.Client(timeout=30)

    def query(self, q: str, db: str = "") -> list[Any]:
        r = self.client.get(f"{self.url}/query", params={"q": q, "db": db, "epoch": "ns"})
        r.raise_for_status()
        results = r.json().get("results", [])
        return [s for res in results for s in res.get("series", [])]

    def count(self, db: str, rp: str, field: str, measurement: str = "cpu") -> int:
        series = self.query(f'SELECT count("{field}") FROM "{db}"."{rp}"."{measurement}"', db)
        return int(series[0]["values"][0][1]) if series else 0

    def tier_count(self, db: str, rp: str = "1m", where: str = "") -> int:
        """Complete tier rows: the fewest ``count_<field>`` values over the fields (a
        contender writing one line per field is complete only when every field is)."""
        cols = ", ".join(f'count("count_{f}")' for f in FIELDS)
        series = self.query(f'SELECT {cols} FROM "{db}"."{rp}"."cpu" {where}', db)
        return min(int(v or 0) for v in series[0]["values"][0][1:]) if series else 0

    def rows(self, db: str, rp: str = "1m") -> Rows:
        return rows_from_series(self.query(f'SELECT * FROM "{db}"."{rp}"./.*/ GROUP BY *', db))

    def create_tiers(self, db: str) -> None:
        """``db`` with metricsflow's layout: ``raw`` (DEFAULT) and ``"1m"``."""
        self.query(f'DROP DATABASE "{db}"')
        self.client.post(
            f"{self.url}/query",
            params={"q": f'CREATE DATABASE "{db}" WITH DURATION 7d REPLICATION 1 NAME "raw"'},
        ).raise_for_status()
        self.client.post(
            f"{self.url}/query",
            params={"q": f'CREATE RETENTION POLICY "1m" ON "{db}" DURATION 30d REPLICATION 1'},
        ).raise_for_status()

    def create(self, db: str) -> None:
        self.client.post(f"{self.url}/query", params={"q": f'CREATE DATABASE "{db}"'})
        self.client.post(
            f"{self.url}/query",
            params={"q": f'CREATE RETENTION POLICY "1m" ON "{db}" DURATION 30d REPLICATION 1'},
        )


# -- workload --------------------------------------------------------------------------------
@dataclass
class Topic:
    name: str
    partitions: int
    points: int
    windows: int
    """expected rows per field in the 1m tier (series x windows)"""
    data_end_ns: int
    series: int
    first_window_ns: int


def make_records(
    series: int, minutes: int, partitions: int, lines_per_record: int
) -> tuple[list[tuple[int, Any]], int, int, int, int]:
    """lp1 records per partition, like the gateway writes them (Telegraf-like cpu points)."""
    now = time.time_ns()
    t0 = (now - (minutes + 10) * 60 * S) // (60 * S) * (60 * S)  # minute aligned, recent
    ticks = minutes * 60 // INTERVAL_S
    per_part: dict[int, list[tuple[str, str]]] = {p: [] for p in range(partitions)}
    keys = [f"cpu,cpu=cpu{i % 8},host=host-{i:05d},region=r{i % 4}" for i in range(series)]
    parts = [partition_for(k, partitions) for k in keys]
    for tick in range(ticks):
        ts = t0 + tick * INTERVAL_S * S
        for i, key in enumerate(keys):
            n = tick * series + i
            fields = ",".join(f"{f}={(n * (j + 3)) % 1000 / 10}" for j, f in enumerate(FIELDS))
            per_part[parts[i]].append((key, f"{key} {fields} {ts}"))
    end = t0 + minutes * 60 * S + 5 * 60 * S
    # one point per series 5 minutes after the data: closes every series' last data window
    # (metricsflow: the partition watermark; Quix: its per-key window closing)
    sentinel = ",".join(f"{f}=0" for f in FIELDS)
    for i, key in enumerate(keys):
        per_part[parts[i]].append((key, f"{key} {sentinel} {end}"))
    records: list[tuple[int, Any]] = []
    for p, rows in per_part.items():
        for i in range(0, len(rows), lines_per_record):
            chunk = rows[i : i + lines_per_record]
            for rec in encode_lines([k for k, _ in chunk], [ln for _, ln in chunk], "bench", None):
                records.append((p, rec))
    return records, series * (ticks + 1), series * minutes, end, t0


async def fill_topic(bootstrap: str, name: str, partitions: int, records: list[Any]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, max_request_size=4_000_000
    )
    await producer.start()
    try:
        futures = []
        for p, rec in records:
            value, headers = _record_parts(rec)
            futures.append(await producer.send(name, value=value, headers=headers, partition=p))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def _record_parts(rec: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    if isinstance(rec, tuple):
        return rec[0], list(rec[1])
    return rec.value, list(rec.headers)


# -- contenders ------------------------------------------------------------------------------
def wait_done(
    influx: Influx,
    db: str,
    topic: Topic,
    proc: Proc,
    timeout_s: float,
    raw_rp: str = "raw",
    progress: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Until the raw and 1m tiers of ``db`` hold everything (or raise): the wall time and the
    process's CPU time at the first point visible in the raw tier and at completion, and the
    time until the first 1m window (every series, every field) was complete."""
    started = time.monotonic()
    first: tuple[float, float] | None = None
    first_window_s: float | None = None
    w0 = topic.first_window_ns
    first_window = f"WHERE time >= {w0} AND time < {w0 + 60 * S}"
    deadline = started + timeout_s
    raw = 0
    raw_done = None
    while time.monotonic() < deadline:
        if proc.proc.poll() is not None:
            raise RuntimeError(f"process exited early, see {proc.log}")
        polled = time.monotonic()
        complete = False
        try:
            if raw_done is None:
                raw = influx.count(db, raw_rp, "usage_user")
            if first_window_s is None and influx.tier_count(db, where=first_window) >= topic.series:
                first_window_s = time.monotonic() - started
            # one field while incomplete (cheap), every field to confirm
            if influx.count(db, "1m", "count_usage_user") >= topic.windows:
                complete = influx.tier_count(db) >= topic.windows
        except (httpx.HTTPError, KeyError, IndexError):
            pass
        if raw > 0 and first is None:
            first = (time.monotonic(), cpu_seconds(proc.pid))
        if raw == topic.points and raw_done is None:
            raw_done = time.monotonic()
        if raw_done is not None and complete:
            done, cpu = time.monotonic(), cpu_seconds(proc.pid)
            assert first is not None
            return {
                "steady_wall_s": done - first[0],
                "steady_cpu_s": cpu - first[1],
                "raw_done_s": raw_done - started,
                "first_window_s": first_window_s if first_window_s is not None else done - started,
            }
        if progress is not None:
            progress()
        # every 0.25 s, but never keep a loaded InfluxDB busy with our queries more than 1/3
        time.sleep(max(0.25, 2 * (time.monotonic() - polled)))
    raise TimeoutError(f"{db}: not complete after {timeout_s} s (see {proc.log})")


def finish(
    influx: Influx, db: str, proc: Proc, t_start: float, steady: dict[str, float]
) -> tuple[dict[str, Any], Rows]:
    """Figures of a completed run (read before the process stops) and its 1m rows."""
    wall = time.monotonic() - t_start
    cpu = cpu_seconds(proc.pid)
    rss = peak_rss_mib(proc.pid)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, **steady}, influx.rows(db)


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` from outside (its own CPU is not the worker's): collapsed
    stacks of every non-idle thread, 100 Hz, without pausing the worker (``--nonblocking``)."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        raise RuntimeError("--profile-worker needs py-spy (uv pip install py-spy)")
    argv = [exe, "record", "--pid", str(pid), "--rate", "100", "--nonblocking"]
    argv += ["--format", "raw", "--output", str(out)]
    for _ in range(50):  # the interpreter must be up before py-spy can attach
        spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            spy.wait(0.5)
        except subprocess.TimeoutExpired:
            return spy
        time.sleep(0.1)
    raise RuntimeError(f"py-spy could not attach to {pid}")


def stop_py_spy(spy: subprocess.Popen[bytes], out: Path) -> None:
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    spy.wait(60)
    total, by_self, by_incl = summarize_file(out, top=25)
    print(f"\npy-spy profile of the metricsflow worker: {total} samples, {out}")
    print(f"{'self %':>7} {'incl %':>7}  function (by self time)")
    for share in by_self:
        print(f"{share.self_pct:7.1f} {share.inclusive_pct:7.1f}  {share.function}")
    print(f"{'self %':>7} {'incl %':>7}  function (by inclusive time)")
    for share in by_incl:
        print(f"{share.self_pct:7.1f} {share.inclusive_pct:7.1f}  {share.function}")


def run_metricsflow(
    tmp: Path,
    kafka: KafkaServer,
    influx: Influx,
    topic: Topic,
    rep: int,
    timeout_s: float,
    profile: Path | None = None,
) -> tuple[dict[str, Any], Rows]:
    name = f"mf{rep}"
    influx.query('DROP DATABASE "bench"')  # the records name db "bench"; the worker creates it
    t_start = time.monotonic()
    proc, url = start_worker(tmp, name, kafka.bootstrap, topic.name, influx.url)
    spy = start_py_spy(proc.pid, profile) if profile is not None else None
    try:
        steady = wait_done(influx, "bench", topic, proc, timeout_s)
        result, rows = finish(influx, "bench", proc, t_start, steady)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        if spy is not None and profile is not None:
            stop_py_spy(spy, profile)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        proc.stop()
    result["samples_in"] = next(
        (
            float(ln.split()[-1])
            for ln in metrics.splitlines()
            if ln.startswith("metricsflow_worker_samples_in_total")
        ),
        0.0,
    )
    return result, rows


def run_quix(
    tmp: Path, kafka: KafkaServer, influx: Influx, topic: Topic, rep: int, timeout_s: float
) -> tuple[dict[str, Any], Rows]:
    db = f"quix{rep}"
    influx.create(db)
    t_start = time.monotonic()
    proc = spawn(
        [
            sys.executable,
            __file__,
            "--quix-app",
            kafka.bootstrap,
            topic.name,
            influx.url,
            db,
            str(tmp / f"quix-state-{rep}"),
        ],
        {},
        tmp / f"{db}.log",
    )
    try:
        steady = wait_done(influx, db, topic, proc, timeout_s, raw_rp="autogen")
        return finish(influx, db, proc, t_start, steady)
    finally:
        proc.stop()


def run_flink(
    tmp: Path,
    kafka: KafkaServer,
    influx: Influx,
    topic: Topic,
    rep: int,
    timeout_s: float,
    home: Path,
    backend: str,
) -> tuple[dict[str, Any], Rows]:
    """The Flink job (``bench/flink``) in a local MiniCluster: one JVM process."""
    db = f"flink_{backend}{rep}"
    influx.create_tiers(db)
    argv = flink_contender.command(
        home,
        bootstrap=kafka.bootstrap,
        topic=topic.name,
        group=f"flink-{db}",
        influx_url=influx.url,
        db=db,
        backend=backend,
        checkpoint_dir=tmp / f"{db}-checkpoints",
        bound_ms=BOUND_NS // 1_000_000,
    )
    t_start = time.monotonic()
    proc = spawn(argv, {}, tmp / f"{db}.log")
    try:
        steady = wait_done(influx, db, topic, proc, timeout_s)
        return finish(influx, db, proc, t_start, steady)
    finally:
        proc.stop()


# -- the Quix Streams application (runs in its own process) ----------------------------------
def quix_main(bootstrap: str, topic_name: str, influx_url: str, db: str, state_dir: str) -> None:
    import logging
    import queue

    from quixstreams import Application
    from quixstreams.dataframe.windows.aggregations import (
        Count,
        First,
        Last,
        Max,
        Mean,
        Min,
        Sum,
    )
    from quixstreams.sinks.base import BatchingSink, SinkBatch

    client = httpx.Client(timeout=60)

    def post(rp: str, body: bytes) -> None:
        for _ in range(10):
            r = client.post(
                f"{influx_url}/write",
                params={"db": db, "rp": rp, "precision": "n"},
                content=body,
            )
            if r.status_code == 204:
                return
            time.sleep(0.5)
        raise RuntimeError(f"InfluxDB write failed: {r.status_code} {r.text[:200]}")

    class RawWriter:
        """The raw tier from a writer thread (as metricsflow's sink does)."""

        def __init__(self) -> None:
            self.q: queue.Queue[bytes] = queue.Queue(maxsize=64)
            threading.Thread(target=self._run, daemon=True).start()

        def _run(self) -> None:
            while True:
                body = self.q.get()
                pending = [body]
                while not self.q.empty() and sum(map(len, pending)) < 4_000_000:
                    pending.append(self.q.get())
                post("autogen", b"\n".join(pending))

        def __call__(self, value: bytes) -> None:
            self.q.put(value)

    class TierSink(BatchingSink):
        def write(self, batch: SinkBatch) -> None:
            lines = []
            for item in batch:
                v = item.value
                sk, fk = item.key.split("\x00")
                lines.append(
                    f"{sk} count_{fk}={v['count']}i,sum_{fk}={v['sum']},min_{fk}={v['min']},"
                    f"max_{fk}={v['max']},mean_{fk}={v['mean']},first_{fk}={v['first']},"
                    f"last_{fk}={v['last']} {v['start'] * 1_000_000}"
                )
            if lines:
                post("1m", "\n".join(lines).encode())

    def explode(value: bytes) -> list[dict[str, Any]]:
        rows = []
        for line in value.decode().split("\n"):
            sk, fields, ts = line.split(" ")
            t_ms = int(ts) // 1_000_000
            for pair in fields.split(","):
                k, v = pair.split("=")
                rows.append({"k": f"{sk}\x00{k}", "t": t_ms, "v": float(v.rstrip("iu"))})
        return rows

    app = Application(
        broker_address=bootstrap,
        consumer_group=f"quix-{db}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
    )
    logging.getLogger("quixstreams").setLevel(logging.WARNING)
    topic = app.topic(topic_name, value_deserializer="bytes")
    sdf = app.dataframe(topic)
    sdf = sdf.update(RawWriter())
    sdf = sdf.apply(explode, expand=True)
    sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["t"])
    sdf = sdf.group_by(lambda value: value["k"], name="by-series-field")
    sdf = (
        sdf.tumbling_window(duration_ms=60_000, grace_ms=BOUND_NS // 1_000_000)
        .agg(
            count=Count(),
            sum=Sum("v"),
            min=Min("v"),
            max=Max("v"),
            mean=Mean("v"),
            first=First("v"),
            last=Last("v"),
        )
        .final(closing_strategy="key")  # per key: exact (a key's rows are in order)
    )
    sdf.sink(TierSink())
    app.run()


# -- latency ---------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def run_latency(
    tmp: Path, kafka: KafkaServer, influx: Influx, duration_s: float, rate_hz: float
) -> dict[str, Any]:
    from metricsflow.infra.gateway import GatewayConfig, GatewayServer

    topic = "latency"
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 4, 1)])
    finally:
        await admin.close()
    gateway = GatewayServer(
        GatewayConfig(
            data_dir=tmp / "gateway",
            port=free_port(),
            bootstrap_servers=kafka.bootstrap,
            topic=topic,
        )
    )
    if not gateway.start():
        raise RuntimeError(f"gateway did not start: {gateway.log_tail()}")
    proc, url = start_worker(tmp, "lat", kafka.bootstrap, topic, influx.url)
    db = "lat"
    try:
        async with httpx.AsyncClient(timeout=2) as health:
            for _ in range(120):
                try:
                    if (await health.get(f"{url}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.5)
        acked: dict[int, tuple[float, int]] = {}  # batch -> (wall time of the 204, ts_ns)
        raw_seen: dict[int, float] = {}
        m1_seen: dict[int, float] = {}
        stop = asyncio.Event()

        async def send() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                n = 0
                end = time.monotonic() + duration_s
                while time.monotonic() < end:
                    ts = time.time_ns()
                    # background load: 200 series (all partitions), plus the probe series b=n
                    body = "\n".join(
                        [f"load,h=h{i} v={i} {ts}" for i in range(200)] + [f"probe,b={n} v=1 {ts}"]
                    )
                    r = await client.post(f"{gateway.url}/write", params={"db": db}, content=body)
                    if r.status_code == 204:
                        acked[n] = (time.time(), ts)
                    n += 1
                    await asyncio.sleep(1 / rate_hz)
            # keep the watermark moving until the last probe's window closed (+ bound)
            last_end = (max(t for _, t in acked.values()) // (60 * S) + 1) * 60 * S
            async with httpx.AsyncClient(timeout=10) as client:
                deadline = time.monotonic() + 120
                while len(m1_seen) < len(acked) and time.monotonic() < deadline:
                    ts = time.time_ns()
                    body = "\n".join(f"load,h=h{i} v={i} {ts}" for i in range(200))
                    await client.post(f"{gateway.url}/write", params={"db": db}, content=body)
                    await asyncio.sleep(1 / rate_hz)
                    if ts > last_end + BOUND_NS + 30 * S:
                        break
            stop.set()

        async def poll() -> None:
            async with httpx.AsyncClient(timeout=10) as client:

                async def seen(rp: str, field: str) -> set[int]:
                    q = f'SELECT last("{field}") FROM "{db}"."{rp}"."probe" GROUP BY "b"'
                    r = await client.get(f"{influx.url}/query", params={"q": q, "db": db})
                    out: set[int] = set()
                    for res in r.json().get("results", []):
                        for s in res.get("series", []):
                            out.add(int(s["tags"]["b"]))
                    return out

                while not stop.is_set():
                    now = time.time()
                    for b in await seen("raw", "v"):
                        raw_seen.setdefault(b, now)
                    for b in await seen("1m", "count_v"):
                        m1_seen.setdefault(b, now)
                    await asyncio.sleep(0.05)

        await asyncio.gather(send(), poll())
    finally:
        proc.stop()
        gateway.stop()
    raw_lat = [raw_seen[b] - t for b, (t, _) in acked.items() if b in raw_seen]
    m1_lat = [m1_seen[b] - t for b, (t, _) in acked.items() if b in m1_seen]
    over = []  # visibility in 1m minus (window end + bound), wall clock vs event time
    for b, (_, ts) in acked.items():
        if b in m1_seen:
            due = ((ts // (60 * S)) + 1) * 60 * S + BOUND_NS
            over.append(m1_seen[b] - due / S)
    return {
        "batches": len(acked),
        "raw_visible": len(raw_lat),
        "m1_visible": len(m1_lat),
        "windows": len({ts // (60 * S) for _, ts in acked.values()}),
        "raw_p50_ms": percentile(raw_lat, 50) * 1e3,
        "raw_p99_ms": percentile(raw_lat, 99) * 1e3,
        "m1_p50_s": percentile(m1_lat, 50),
        "m1_p99_s": percentile(m1_lat, 99),
        "m1_after_due_p50_s": percentile(over, 50),
        "m1_after_due_p99_s": percentile(over, 99),
        "m1_after_due_max_s": max(over) if over else float("nan"),
    }


# -- main ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=5_000)
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--lines-per-record", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--latency-s", type=float, default=150.0)
    parser.add_argument("--latency-hz", type=float, default=4.0)
    parser.add_argument("--skip-quix", action="store_true")
    parser.add_argument("--skip-flink", action="store_true")
    parser.add_argument(
        "--flink-backends",
        default="hashmap,rocksdb",
        help="Flink state backends to run, comma-separated (hashmap, rocksdb)",
    )
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--timeout-s", type=float, default=2400.0)
    parser.add_argument("--quick", action="store_true", help="1,000 series, 5 minutes, 70 s")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--profile-worker",
        type=Path,
        help="py-spy the metricsflow worker of rep 0 into this collapsed-stacks file",
    )
    parser.add_argument("--keep-tmp", action="store_true", help="keep the logs and data dirs")
    args = parser.parse_args(argv)
    if args.quick:
        args.series, args.minutes, args.latency_s = 1_000, 5, 70.0
    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-"))
    kport, cport = free_ports(2)
    iport, rport = free_ports(2)
    kafka = KafkaServer(
        KafkaConfig(
            data_dir=tmp / "kafka", cache_dir=default_cache_dir(), port=kport, controller_port=cport
        )
    )
    influxd = InfluxDBServer(
        InfluxDBConfig(data_dir=tmp / "influxdb", port=iport, rpc_port=rport, log_level="warn")
    )
    rows: list[dict[str, Any]] = []
    latency: dict[str, Any] | None = None
    mismatches: list[str] = []
    backends = [b for b in args.flink_backends.split(",") if b] if not args.skip_flink else []
    for b in backends:
        if b not in ("hashmap", "rocksdb"):
            parser.error(f"--flink-backends: unknown backend {b!r} (hashmap, rocksdb)")
    flink_home = flink_contender.build(default_cache_dir()) if backends else None
    try:
        for server in (kafka, influxd):
            if not server.start():
                raise RuntimeError(f"{server.name} did not start: {server.log_tail()}")
        influx = Influx(influxd.url)
        print("building records ...", flush=True)
        records, points, windows, end, t0 = make_records(
            args.series, args.minutes, args.partitions, args.lines_per_record
        )
        topic = Topic("bench", args.partitions, points, windows, end, args.series, t0)
        asyncio.run(fill_topic(kafka.bootstrap, topic.name, args.partitions, records))
        print(
            f"topic {topic.name}: {len(records)} records, {points:,} points "
            f"({points * len(FIELDS):,} samples), {args.partitions} partitions",
            flush=True,
        )
        for rep in range(args.repeat):
            mf, reference = run_metricsflow(
                tmp,
                kafka,
                influx,
                topic,
                rep,
                args.timeout_s,
                args.profile_worker if rep == 0 else None,
            )
            mf.update(contender=MF, rep=rep)
            rows.append(mf)
            print(f"  metricsflow rep {rep}: {mf}", flush=True)
            if len(reference) != windows:
                mismatches.append(f"{MF} rep {rep}: {len(reference)} 1m rows, want {windows}")
            # Flink right after metricsflow (closest in time on a shared machine), Quix last
            others: list[tuple[str, Callable[[], tuple[dict[str, Any], Rows]]]] = []
            for backend in backends:
                assert flink_home is not None
                run_one = partial(
                    run_flink, tmp, kafka, influx, topic, rep, args.timeout_s, flink_home, backend
                )
                others.append((f"Flink {backend}", run_one))
            if not args.skip_quix:
                others.append(
                    (QUIX, partial(run_quix, tmp, kafka, influx, topic, rep, args.timeout_s))
                )
            for name, run in others:
                result, got = run()
                result.update(contender=name, rep=rep)
                rows.append(result)
                print(f"  {name:12} rep {rep}: {result}", flush=True)
                problems = compare_rows(reference, got, rel_tol=1e-9)
                mismatches += [f"{name} rep {rep} vs {MF}: {p}" for p in problems]
                print(
                    f"  {name:12} rep {rep}: 1m rows "
                    + ("SAME as metricsflow's" if not problems else f"DIFFER ({problems[0]})"),
                    flush=True,
                )
        if not args.skip_latency:
            latency = asyncio.run(run_latency(tmp, kafka, influx, args.latency_s, args.latency_hz))
    finally:
        influxd.stop()
        kafka.stop()
    for r in rows:
        r["points_per_s"] = round(points / r["wall_s"])
        r["points_per_cpu_s"] = round(points / r["cpu_s"])
        # from the first point visible in the raw tier: excludes start-up (imports, group join)
        # 0 = not measurable: the whole input arrived with the first write (tiny workloads)
        steady = r["steady_cpu_s"]
        r["steady_points_per_cpu_s"] = round(points / steady) if steady >= 0.1 else 0
        for k in (
            "wall_s",
            "cpu_s",
            "steady_wall_s",
            "steady_cpu_s",
            "raw_done_s",
            "first_window_s",
            "peak_rss_mib",
        ):
            r[k] = round(r[k], 2)
    if mismatches:
        print("\nCROSS-CHECK FAILED: the contenders' 1m rows differ; no figures reported:")
        for m in mismatches:
            print(f"  {m}")
        return 1
    print(f"\ncross-check: every contender wrote the same {windows:,} 1m rows (floats 1e-9)")
    summary: dict[str, Any] = {}
    by: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["contender"], []).append(r)
    for name, rs in by.items():
        summary[name] = {
            "points_per_cpu_s_median": statistics.median(r["points_per_cpu_s"] for r in rs),
            "points_per_s_median": statistics.median(r["points_per_s"] for r in rs),
            "steady_points_per_cpu_s_median": statistics.median(
                r["steady_points_per_cpu_s"] for r in rs
            ),
        }
    for name, rs in by.items():
        summary[name].update(
            wall_s_median=statistics.median(r["wall_s"] for r in rs),
            first_window_s_median=statistics.median(r["first_window_s"] for r in rs),
            peak_rss_mib_median=statistics.median(r["peak_rss_mib"] for r in rs),
        )
    mfr = summary.get(MF)
    ratios: dict[str, dict[str, Any]] = {}
    for name in by:
        if name == MF or mfr is None:
            continue
        other = summary[name]
        ratios[name] = {
            "per_cpu_s": round(
                mfr["points_per_cpu_s_median"] / other["points_per_cpu_s_median"], 2
            ),
            "steady_per_cpu_s": round(
                mfr["steady_points_per_cpu_s_median"]
                / max(other["steady_points_per_cpu_s_median"], 1),
                2,
            ),
            "wall": round(mfr["points_per_s_median"] / other["points_per_s_median"], 2),
            "per_rep_per_cpu_s": [
                round(a["points_per_cpu_s"] / b["points_per_cpu_s"], 2)
                for a, b in zip(by[MF], by[name], strict=False)
            ],
        }
    summary["metricsflow_vs"] = ratios
    if QUIX in ratios:  # the keys of earlier runs (docs/benchmarks.md, "Worker")
        summary["ratio_per_cpu_s"] = round(ratios[QUIX]["per_cpu_s"], 1)
        summary["ratio_wall"] = round(ratios[QUIX]["wall"], 1)
        summary["ratio_steady_per_cpu_s"] = round(ratios[QUIX]["steady_per_cpu_s"], 1)
        summary["per_rep_ratio_per_cpu_s"] = [
            round(x, 1) for x in ratios[QUIX]["per_rep_per_cpu_s"]
        ]
    print(
        f"\n{'contender':20} {'rep':>3} {'wall s':>7} {'CPU s':>7} {'points/s':>9} "
        f"{'points/CPU-s':>12} {'steady pts/CPU-s':>16} {'1st window s':>12} {'peak RSS MiB':>12}"
    )
    for r in rows:
        steady_text = f"{r['steady_points_per_cpu_s']:,}" if r["steady_points_per_cpu_s"] else "n/a"
        print(
            f"{r['contender']:20} {r['rep']:3} {r['wall_s']:7.2f} {r['cpu_s']:7.2f} "
            f"{r['points_per_s']:9,} {r['points_per_cpu_s']:12,} "
            f"{steady_text:>16} "
            f"{r['first_window_s']:12.2f} "
            f"{r['peak_rss_mib']:12.0f}"
        )
    print(
        "(CPU = user+sys of the contender's own process from /proc, all threads, the JVM's "
        "included; Kafka and InfluxDB are not counted)"
    )
    for name, ratio in ratios.items():
        print(
            f"metricsflow / {name}: {ratio['per_cpu_s']}x per CPU-second "
            f"({ratio['steady_per_cpu_s']}x without start-up), {ratio['wall']}x wall clock"
        )
    if latency is not None:
        print("\nlatency (gateway 204 -> visible):")
        for k, v in latency.items():
            print(f"  {k:22} {v:10.3f}" if isinstance(v, float) else f"  {k:22} {v:10}")
    report = {
        "benchmark": "worker",
        "command": "python bench/bench_worker.py "
        + " ".join(argv if argv is not None else sys.argv[1:]),
        "workload": {
            "series": args.series,
            "fields_per_point": len(FIELDS),
            "interval_s": INTERVAL_S,
            "minutes": args.minutes,
            "points": points,
            "samples": points * len(FIELDS),
            "sentinel_points": args.series,
            "partitions": args.partitions,
            "lines_per_record": args.lines_per_record,
            "max_out_of_orderness": BOUND,
            "expected_1m_rows_per_field": windows,
        },
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cores": os.cpu_count(),
        },
        "throughput": rows,
        "summary": summary,
        "latency": latency,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    if args.keep_tmp:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 7 and sys.argv[1] == "--quix-app":
        quix_main(*sys.argv[2:])
        raise SystemExit(0)
    raise SystemExit(main())
