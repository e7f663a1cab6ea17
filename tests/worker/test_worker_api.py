"""The worker's CLI and REST API against a running worker (real Kafka, InfluxDB, gateway).

``metricsflow checkpoint list``, ``metricsflow savepoint trigger|list`` and
``GET /state/{db}/{series_key}`` (queryable state), each run as an operator would: the CLI as
a subprocess against the worker's URL.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.job.stack import (  # the same stack as the end-to-end tests
    HTTP,
    METRICSFLOW,
    TIERS,
    Sender,
    Stack,
    reference,
    stack_factory,
)

__all__ = ["stack_factory"]  # the fixture, re-exported for this module's tests

# ruff: noqa: ASYNC221, ASYNC251 - the tests drive subprocesses synchronously on purpose
pytestmark = [pytest.mark.integration, pytest.mark.slow]


def cli(*args: str) -> str:
    done = subprocess.run([*METRICSFLOW, *args], capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


async def test_the_cli_lists_checkpoints_and_triggers_and_lists_savepoints_of_a_running_worker(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    worker = stack.worker("w1")
    Sender(stack.gateway.url, stack.db, series=5).run_for(2)

    table = cli("checkpoint", "list", "--url", worker.url).splitlines()
    assert table[0].split("\t") == [
        "id",
        "status",
        "savepoint",
        "trigger_ns",
        "duration_ms",
        "size",
        "alignment_ms",
    ]
    rows = [line.split("\t") for line in table[1:]]
    completed = [r for r in rows if r[1] == "completed"]
    assert completed, table
    assert all(int(r[0]) > 0 and int(r[3]) > 0 and int(r[5]) > 0 for r in completed)
    ids = [int(r[0]) for r in rows]
    assert ids == sorted(ids, reverse=True)  # newest first
    history = json.loads(cli("checkpoint", "list", "--url", worker.url, "--json"))
    assert history["counts"]["completed"] >= len(completed)

    location = cli("savepoint", "trigger", "--url", worker.url).strip()
    assert Path(location).parent == stack.tmp / "worker" / "savepoints"
    assert (Path(location) / "_metadata").is_file()
    listed = cli("savepoint", "list", "--url", worker.url).splitlines()
    assert f"{location}\tcomplete" in listed
    offline = cli("savepoint", "list", "--dir", str(Path(location).parent)).splitlines()
    assert offline == listed
    assert worker.proc.poll() is None  # a savepoint does not stop the job
    history = json.loads(cli("checkpoint", "list", "--url", worker.url, "--json"))
    assert any(h["is_savepoint"] and h["status"] == "completed" for h in history["history"])

    failed = subprocess.run(
        [*METRICSFLOW, "checkpoint", "list", "--url", "http://127.0.0.1:9"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode != 0


async def test_queryable_state_returns_the_in_progress_aggregates_of_one_series(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    worker = stack.worker("w1")
    sender = Sender(stack.gateway.url, stack.db, series=3, seed=21)
    sender.run_for(2)
    series = "m,host=h001"
    url = f"{worker.url}/state/{stack.db}/{series}"
    deadline = time.monotonic() + 30
    while True:  # until the worker has read everything the gateway acknowledged
        body = HTTP.get(url, timeout=10).json()
        problems = []
        for tier, window in TIERS.items():
            expected = {
                ts: agg for (s, ts), agg in reference(sender.acked, window).items() if s == series
            }
            rows = body["tiers"][tier]
            if not rows:  # a coarse tier gets rows once the finer tier's windows fire
                problems.append((tier, "no rows yet", None))
            for row in rows:  # every window still held in state, open or within lateness
                assert row["field"] == "v"
                want = expected.get(row["window_start_ns"])
                got = {k: row[k] for k in ("count", "min", "max", "first", "last")}
                if (
                    want is None
                    or got != {k: want[k] for k in got}
                    or abs(row["sum"] - want["sum"]) > 1e-9 * max(1.0, abs(want["sum"]))
                ):
                    problems.append((tier, row, want))
        if not problems:
            break
        assert time.monotonic() < deadline, problems[:3]
        time.sleep(0.5)
    assert body["db"] == stack.db
    assert body["series_key"] == series
    assert body["key_group"] in (0, 1)
    other_db = HTTP.get(f"{worker.url}/state/another_db/{series}", timeout=10).json()
    assert all(rows == [] for rows in other_db["tiers"].values())


async def test_queryable_state_is_404_on_a_worker_that_does_not_own_the_series_partition(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    w1 = stack.worker("w1")
    w2 = stack.worker("w2")
    deadline = time.monotonic() + 60
    while True:  # until the group settled on one partition each
        owned = [
            HTTP.get(f"{w.url}/jobs/overview").json()["jobs"][0]["key_groups"] for w in (w1, w2)
        ]
        if sorted(kg for kgs in owned for kg in kgs) == [0, 1] and all(owned):
            break
        assert time.monotonic() < deadline, owned
        time.sleep(0.5)
    series = "m,host=h000"
    answers = [HTTP.get(f"{w.url}/state/{stack.db}/{series}", timeout=10) for w in (w1, w2)]
    assert sorted(a.status_code for a in answers) == [200, 404]
    owner = next(a for a in answers if a.status_code == 200).json()
    assert [owner["key_group"]] in owned
    assert "not owned" in next(a for a in answers if a.status_code == 404).json()["detail"]
