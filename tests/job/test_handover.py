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
from pathlib import Path
from typing import Any

import pytest

from metricsflow.checkpointing.metadata import read_metadata
from metricsflow.checkpointing.recovery import CheckpointRecovery
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.job.recovery import offset_of
from tests.job.stack import (
    HTTP,
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
    jobs = HTTP.get(f"{worker.url}/jobs/overview", timeout=10).json()["jobs"]
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


def completed_checkpoints(worker: Proc) -> int:
    return int(HTTP.get(f"{worker.url}/checkpoints", timeout=10).json()["counts"]["completed"])


def log_since(worker_log: Path, offset: int) -> str:
    return worker_log.read_bytes()[offset:].decode("utf-8", "replace")


def restores(text: str) -> dict[int, dict[str, str]]:
    """``key group restore chosen`` log lines: key group -> their key=value fields."""
    out: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        if "key group restore chosen" in line:
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            out[int(fields["key_group"])] = fields
    return out


async def test_a_partition_whose_new_owner_dies_before_its_first_checkpoint_is_restored(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    sender = Sender(stack.gateway.url, stack.db, seed=23)
    w1 = stack.worker("w1", METRICSFLOW_CHECKPOINTS_RETAINED="2")
    with sender.in_background(interval_s=0.05):
        wait_for(lambda: completed_checkpoints(w1) >= 3, "w1's first checkpoints")
        # w2 never checkpoints (10 min interval): the partition it takes lives only in w1's root
        w2 = stack.worker("w2", METRICSFLOW_CHECKPOINT_INTERVAL_MS="600000")
        wait_for(lambda: bool(owned(w2)) and len(owned(w1)) == 1, "the hand-over to w2")
        (moved,) = owned(w2)
        before = completed_checkpoints(w1)
        wait_for(lambda: completed_checkpoints(w1) >= before + 5, "more than N checkpoints of w1")
        root = stack.tmp / "worker" / "checkpoints" / "w1"
        valid = CheckpointRecovery(FsCheckpointStorage(str(root))).valid_checkpoints()
        holders = [m.checkpoint_id for m in valid if moved in m.key_groups]
        assert holders, f"w1 deleted every checkpoint of partition {moved}"
        assert max(holders) < valid[-1].checkpoint_id - 2, "the holder is past the retention"
        w2.kill()  # before its first checkpoint
        offset = w1.log.stat().st_size
        wait_for(lambda: len(owned(w1)) == 2, "partition back to w1", timeout_s=90)
        time.sleep(2)
    text = log_since(w1.log, offset)
    assert "Refusing to start it empty" not in text
    chosen = restores(text)
    assert moved in chosen, text[-3000:]
    assert int(chosen[moved]["offset"]) > 0
    assert_tiers_match_oracle(stack, sender, timeout_s=120)


async def test_a_savepoint_older_than_the_newest_checkpoint_is_restored_when_asked(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    sender = Sender(stack.gateway.url, stack.db, seed=29)
    w1 = stack.worker("w1")
    sender.run_for(2)
    answer = HTTP.post(f"{w1.url}/savepoints", timeout=60)
    assert answer.status_code == 200, answer.text
    savepoint = answer.json()["location"]
    saved = read_metadata(FsCheckpointStorage(savepoint), "_metadata")
    saved_offsets = {kg: offset_of(saved, "kafka-source", kg) for kg in (0, 1)}
    sender.run_for(3)  # newer checkpoints, higher offsets
    newest = CheckpointRecovery(
        FsCheckpointStorage(str(stack.tmp / "worker" / "checkpoints" / "w1"))
    ).valid_checkpoints()[-1]
    assert all(offset_of(newest, "kafka-source", kg) > saved_offsets[kg] for kg in (0, 1))
    w1.terminate()
    offset = w1.log.stat().st_size
    w1 = stack.worker("w1", "--from-savepoint", savepoint)
    wait_for(lambda: len(owned(w1)) == 2, "w1 to own both partitions")
    chosen = restores(log_since(w1.log, offset))
    assert {kg: c["savepoint"] for kg, c in chosen.items()} == {0: "True", 1: "True"}
    assert {kg: int(c["offset"]) for kg, c in chosen.items()} == {kg: -1 for kg in (0, 1)}, (
        "ranked as the savepoint of the new generation"
    )
    assert {c["generation"] for c in chosen.values()} == {"1"}
    sender.run_for(3)
    wait_for(lambda: completed_checkpoints(w1) >= 2, "checkpoints of the new run")
    # a crash now restores the new run's checkpoints, not the savepoint nor older ones
    w1.kill()
    offset = w1.log.stat().st_size
    w1 = stack.worker("w1")
    wait_for(lambda: len(owned(w1)) == 2, "w1 to own both partitions again")
    chosen = restores(log_since(w1.log, offset))
    assert {kg: c["savepoint"] for kg, c in chosen.items()} == {0: "False", 1: "False"}
    assert {c["generation"] for c in chosen.values()} == {"1"}
    assert all(int(c["offset"]) >= saved_offsets[kg] for kg, c in chosen.items())
    sender.run_for(2)
    assert_tiers_match_oracle(stack, sender, timeout_s=120)


async def test_a_second_worker_with_a_used_id_is_refused(
    stack_factory: Callable[..., Any],
) -> None:
    stack: Stack = await stack_factory(partitions=2)
    first = stack.worker("w1")
    with pytest.raises(AssertionError, match="exited with 2"):
        stack.worker("w1")
    second = stack.procs[-1]
    text = second.log.read_text()
    assert "worker id 'w1' is in use" in text
    assert f"pid {first.proc.pid}" in text
    assert first.proc.poll() is None
    first.kill()
    stack.worker("w1")  # the lock died with the process
