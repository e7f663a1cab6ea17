"""What a job leaves in its checkpoint storage across restarts: a new process manages the
checkpoints its earlier process left (retention deletes them in time), and shared files of a
checkpoint cut short by a crash are deleted at the next start."""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.metadata import metadata_path
from metricsflow.checkpointing.recovery import CheckpointRecovery, RestorePlan
from metricsflow.runtime.job import Job
from metricsflow.testing import CollectedResults, InMemorySource
from metricsflow.testing.harness import JobRunner, metric_batches

MANUAL = CheckpointConfig(interval_ms=0, num_retained=2)
WAIT_S = 10.0  # bound on an awaited event that must happen; never a measured delay


def endless(seed: int, batches: int = 12, delay_s: float = 0.002) -> InMemorySource:
    partitions = metric_batches(seed, batches=batches)
    for elements in partitions.values():
        elements.pop()  # no END: the job stays up until cancelled
    return InMemorySource(partitions, element_delay_s=delay_s)


async def checkpoints_while_reading(
    make: Callable[[RestorePlan | None], Job],
    source: InMemorySource,
    plan: RestorePlan | None,
    count: int,
) -> list[int]:
    """Run a job; take ``count`` checkpoints, each after every reader moved on; cancel."""
    job = make(plan)
    task = asyncio.create_task(job.run())
    ids = []
    for n in range(count):
        await asyncio.wait_for(source.wait_for_position(2 * n + 1), WAIT_S)
        ids.append((await job.trigger_checkpoint()).checkpoint_id)
    job.cancel()
    await task
    return ids


def checkpoint_dirs(root: Path) -> set[str]:
    return {p.name for p in root.iterdir() if p.name.startswith("chk-")}


def shared_files(root: Path) -> set[str]:
    shared = root / "shared"
    return {str(p.relative_to(root)) for p in shared.rglob("*") if p.is_file()}


def referenced(runner: JobRunner, ids: list[int]) -> set[str]:
    recovery = CheckpointRecovery(runner.storage)
    return {h.path for n in ids for h in recovery.load(n).files() if h.path.startswith("shared/")}


async def test_a_restarted_job_manages_the_checkpoints_its_earlier_process_left(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    root = Path(runner.storage.root_url)
    source = endless(1)
    first = await checkpoints_while_reading(
        runner.job_factory(source, CollectedResults()), source, None, 3
    )
    assert checkpoint_dirs(root) == {f"chk-{n}" for n in first[1:]}

    # the next process restores nothing from here (its partitions came from elsewhere)
    source = endless(2)
    second = await checkpoints_while_reading(
        runner.job_factory(source, CollectedResults()), source, None, 2
    )

    assert second[0] > first[-1]
    assert checkpoint_dirs(root) == {f"chk-{n}" for n in second}
    assert shared_files(root) == referenced(runner, second)


async def test_shared_files_of_a_checkpoint_cut_short_by_a_crash_are_deleted_at_the_next_start(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    root = Path(runner.storage.root_url)
    source = endless(3)
    first, second = await checkpoints_while_reading(
        runner.job_factory(source, CollectedResults()), source, None, 2
    )
    (root / metadata_path(second)).unlink()  # the crash came before its _metadata was written
    orphans = shared_files(root) - referenced(runner, [first])
    assert orphans
    assert all(p.startswith(f"shared/chk-{second}/") for p in orphans)

    source = endless(3)
    plan = CheckpointRecovery(runner.storage).plan(source.key_groups)
    job = runner.job_factory(source, CollectedResults())(plan)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(job.wait_until_ready(), WAIT_S)
    job.cancel()
    await task

    assert plan.max_checkpoint_id == first
    assert shared_files(root) == referenced(runner, [first])
    assert not (root / "shared" / f"chk-{second}").exists()


async def test_a_partition_whose_chain_lives_in_another_root_moves_and_outlives_that_root(
    runner_factory: Callable[..., JobRunner],
) -> None:
    """Worker A checkpoints incrementally (a chain of segment files in A's root); worker B
    restores from A's root, checkpoints into its own; A's root is then lost: B's checkpoint
    alone restores, and the run ends with the results of a run without hand-over."""
    expected = CollectedResults()
    assert (
        await runner_factory("heap").run(InMemorySource(metric_batches(5, batches=24)), expected)
        == 0
    )
    a, b = runner_factory("heap", MANUAL), runner_factory("heap", MANUAL)
    results = CollectedResults()
    source = endless(5, batches=24, delay_s=0.01)
    await checkpoints_while_reading(a.job_factory(source, results), source, None, 3)
    assert (
        len(referenced(a, [max(int(d[4:]) for d in checkpoint_dirs(Path(a.storage.root_url)))])) > 3
    )

    source = endless(5, batches=24, delay_s=0.01)
    plan = CheckpointRecovery(a.storage).plan(source.key_groups)
    (b_checkpoint,) = await checkpoints_while_reading(
        b.job_factory(source, results), source, plan, 1
    )
    b_root = Path(b.storage.root_url)
    assert referenced(b, [b_checkpoint]) == shared_files(b_root)
    shutil.rmtree(a.storage.root_url)

    source = InMemorySource(metric_batches(5, batches=24))
    plan = CheckpointRecovery(b.storage).plan(source.key_groups)
    assert plan.max_checkpoint_id == b_checkpoint
    await b.job_factory(source, results)(plan).run()
    assert results.latest == expected.latest


async def test_a_checkpoint_with_nothing_new_to_write_says_so_in_its_statistics(
    runner_factory: Callable[..., JobRunner],
) -> None:
    runner = runner_factory("heap", MANUAL)
    source = endless(4, delay_s=0.0)
    job = runner.job_factory(source, CollectedResults())(None)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(11), WAIT_S)  # everything read
    await job.trigger_checkpoint()
    await job.trigger_checkpoint()
    job.cancel()
    await task

    first, second = list(job.coordinator.history)[-2:]
    assert first.written_bytes == first.state_size > 10_000
    assert second.state_size == first.state_size
    assert second.written_bytes < 1_000  # the source positions only


async def test_checkpoints_log_per_checkpoint_not_per_partition(
    runner_factory: Callable[..., JobRunner], caplog: pytest.LogCaptureFixture
) -> None:
    """The backends log per key group at DEBUG; at INFO a checkpoint is a few coordinator
    lines (triggered, completed with its size and written bytes, the one it replaces
    discarded), whatever the number of partitions."""
    runner = runner_factory("heap", MANUAL)
    source = endless(6)
    job = runner.job_factory(source, CollectedResults())(None)
    task = asyncio.create_task(job.run())
    await asyncio.wait_for(source.wait_for_position(1), WAIT_S)
    with caplog.at_level(logging.INFO):
        for _ in range(4):
            await job.trigger_checkpoint()
        records = [r for r in caplog.records if r.levelno >= logging.INFO]
    job.cancel()
    await task

    assert len(source.key_groups) == 3
    assert not [r.getMessage() for r in records if r.name.startswith("metricsflow.state")]
    kinds = [r.getMessage().split(" checkpoint_id=")[0] for r in records]
    assert kinds.count("checkpoint triggered") == kinds.count("checkpoint completed") == 4
    assert kinds.count("checkpoint discarded") <= 2  # the last discard may still be running
    assert set(kinds) <= {"checkpoint triggered", "checkpoint completed", "checkpoint discarded"}
    completed = [r.getMessage() for r in records if "checkpoint completed" in r.getMessage()]
    assert all(" written=" in m for m in completed)
