"""Gateway ingest vs InfluxDB's own ``/write`` vs VictoriaMetrics, same payloads, same run.

Starts a real Kafka broker and a real influxd (``metricsflow.infra``), VictoriaMetrics
(Debian package ``victoria-metrics``, ``apt-get install``-ed here when missing; its own
``-storageDataPath``, loopback, stopped by PID), a topic, and the gateway (``python -m
gateway``, N uvicorn workers), then posts batches of line protocol with a few concurrent
clients. A 2xx from the gateway means every point was acknowledged by Kafka (``acks=all``); a
2xx from InfluxDB means it was written to its WAL; VictoriaMetrics answers once the points are
in its in-memory buffers. For each server: points/s, p50/p99 latency, and points per
CPU-second of the server's *own* processes (user+system time of its process group, read from
``/proc`` before and after the run; the Kafka broker the gateway writes to is *not* counted).
Prints a table and writes ``bench/results/gateway_ingest.json``.

    .venv/bin/python bench/bench_gateway_ingest.py [--batches 60] [--workers 1,2] [--rounds 3]

The contenders run side by side for the whole run and are measured in interleaved rounds (each
round posts every batch to each in turn); the table shows each one's median round. Also times
the line-protocol parsers on the same lines, in CPU time of this process (ours compiled and in
Python; ``line-protocol-parser`` when importable) to back the parser choice in
docs/ingestion.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from metricsflow.infra.gateway import GatewayConfig, GatewayServer
from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer, install_debian_packages
from metricsflow.infra.kafka import KafkaConfig, KafkaServer
from metricsflow.infra.process import free_ports, read_pid_file
from metricsflow.infra.settings import default_cache_dir
from metricsflow.model.columnar import decode_columnar
from metricsflow.model.lineprotocol import NATIVE, canonicalize, canonicalize_python, parse

BATCH_LINES = 5_000
RESULTS = Path(__file__).parent / "results" / "gateway_ingest.json"


def make_batches(count: int, hosts: int = 1_000) -> list[bytes]:
    """Telegraf-like ``cpu`` points: 3 tags (sorted), 4 float fields, ns timestamps."""
    # recent timestamps: VictoriaMetrics drops samples outside its retention period
    base = (time.time_ns() // 10**9 - 86_400) * 10**9
    batches = []
    for b in range(count):
        lines = []
        for i in range(BATCH_LINES):
            n = b * BATCH_LINES + i
            h = n % hosts
            lines.append(
                f"cpu,cpu=cpu{h % 4},host=host{h},region=r{h % 8} "
                f"usage_idle={90 + (n % 97) / 10},usage_iowait={(n % 13) / 10},"
                f"usage_system={(n % 31) / 10},usage_user={(n % 53) / 10} "
                f"{base + (n // hosts) * 10_000_000_000}"
            )
        batches.append("\n".join(lines).encode())
    return batches


async def drive(url: str, batches: list[bytes], concurrency: int) -> dict[str, Any]:
    """Post every batch (``concurrency`` in flight); points/s and latency percentiles."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for b in batches:
        queue.put_nowait(b)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await client.post(url, content=batches[0])  # warm-up (connections, metadata)

        async def worker() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                t0 = time.perf_counter()
                r = await client.post(url, content=body)
                latencies.append(time.perf_counter() - t0)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ok = sum(c for s, c in statuses.items() if 200 <= s < 300)
    q = statistics.quantiles(latencies, n=100)
    return {
        "points_per_s": round(ok * BATCH_LINES / elapsed),
        "p50_ms": round(q[49] * 1000, 1),
        "p99_ms": round(q[98] * 1000, 1),
        "requests": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "seconds": round(elapsed, 2),
    }


