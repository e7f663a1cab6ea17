"""Running jobs: checkpoints complete and notify, crashes during a checkpoint, rebalance."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.recovery import CheckpointRecovery
from metricsflow.testing import CollectedResults, InMemorySource
from metricsflow.testing.harness import JobRunner, metric_batches
from metricsflow.testing.sinks import CollectingSink
from metricsflow.testing.sources import decode_position

MANUAL = CheckpointConfig(interval_ms=0, num_retained=2)
WAIT_S = 10.0  # bound on an awaited event that must happen; never a measured delay


def _unbounded(seed: int, batches: int = 6) -> InMemorySource:
    partitions = metric_batches(seed, batches=batches)
    for elements in partitions.values():
        elements.pop()  # drop END: the readers go idle at the end
    return InMemorySource(partitions)


async def test_offsets_are_committed_only_after_the_checkpoint_completed(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    source = _unbounded(1)
    job = runner.job_factory(source, CollectedResults())(None)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)  # every key group has read
    assert source.committed == {}
    completed = await job.trigger_checkpoint()
    positions = {
        h.key_group: decode_position(h.data)
        for h in completed.metadata.operator
        if h.uid == "source"
    }
    assert source.committed == positions
    assert set(positions) == {0, 1, 2}
    assert all(p > 0 for p in positions.values())
    job.cancel()
    await task


async def test_old_checkpoints_are_discarded_beyond_num_retained(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    source = _unbounded(2)
    job = runner.job_factory(source, CollectedResults())(None)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)
    ids = [(await job.trigger_checkpoint()).checkpoint_id for _ in range(4)]
    job.cancel()
    await task
    assert CheckpointRecovery(runner.storage).checkpoint_ids() == sorted(ids[-2:], reverse=True)


async def test_a_crash_in_the_sinks_asynchronous_flush_fails_the_job_and_the_checkpoint(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    results = CollectedResults()
    source = _unbounded(3)
    graph_job = runner.job_factory(source, results)(None)
    graph_job.sink = CollectingSink(results=results, crash_in_flush_of=[2])
    task = asyncio.create_task(graph_job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)
    await graph_job.trigger_checkpoint()
    checkpoint = asyncio.ensure_future(graph_job.trigger_checkpoint())
    done, _ = await asyncio.wait([task, checkpoint], timeout=WAIT_S)
    assert task in done
    assert "simulated crash" in str(task.exception())
    assert CheckpointRecovery(runner.storage).checkpoint_ids() == [1]


async def test_key_groups_can_be_revoked_and_assigned_again_restoring_their_state(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    source = _unbounded(4)
    job = runner.job_factory(source, CollectedResults())(None)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)
    completed = await job.trigger_checkpoint()
    await job.revoke_key_groups({1})
    assert job.key_groups == frozenset({0, 2})
    await job.assign_key_groups({1})
    assert job.key_groups == frozenset({0, 1, 2})
    restored = job.source_task(1).restored_position
    expected = next(h.data for h in completed.metadata.operator_for("source", 1))
    assert restored == expected
    again = await job.trigger_checkpoint()
    assert again.checkpoint_id > completed.checkpoint_id
    assert again.metadata.key_groups == frozenset({0, 1, 2})
    job.cancel()
    await task


@pytest.mark.parametrize("retain", [True, False], ids=["retain", "delete"])
async def test_a_cancelled_job_keeps_its_retained_checkpoints_only_with_retain_on_cancellation(
    runner_factory: Callable[..., JobRunner], retain: bool
) -> None:
    config = CheckpointConfig(interval_ms=0, num_retained=2, retain_on_cancellation=retain)
    runner = runner_factory("heap", config)
    source = _unbounded(5)
    job = runner.job_factory(source, CollectedResults())(None)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)
    ids = [(await job.trigger_checkpoint()).checkpoint_id for _ in range(3)]
    job.cancel()
    await task
    kept = CheckpointRecovery(runner.storage).checkpoint_ids()
    assert kept == (sorted(ids[-2:], reverse=True) if retain else [])
