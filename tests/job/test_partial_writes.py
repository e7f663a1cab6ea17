"""Partial writes end to end: a Telegraf batch with 3 bad lines of 1,000 -> 997 points in the
raw tier, the answer names the 3 lines; strict mode writes nothing; the real clients.

Requests are shaped exactly as Telegraf's outputs send them (plugins/outputs/influxdb and
influxdb_v2: ``POST /write?db=<db>&consistency=any`` or ``/api/v2/write?bucket=&org=``,
``Content-Type: text/plain; charset=utf-8``, ``User-Agent: Telegraf/<version>``,
``Content-Encoding: gzip`` (the default), one metric per line ending in ``\\n``, sorted tags,
ns timestamps). Telegraf drops a batch answered with a 4xx, so what reaches the raw tier is
exactly what the gateway wrote before answering.
"""

from __future__ import annotations

import gzip
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.rest import ApiException

from metricsflow.infra.process import free_port
from tests.job.stack import HTTP, Stack, spawn, stack_factory, wait_http

__all__ = ["stack_factory"]

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BAD = {17: "cpu,host=h1 usage_idle=abc {ts}", 500: "cpu,host=h2 usage_idle=1 12x", 998: "cpu,host"}


def telegraf_batch(measurement: str, now_ns: int) -> tuple[bytes, list[int]]:
    """1,000 lines as Telegraf serializes them, lines 17, 500 and 998 (1-based) broken."""
    lines = []
    for n in range(1, 1_001):
        ts = now_ns - (1_000 - n) * 1_000_000
        if n in BAD:
            lines.append(BAD[n].format(ts=ts))
        else:
            lines.append(
                f"{measurement},cpu=cpu{n % 4},host=h{n % 7} usage_idle={n / 10!r},"
                f"usage_user={n % 13}i {ts}"
            )
    return ("\n".join(lines) + "\n").encode(), sorted(BAD)


def telegraf_headers(v2: bool = False) -> dict[str, str]:
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        "User-Agent": "Telegraf/1.30.0",
        "Content-Encoding": "gzip",
    }
    if v2:
        headers["Authorization"] = "Token telegraf-token"
    return headers


def raw_count(stack: Stack, measurement: str) -> int:
    """Points of ``measurement`` in the raw tier (0 before the worker created the tier)."""
    r = HTTP.post(
        f"{stack.influx.url}/query",
        data={"db": stack.db, "q": f'SELECT count(usage_idle) FROM "raw"."{measurement}"'},
        timeout=60,
    )
    r.raise_for_status()
    result = r.json()["results"][0]
    if "not found" in result.get("error", ""):
        return 0
    assert "error" not in result, result
    series = result.get("series", [])
    return int(series[0]["values"][0][1]) if series else 0


def wait_raw_count(stack: Stack, measurement: str, expected: int, timeout_s: float = 120) -> int:
    deadline = time.monotonic() + timeout_s
    count = raw_count(stack, measurement)
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        count = raw_count(stack, measurement)
    return count


def named_lines(message: str) -> list[int]:
    return [int(n) for n in re.findall(r"\(line (\d+), column \d+\)", message)]


async def test_a_telegraf_batch_with_three_bad_lines_lands_997_points_and_names_the_three(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    stack.worker("w1")
    now = time.time_ns()
    body, bad = telegraf_batch("tv1", now)
    client = httpx.AsyncClient(timeout=30)
    r = await client.post(
        f"{stack.gateway.url}/write",
        params={"db": stack.db, "consistency": "any"},
        content=gzip.compress(body),
        headers=telegraf_headers(),
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith("partial write: unable to parse 'cpu,host=h1 usage_idle=abc ")
    assert error.endswith(" dropped=3")
    assert named_lines(error) == bad
    # outputs.influxdb_v2: same batch, v2 shape of the answer
    body2, _ = telegraf_batch("tv2", now)
    r2 = await client.post(
        f"{stack.gateway.url}/api/v2/write",
        params={"bucket": stack.db, "org": "acme"},
        content=gzip.compress(body2),
        headers=telegraf_headers(v2=True),
    )
    assert r2.status_code == 400
    assert r2.json()["code"] == "invalid"
    assert r2.json()["message"].startswith("partial write: ")
    assert named_lines(r2.json()["message"]) == bad
    assert wait_raw_count(stack, "tv1", 997) == 997
    assert wait_raw_count(stack, "tv2", 997) == 997

    # strict mode: a second gateway on the same topic, GATEWAY_PARTIAL_WRITES=false
    port = free_port()
    strict = spawn(
        [
            "gateway",
            "--port",
            str(port),
            "--bootstrap-servers",
            stack.kafka.bootstrap,
            "--topic",
            stack.topic,
        ],
        {"GATEWAY_PARTIAL_WRITES": "false"},
        stack.tmp / "gateway-strict.log",
        f"http://127.0.0.1:{port}",
    )
    stack.procs.append(strict)
    wait_http(f"{strict.url}/health", proc=strict.proc)
    body3, _ = telegraf_batch("tstrict", now)
    r3 = await client.post(
        f"{strict.url}/write",
        params={"db": stack.db},
        content=gzip.compress(body3),
        headers=telegraf_headers(),
    )
    assert r3.status_code == 400
    assert not r3.json()["error"].startswith("partial write")
    assert named_lines(r3.json()["error"]) == bad
    # a marker written after it through the same gateway: once it is in the raw tier, the
    # refused batch would be too, had anything of it been produced (same partitions, in order)
    marker = await client.post(
        f"{strict.url}/write",
        params={"db": stack.db},
        content=b"".join(
            f"tstrict_marker,cpu=cpu{c},host=h{h} usage_idle=1 {now}\n".encode()
            for c in range(4)
            for h in range(7)
        ),
    )
    await client.aclose()
    assert marker.status_code == 204
    assert wait_raw_count(stack, "tstrict_marker", 28) == 28
    assert raw_count(stack, "tstrict") == 0


async def test_the_real_clients_get_a_partial_write_and_their_valid_points_land(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    stack.worker("w1")
    now = time.time_ns()
    good = [f"cli_v2,host=h{i} usage_idle={i}.5 {now + i}" for i in range(9)]
    with InfluxDBClient(url=stack.gateway.url, token="t", org="acme") as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)
        with pytest.raises(ApiException) as info:
            write_api.write(
                bucket=stack.db, record=[*good[:4], "cli_v2,host=x usage_idle=", *good[4:]]
            )
    assert info.value.status == 400
    assert "partial write: unable to parse 'cli_v2,host=x usage_idle='" in str(info.value.body)
    assert "(line 5, column " in str(info.value.body)
    # the influx 1.x CLI: a bad INSERT is refused with the reason, a good one lands
    port = stack.gateway.url.rsplit(":", 1)[1]
    base = ["influx", "-host", "127.0.0.1", "-port", port, "-database", stack.db, "-execute"]
    bad = subprocess.run(  # noqa: ASYNC221 - the CLI is the client under test
        [*base, "INSERT cli_v1,host=a usage_idle=1 12x"], capture_output=True, text=True, timeout=30
    )
    assert "bad timestamp" in bad.stdout + bad.stderr
    ok = subprocess.run(  # noqa: ASYNC221
        [*base, f"INSERT cli_v1,host=a usage_idle=2 {now}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert wait_raw_count(stack, "cli_v2", 9) == 9
    assert wait_raw_count(stack, "cli_v1", 1) == 1