_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_s(pgid: int) -> float:
    """User+system CPU seconds of every live process in process group ``pgid`` (/proc)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:  # fields: state ppid pgrp ... utime(11) stime(12)
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def server_pgid(data_dir: Path, name: str) -> int:
    record = read_pid_file(data_dir / f"{name}.pid")
    assert record is not None, f"no PID file for {name} in {data_dir}"
    return os.getpgid(record.pid)


class VictoriaMetrics:
    """``victoria-metrics`` on loopback with its own storage directory, stopped by PID."""

    def __init__(self, data_dir: Path, port: int) -> None:
        install_debian_packages({"victoria-metrics": "victoria-metrics"})
        binary = shutil.which("victoria-metrics")
        assert binary is not None
        data_dir.mkdir(parents=True, exist_ok=True)
        self.url = f"http://127.0.0.1:{port}"
        self._log = (data_dir / "victoria-metrics.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"-httpListenAddr=127.0.0.1:{port}",
                f"-storageDataPath={data_dir / 'data'}",
                "-retentionPeriod=10y",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("victoria-metrics did not become healthy")

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def measured(url: str, batches: list[bytes], concurrency: int, pgid: int) -> dict[str, Any]:
    cpu0 = group_cpu_s(pgid)
    res = asyncio.run(drive(url, batches, concurrency))
    cpu = group_cpu_s(pgid) - cpu0
    res["server_cpu_s"] = round(cpu, 2)
    ok = sum(c for s, c in res["statuses"].items() if s.startswith("2"))
    res["points_per_cpu_s"] = round(ok * BATCH_LINES / cpu) if cpu > 0 else None
    return res


def parser_bench(batch: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    text = batch.decode()

    def rate(fn: Any) -> float:
        best = min(_timed(fn) for _ in range(3))
        return round(BATCH_LINES / best)

    out["metricsflow_canonicalize_lines_per_s"] = rate(
        lambda: canonicalize(batch, default_time_ns=time.time_ns())
    )
    out["metricsflow_canonicalize_python_lines_per_s"] = rate(
        lambda: canonicalize_python(batch, default_time_ns=time.time_ns())
    )
    out["metricsflow_exact_parse_lines_per_s"] = rate(lambda: parse(batch, default_time_ns=0))
    out["metricsflow_decode_columnar_points_per_s"] = rate(lambda: decode_columnar(batch))
    try:
        import line_protocol_parser as lpp  # type: ignore[import-not-found]
    except ImportError:
        return out
    lines = text.split("\n")
    out["line_protocol_parser_2_0_1_lines_per_s"] = rate(lambda: [lpp.parse_line(x) for x in lines])
    return out


def _timed(fn: Any) -> float:
    """CPU seconds of this process (the machine is shared: wall time would count others)."""
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(2)


def median_run(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median points/s, with every round's points/s and points/CPU-s."""
    ordered = sorted(rounds, key=lambda r: r["points_per_s"])
    res = dict(ordered[(len(ordered) - 1) // 2])
    res["rounds_points_per_s"] = [r["points_per_s"] for r in rounds]
    res["rounds_points_per_cpu_s"] = [r["points_per_cpu_s"] for r in rounds]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=60, help="batches of 5,000 lines per run")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workers", default="1", help="gateway worker counts to measure")
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="rounds, each posting the batches to every contender in turn (median reported)",
    )
    args = ap.parse_args()
    batches = make_batches(args.batches)
    results: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "native_parser": NATIVE,
        "batch_lines": BATCH_LINES,
        "batches": args.batches,
        "concurrency": args.concurrency,
        "partitions": args.partitions,
        "rounds": args.rounds,
        "parsers": parser_bench(batches[0]),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp, contextlib.ExitStack() as stack:
        root = Path(tmp)
        kport, cport, iport, rport, vport = free_ports(5)
        kafka = KafkaServer(
            KafkaConfig(
                data_dir=root / "kafka",
                cache_dir=default_cache_dir(),
                port=kport,
                controller_port=cport,
            )
        )
        influx = InfluxDBServer(
            InfluxDBConfig(data_dir=root / "influx", port=iport, rpc_port=rport)
        )
        kafka.start()
        stack.callback(kafka.stop)
        influx.start()
        stack.callback(influx.stop)
        httpx.post(f"{influx.url}/query", params={"q": "CREATE DATABASE bench"}).raise_for_status()
        # every contender is up for the whole run; the rounds interleave them, so a change in
        # the machine's load (it is shared) hits all of them alike
        targets: dict[str, tuple[str, int]] = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            topic = f"bench-{workers}"
            asyncio.run(create_topic(kafka.bootstrap, topic, args.partitions))
            (gport,) = free_ports(1)
            gw = GatewayServer(
                GatewayConfig(
                    data_dir=root / f"gw{workers}",
                    port=gport,
                    bootstrap_servers=kafka.bootstrap,
                    topic=topic,
                    workers=workers,
                )
            )
            gw.start()
            stack.callback(gw.stop)
            targets[f"gateway_{workers}w"] = (
                f"{gw.url}/write?db=bench",
                server_pgid(root / f"gw{workers}", gw.name),
            )
        targets["influxdb_1.6.7"] = (
            f"{influx.url}/write?db=bench",
            server_pgid(root / "influx", influx.name),
        )
        vm = VictoriaMetrics(root / "victoria-metrics", vport)
        stack.callback(vm.stop)
        targets["victoriametrics"] = (f"{vm.url}/write?db=bench", vm.pgid)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for _ in range(args.rounds):
            for name, (url, pgid) in targets.items():
                rounds[name].append(measured(url, batches, args.concurrency, pgid))
        for name, runs in rounds.items():
            results["runs"][name] = median_run(runs)
    influx_rate = results["runs"]["influxdb_1.6.7"]["points_per_s"]
    vm_per_cpu = results["runs"]["victoriametrics"]["points_per_cpu_s"]
    for res in results["runs"].values():
        res["ratio_vs_influxdb"] = round(res["points_per_s"] / influx_rate, 2)
        per_cpu = res["points_per_cpu_s"]
        res["per_cpu_ratio_vs_victoriametrics"] = (
            round(per_cpu / vm_per_cpu, 2) if per_cpu and vm_per_cpu else None
        )
    print(
        f"\nGateway ingest: {args.batches} batches x {BATCH_LINES} lines, "
        f"{args.concurrency} concurrent clients, {args.partitions} partitions, median of "
        f"{args.rounds} interleaved rounds (server CPU: its own processes; the Kafka broker "
        f"is not counted); compiled parser: {NATIVE}"
    )
    print(
        f"{'target':<18}{'points/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'vs influx':>11}"
        f"{'pts/cpu-s':>12}{'vs VM/cpu':>11}  statuses"
    )
    for name, res in results["runs"].items():
        print(
            f"{name:<18}{res['points_per_s']:>12,}{res['p50_ms']:>10}{res['p99_ms']:>10}"
            f"{res['ratio_vs_influxdb']:>11}{res['points_per_cpu_s'] or 0:>12,}"
            f"{res['per_cpu_ratio_vs_victoriametrics'] or 0:>11}  {res['statuses']}"
        )
    print("\nparsers (one batch, best of 3):")
    for name, value in results["parsers"].items():
        print(f"  {name:<45}{value:>12,}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
