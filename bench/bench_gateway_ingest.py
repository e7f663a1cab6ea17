"""Gateway ingest vs InfluxDB's own ``/write``, side by side, on the same payloads.

Starts a real Kafka broker and a real influxd (``metricsflow.infra``), a topic, and the gateway
(``python -m gateway``, N uvicorn workers), then posts batches of line protocol with a few
concurrent clients. A 2xx from the gateway means every point was acknowledged by Kafka
(``acks=all``); a 2xx from InfluxDB means it was written to its WAL. Prints a table and writes
``bench/results/gateway_ingest.json``.

    .venv/bin/python bench/bench_gateway_ingest.py [--batches 60] [--workers 1,2]

Also times the line-protocol parsers on the same lines (ours; ``line-protocol-parser`` when
importable) to back the parser choice in docs/ingestion.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from metricsflow.infra.gateway import GatewayConfig, GatewayServer
from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer
from metricsflow.infra.kafka import KafkaConfig, KafkaServer
from metricsflow.infra.process import free_ports
from metricsflow.infra.settings import default_cache_dir
from metricsflow.model.columnar import decode_columnar
from metricsflow.model.lineprotocol import canonicalize, parse

BATCH_LINES = 5_000
RESULTS = Path(__file__).parent / "results" / "gateway_ingest.json"


def make_batches(count: int, hosts: int = 1_000) -> list[bytes]:
    """Telegraf-like ``cpu`` points: 3 tags (sorted), 4 float fields, ns timestamps."""
    base = 1_700_000_000_000_000_000
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


def parser_bench(batch: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    text = batch.decode()

    def rate(fn: Any) -> float:
        best = min(_timed(fn) for _ in range(3))
        return round(BATCH_LINES / best)

    out["metricsflow_canonicalize_lines_per_s"] = rate(
        lambda: canonicalize(batch, default_time_ns=0)
    )
    out["metricsflow_exact_parse_lines_per_s"] = rate(lambda: parse(batch))
    out["metricsflow_decode_columnar_points_per_s"] = rate(lambda: decode_columnar(batch))
    try:
        import line_protocol_parser as lpp  # type: ignore[import-not-found]
    except ImportError:
        return out
    lines = text.split("\n")
    out["line_protocol_parser_2_0_1_lines_per_s"] = rate(lambda: [lpp.parse_line(x) for x in lines])
    return out


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


async def create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()
    await asyncio.sleep(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batches", type=int, default=60, help="batches of 5,000 lines per run")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--workers", default="1,2", help="gateway worker counts to measure")
    args = ap.parse_args()
    batches = make_batches(args.batches)
    results: dict[str, Any] = {
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "batch_lines": BATCH_LINES,
        "batches": args.batches,
        "concurrency": args.concurrency,
        "partitions": args.partitions,
        "parsers": parser_bench(batches[0]),
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="mf-bench-") as tmp:
        root = Path(tmp)
        kport, cport, iport, rport = free_ports(4)
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
        influx.start()
        try:
            httpx.post(
                f"{influx.url}/query", params={"q": "CREATE DATABASE bench"}
            ).raise_for_status()
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
                try:
                    res = asyncio.run(drive(f"{gw.url}/write?db=bench", batches, args.concurrency))
                finally:
                    gw.stop()
                results["runs"][f"gateway_{workers}w"] = res
            results["runs"]["influxdb_1.6.7"] = asyncio.run(
                drive(f"{influx.url}/write?db=bench", batches, args.concurrency)
            )
        finally:
            influx.stop()
            kafka.stop()
    influx_rate = results["runs"]["influxdb_1.6.7"]["points_per_s"]
    for res in results["runs"].values():
        res["ratio_vs_influxdb"] = round(res["points_per_s"] / influx_rate, 2)
    print(
        f"\nGateway ingest: {args.batches} batches x {BATCH_LINES} lines, "
        f"{args.concurrency} concurrent clients, {args.partitions} partitions"
    )
    print(f"{'target':<18}{'points/s':>12}{'p50 ms':>10}{'p99 ms':>10}{'vs influx':>11}  statuses")
    for name, res in results["runs"].items():
        print(
            f"{name:<18}{res['points_per_s']:>12,}{res['p50_ms']:>10}{res['p99_ms']:>10}"
            f"{res['ratio_vs_influxdb']:>11}  {res['statuses']}"
        )
    print("\nparsers (one batch, best of 3):")
    for name, value in results["parsers"].items():
        print(f"  {name:<45}{value:>12,}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
