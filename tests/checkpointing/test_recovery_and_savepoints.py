"""Recovery skips corrupt or half-written checkpoints; savepoints restore by uid."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.metadata import metadata_path
from metricsflow.checkpointing.recovery import CheckpointRecovery
from metricsflow.checkpointing.savepoints import savepoint_restore_plan
from metricsflow.errors import CheckpointError
from metricsflow.model.tiers import DEFAULT_TIERS, TierSpec
from metricsflow.testing import CollectedResults, InMemorySource
from metricsflow.testing.harness import MINUTE_NS, JobRunner, metric_batches
from metricsflow.testing.sources import decode_position

MANUAL = CheckpointConfig(interval_ms=0, num_retained=3)
MANUAL_FULL = CheckpointConfig(interval_ms=0, num_retained=3, incremental=False)
WAIT_S = 10.0  # bound on an awaited event that must happen; never a measured delay


async def _two_checkpoints(runner: JobRunner) -> tuple[int, int]:
    """Run a job that takes checkpoints 1 and 2 by hand, then is cancelled."""
    partitions = metric_batches(3, batches=8)
    for elements in partitions.values():
        elements.pop()  # no END: the job stays up until cancelled
    source = InMemorySource(partitions)
    job = runner.job_factory(source, CollectedResults())(None)

    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)  # every key group has read
    first = await job.trigger_checkpoint()
    second = await job.trigger_checkpoint()
    job.cancel()
    await task
    return first.checkpoint_id, second.checkpoint_id


@pytest.mark.parametrize(
    "damage",
    ["metadata missing", "metadata torn", "state file missing", "state file altered"],
)
async def test_a_corrupt_checkpoint_is_skipped_with_a_log_line_saying_why(
    runner_factory: Callable[..., JobRunner], caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    # full snapshots: each checkpoint has a state file of its own to damage (an incremental
    # heap checkpoint may write nothing new: tests/state/test_heap_incremental_checkpoints.py)
    runner = runner_factory("heap", MANUAL_FULL)
    first, second = await _two_checkpoints(runner)
    root = Path(runner.storage.root_url)
    meta_file = root / metadata_path(second)
    state_file = next(p for p in (root / f"chk-{second}").rglob("*.mfks") if "kg-0" in p.parts)
    if damage == "metadata missing":
        meta_file.unlink()
    elif damage == "metadata torn":
        meta_file.write_bytes(meta_file.read_bytes()[:100])
    elif damage == "state file missing":
        state_file.unlink()
    else:
        state_file.write_bytes(b"x" + state_file.read_bytes()[1:])

    with caplog.at_level(logging.WARNING, logger="metricsflow.checkpointing.recovery"):
        restore = CheckpointRecovery(runner.storage).latest_for_key_group(0)

    assert restore is not None
    assert restore.metadata.checkpoint_id == first
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert skipped, "no log line for the skipped checkpoint"
    assert f"checkpoint_id={second}" in skipped[0]
    expected = {
        "metadata missing": "missing",
        "metadata torn": "not valid JSON",
        "state file missing": "is missing",
        "state file altered": "SHA-256",
    }[damage]
    assert expected in skipped[0]


async def test_a_job_restarts_from_the_previous_checkpoint_when_the_newest_is_corrupt(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    _, second = await _two_checkpoints(runner)
    (Path(runner.storage.root_url) / metadata_path(second)).write_bytes(b"{")
    plan = CheckpointRecovery(runner.storage).plan([0, 1, 2])
    job = runner.job_factory(InMemorySource(metric_batches(3, batches=8)), CollectedResults())(plan)
    await job.run()
    assert job.coordinator.next_checkpoint_id > second  # ids never reused


async def _savepoint(runner: JobRunner, seed: int) -> str:
    """A savepoint taken mid-stream (every key group read two of its ten batches, and the
    barrier overtakes a reader that waits 1 ms per batch), then the job is cancelled."""
    partitions = metric_batches(seed, batches=10)
    for elements in partitions.values():
        elements.pop()  # no END: the job stays up until cancelled
    source = InMemorySource(partitions, element_delay_s=0.001)
    job = runner.job_factory(source, CollectedResults())(None)

    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(2), WAIT_S)
    savepoint = await job.trigger_savepoint()
    job.cancel()
    await task
    positions = [
        decode_position(h.data) for h in savepoint.metadata.operator if h.uid == source.uid
    ]
    assert positions, "the savepoint holds no source positions"
    assert all(2 <= p < 10 for p in positions), f"not mid-stream: {positions}"
    return savepoint.location


async def test_a_savepoint_restores_into_a_job_with_a_tier_added_and_lateness_changed(
    runner_factory: Callable[..., JobRunner], tmp_path: Path
) -> None:
    runner = runner_factory("heap", MANUAL)
    location = await _savepoint(runner, seed=5)
    moved = tmp_path / "moved-savepoint"
    await asyncio.to_thread(Path(location).rename, moved)  # relocatable
    assert not any(p.name == "shared" for p in moved.rglob("*"))
    tiers = (*DEFAULT_TIERS, TierSpec("1w", "1w", "INF"))
    plan = savepoint_restore_plan(str(moved))
    results = CollectedResults()
    restored = runner_factory("heap", MANUAL).job_factory(
        InMemorySource(metric_batches(5, batches=10)),
        results,
        tiers=tiers,
        allowed_lateness_ns=5 * MINUTE_NS,
    )(plan)
    await restored.run()
    assert results.tier("1w"), "the added tier produced nothing"
    assert results.tier("1d")


async def test_a_savepoint_with_state_no_operator_claims_is_refused_unless_allowed(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    location = await _savepoint(runner, seed=6)
    tiers = DEFAULT_TIERS[:3]  # the 1d tier was removed
    source = InMemorySource(metric_batches(6, batches=10))
    refused = runner_factory("heap", MANUAL).job_factory(source, CollectedResults(), tiers=tiers)(
        savepoint_restore_plan(location)
    )
    with pytest.raises(CheckpointError, match=r"window-1d.*allow_non_restored_state"):
        await refused.run()

    allowed = runner_factory("heap", MANUAL).job_factory(source, CollectedResults(), tiers=tiers)(
        savepoint_restore_plan(location, allow_non_restored_state=True)
    )
    await allowed.run()
