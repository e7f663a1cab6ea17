"""Backfill into a live stream: how long until every tier is exact, and how many queries.

Starts a real Kafka broker and a real influxd (``metricsflow.infra``, free loopback ports),
the gateway (``GatewayServer``) and one ``metricsflow worker`` process with the default
settings (bound 10 s, idle timeout 30 s, allowed lateness 1 m, tiers 1m -> 1h -> 1d). A live
stream (``--live`` series, one point per second at the wall clock) runs the whole time. Then
an agent's buffer arrives: ``--series`` series x one hour of 10 s points, for the hour that
ended an hour ago, posted as fast as the gateway takes it. Those points are beyond the allowed
lateness, so the worker corrects their windows from InfluxDB (docs/windows.md,
"Corrections").

Measured: the time from the last acknowledged backfill request until the backfilled 1m and 1h
tier rows equal InfluxDB's own ``GROUP BY time(<tier>), *`` over the raw tier (polled every
2 s; every row, count/min/max/first/last exact, sum and mean to 1e-9), and the worker's
counters: ``correction_queries_total`` (InfluxDB queries used by corrections),
``tier_corrections_total``, ``correction_lag_max_seconds``.

    .venv/bin/python bench/bench_backfill.py            # writes bench/results/backfill.json
    .venv/bin/python bench/bench_backfill.py --quick    # 100 series
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from bench_worker import Influx, start_worker

from metricsflow.infra.influxdb import InfluxDBConfig, InfluxDBServer
from metricsflow.infra.kafka import KafkaConfig, KafkaServer
from metricsflow.infra.process import free_port, free_ports
from metricsflow.infra.settings import default_cache_dir

S = 1_000_000_000
HOUR = 3600 * S
RESULTS = Path(__file__).parent / "results" / "backfill.json"
DB = "backfill"


def metrics(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def post(client: httpx.Client, url: str, body: str) -> None:
    while True:
        try:
            r = client.post(f"{url}/write", params={"db": DB}, content=body.encode())
            if r.status_code == 204:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def mismatches(influx: Influx, lo: int, hi: int) -> int:
    """Backfilled rows of the 1m and 1h tiers that differ from GROUP BY over raw."""
    bad = 0
    for tier in ("1m", "1h"):
        want: dict[tuple[str, int], list[Any]] = {}
        for s in influx.query(
            f'SELECT count(v), sum(v), min(v), max(v), first(v), last(v) FROM "raw"."fill" '
            f"WHERE time >= {lo} AND time < {hi} GROUP BY time({tier}), * fill(none)",
            DB,
        ):
            for row in s["values"]:
                want[(s["tags"]["host"], row[0])] = row[1:]
        got: dict[tuple[str, int], list[Any]] = {}
        for s in influx.query(
            f'SELECT count_v, sum_v, min_v, max_v, first_v, last_v, mean_v FROM "{tier}"."fill" '
            f"WHERE time >= {lo} AND time < {hi} GROUP BY *",
            DB,
        ):
            for row in s["values"]:
                got[(s["tags"]["host"], row[0])] = row[1:]
        for key in set(want) | set(got):
            w, g = want.get(key), got.get(key)
            if w is None or g is None or None in g:
                bad += 1
                continue
            exact = [w[0], w[2], w[3], w[4], w[5]] == [g[0], g[2], g[3], g[4], g[5]]
            close = math.isclose(w[1], g[1], rel_tol=1e-9, abs_tol=1e-9) and math.isclose(
                w[1] / w[0], g[6], rel_tol=1e-9, abs_tol=1e-9
            )
            bad += not (exact and close)
    return bad


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", type=int, default=1_000)
    parser.add_argument("--live", type=int, default=200)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.series = 100
    from metricsflow.infra.gateway import GatewayConfig, GatewayServer

    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
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
    gateway: Any = None
    worker: Any = None
    stop = threading.Event()
    try:
        for server in (kafka, influxd):
            if not server.start():
                raise RuntimeError(f"{server.name} did not start: {server.log_tail()}")
        import asyncio

        from aiokafka.admin import AIOKafkaAdminClient, NewTopic

        async def create_topic() -> None:
            admin = AIOKafkaAdminClient(bootstrap_servers=kafka.bootstrap)
            await admin.start()
            try:
                await admin.create_topics([NewTopic("metrics", args.partitions, 1)])
            finally:
                await admin.close()

        asyncio.run(create_topic())
        gateway = GatewayServer(
            GatewayConfig(
                data_dir=tmp / "gateway",
                port=free_port(),
                bootstrap_servers=kafka.bootstrap,
                topic="metrics",
            )
        )
        if not gateway.start():
            raise RuntimeError(f"gateway did not start: {gateway.log_tail()}")
        worker, url = start_worker(
            tmp,
            "w1",
            kafka.bootstrap,
            "metrics",
            influxd.url,
            METRICSFLOW_TIERS="raw:7d,1m:30d,1h:365d,1d:INF",
        )
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        influx = Influx(influxd.url)

        def live() -> None:
            with httpx.Client(timeout=10) as client:
                while not stop.is_set():
                    ts = time.time_ns()
                    body = "\n".join(f"live,host=l{i} v={i} {ts}" for i in range(args.live))
                    post(client, gateway.url, body)
                    stop.wait(1.0)

        thread = threading.Thread(target=live, daemon=True)
        thread.start()
        time.sleep(15)  # the live stream is established: partitions' watermarks at "now"
        now = time.time_ns()
        lo = (now - 2 * HOUR) - (now - 2 * HOUR) % HOUR
        hi = lo + HOUR  # ended an hour ago (or more)
        rng = random.Random(1)
        lines = [
            f"fill,host=s{i:04d} v={rng.uniform(0, 100)!r} {t}"
            for t in range(lo, hi, 10 * S)
            for i in range(args.series)
        ]
        sent_at = time.monotonic()
        with httpx.Client(timeout=30) as client:
            for k in range(0, len(lines), 5_000):
                post(client, gateway.url, "\n".join(lines[k : k + 5_000]))
        acked = time.monotonic()
        print(f"backfill: {len(lines):,} points posted in {acked - sent_at:.1f} s", flush=True)
        exact_after = None
        polls = 0
        deadline = acked + args.timeout_s
        while time.monotonic() < deadline:
            polls += 1
            bad = mismatches(influx, lo, hi)
            if bad == 0:
                exact_after = time.monotonic() - acked
                break
            time.sleep(2)
        m = metrics(url)
        result = {
            "series": args.series,
            "points": len(lines),
            "live_series": args.live,
            "partitions": args.partitions,
            "post_s": round(acked - sent_at, 2),
            "exact_after_s": None if exact_after is None else round(exact_after, 1),
            "correction_queries": m.get("metricsflow_worker_correction_queries_total"),
            "tier_corrections_1m": m.get('metricsflow_worker_tier_corrections_total{tier="1m"}'),
            "tier_corrections_1h": m.get('metricsflow_worker_tier_corrections_total{tier="1h"}'),
            "correction_lag_max_s": m.get("metricsflow_worker_correction_lag_max_seconds"),
            "late_points": m.get("metricsflow_worker_late_points_total"),
            "python": platform.python_version(),
            "machine": platform.machine(),
        }
        print(json.dumps(result, indent=2), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        return 0 if exact_after is not None else 1
    finally:
        stop.set()
        if worker is not None:
            worker.stop()
        if gateway is not None:
            gateway.stop()
        influxd.stop()
        kafka.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
