"""``CheckpointCoordinator`` alone, part 2: what completion and abortion leave behind.

Atomic ``_metadata`` written only on completion, notifications, retention (``num_retained``,
retain-on-cancellation's discard, shared files), ``incremental``, subsumption, late
acknowledgements, savepoints, restored checkpoints. Doubles: coordinator_doubles.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.metadata import (
    METADATA_FILE,
    KeyedStateEntry,
    checkpoint_dir,
    decode_metadata,
    metadata_path,
    shared_checkpoint_dir,
)
from metricsflow.checkpointing.protocol import (
    CheckpointType,
)
from tests.checkpointing.coordinator_doubles import (
    MS,
    TASKS,
    WAIT_S,
    RecordingStorage,
    Setup,
    acknowledge_all,
    failure_of,
    state_ack,
)


@pytest.fixture
async def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


# -- num_retained ----------------------------------------------------------------------------


async def test_only_the_last_num_retained_checkpoints_are_kept_and_older_ones_deleted(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=2))
    ids = [(await s.complete()).checkpoint_id for _ in range(4)]
    await s.coordinator.shutdown()  # waits for the background deletes
    assert [c.checkpoint_id for c in s.coordinator.completed_checkpoints] == ids[-2:]
    assert sorted(s.storage.list_dir("")) == [checkpoint_dir(i) for i in ids[-2:]]
    assert s.coordinator.latest_completed_checkpoint() is s.coordinator.completed_checkpoints[-1]


async def test_shared_files_survive_the_discard_of_a_checkpoint_that_a_newer_one_still_needs(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=1))
    shared_a = s.storage.write_file("shared/a.sst", b"a")
    shared_old = s.storage.write_file("shared/old.sst", b"old")
    for shared in ([shared_a, shared_old], [shared_a]):
        future, checkpoint_id = await s.triggered()
        for index, task in enumerate(sorted(TASKS)):
            files = shared if task == "sink" else ()
            ack = state_ack(s.storage, checkpoint_id, task, index, shared=files)
            s.coordinator.acknowledge_checkpoint(task, checkpoint_id, ack)
        await asyncio.wait_for(future, WAIT_S)
    await s.coordinator.stop_triggering()
    await s.coordinator.shutdown()  # waits for the discard of checkpoint 1
    assert s.storage.list_dir("shared") == ["a.sst"]
    assert s.coordinator.shared_registry.reference_count("shared/a.sst") == 1
    s.coordinator.discard_all_retained()  # the last checkpoint that needs a.sst goes
    await s.coordinator.shutdown()
    assert s.storage.list_dir("shared") == []
    assert s.storage.deleted.count("shared/a.sst") == 1
    assert s.storage.deleted.count("shared/old.sst") == 1


# -- retain_on_cancellation (the job calls discard_all_retained when it is False) -------------


async def test_discarding_all_retained_checkpoints_deletes_every_one_of_them(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=3))
    for _ in range(3):
        await s.complete()
    s.coordinator.discard_all_retained()
    await s.coordinator.shutdown()
    assert s.coordinator.completed_checkpoints == []
    assert s.storage.list_dir("") == []


# -- incremental -----------------------------------------------------------------------------


@pytest.mark.parametrize("incremental", [True, False])
async def test_incremental_snapshots_are_offered_to_checkpoints_and_never_to_savepoints(
    tmp_path: Path, incremental: bool
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, incremental=incremental))
    _, checkpoint_id = await s.triggered()
    assert s.coordinator.incremental_for(checkpoint_id) is incremental
    assert s.coordinator.storage_for(checkpoint_id) is s.storage
    savepoint_storage = RecordingStorage(tmp_path / "savepoint")
    savepoint = asyncio.ensure_future(s.coordinator.trigger_savepoint(savepoint_storage, "sp"))
    savepoint_id = (await s.participants.barrier(2)).checkpoint_id
    assert s.coordinator.incremental_for(savepoint_id) is False
    assert s.coordinator.storage_for(savepoint_id) is savepoint_storage
    assert s.coordinator.storage_for(12345) is s.storage
    assert s.coordinator.incremental_for(12345) is incremental
    await s.coordinator.shutdown()
    assert (await failure_of(savepoint)).reason.name == "CHECKPOINT_COORDINATOR_SHUTDOWN"


# -- subsumption -----------------------------------------------------------------------------


async def test_a_completed_checkpoint_subsumes_older_pending_ones_without_counting_a_failure(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, max_concurrent_checkpoints=3))
    older, older_id = await s.triggered()
    s.coordinator.acknowledge_checkpoint(
        "source-0", older_id, state_ack(s.storage, older_id, "source-0", 0)
    )
    _, middle_id = await s.triggered()
    newest, newest_id = await s.triggered()
    acknowledge_all(s.coordinator, newest_id)
    assert (await asyncio.wait_for(newest, WAIT_S)).checkpoint_id == newest_id
    assert (await failure_of(older)).reason is CheckpointFailureReason.CHECKPOINT_SUBSUMED
    assert sorted(s.participants.aborted) == [older_id, middle_id]
    assert s.coordinator.pending_checkpoints == {}
    assert s.coordinator.consecutive_failures == 0
    assert s.participants.failures == []
    await s.coordinator.shutdown()
    assert not s.storage.exists(checkpoint_dir(older_id))


async def test_a_pending_savepoint_is_not_subsumed_by_a_newer_checkpoint(
    setup: Setup, tmp_path: Path
) -> None:
    savepoint_storage = RecordingStorage(tmp_path / "savepoint")
    savepoint = asyncio.ensure_future(setup.coordinator.trigger_savepoint(savepoint_storage, "sp"))
    savepoint_id = (await setup.participants.barrier()).checkpoint_id
    await setup.complete()
    assert list(setup.coordinator.pending_checkpoints) == [savepoint_id]
    acknowledge_all(setup.coordinator, savepoint_id, storage=savepoint_storage)
    completed = await asyncio.wait_for(savepoint, WAIT_S)
    assert completed.checkpoint_id == savepoint_id


# -- late acknowledgements -------------------------------------------------------------------


async def _end_by(s: Setup, how: str, tmp_path: Path) -> tuple[int, RecordingStorage]:
    """Start a checkpoint (or a savepoint), end it ``how``; return its id and its storage."""
    storage = s.storage
    if how == "savepoint-declined":
        storage = RecordingStorage(tmp_path / "savepoint")
        future = asyncio.ensure_future(s.coordinator.trigger_savepoint(storage, "sp"))
        checkpoint_id = (await s.participants.barrier()).checkpoint_id
    else:
        future, checkpoint_id = await s.triggered()
    if how == "expired":
        s.clock.advance(s.coordinator.config.timeout_ns + 1)
        s.coordinator.expire_overdue()
    elif how == "subsumed":
        _, newer_id = await s.triggered()
        acknowledge_all(s.coordinator, newer_id)
        await s.participants.until(lambda: newer_id in s.participants.completed)
    else:
        s.coordinator.decline_checkpoint(
            "source-0", checkpoint_id, CheckpointFailureReason.CHECKPOINT_DECLINED
        )
    await failure_of(future)
    return checkpoint_id, storage


@pytest.mark.parametrize("how", ["expired", "declined", "subsumed", "savepoint-declined"])
async def test_a_late_acknowledgement_is_ignored_and_its_state_files_are_deleted(
    tmp_path: Path, how: str
) -> None:
    config = CheckpointConfig(
        interval_ms=0, max_concurrent_checkpoints=2, tolerable_failed_checkpoints=-1
    )
    s = Setup(tmp_path, config)
    checkpoint_id, storage = await _end_by(s, how, tmp_path)
    await s.coordinator.shutdown()  # the abort's cleanup is over ...
    late = state_ack(storage, checkpoint_id, "sink", 2)  # ... when a slow task's files land
    completed_before = list(s.participants.completed)
    s.coordinator.acknowledge_checkpoint("sink", checkpoint_id, late)
    await s.coordinator.shutdown()  # waits for the late cleanup
    [(_, handle)] = late.keyed
    assert not storage.exists(handle.private[0].path), "the late acknowledgement's files leak"
    assert s.participants.completed == completed_before
    assert checkpoint_id not in [c.checkpoint_id for c in s.coordinator.completed_checkpoints]
    assert metadata_path(checkpoint_id) not in storage.atomic_writes
    assert METADATA_FILE not in storage.atomic_writes


async def test_a_repeated_acknowledgement_of_a_completed_checkpoint_keeps_its_files(
    setup: Setup,
) -> None:
    future, checkpoint_id = await setup.triggered()
    acks = {t: state_ack(setup.storage, checkpoint_id, t, i) for i, t in enumerate(sorted(TASKS))}
    for task, ack in acks.items():
        setup.coordinator.acknowledge_checkpoint(task, checkpoint_id, ack)
    await asyncio.wait_for(future, WAIT_S)
    setup.coordinator.acknowledge_checkpoint("sink", checkpoint_id, acks["sink"])
    await setup.coordinator.shutdown()
    assert setup.storage.deleted == []
    assert setup.participants.completed == [checkpoint_id]


async def test_an_acknowledgement_from_a_task_that_was_not_asked_does_not_complete_it(
    setup: Setup,
) -> None:
    future, checkpoint_id = await setup.triggered()
    acknowledge_all(setup.coordinator, checkpoint_id, tasks=["source-0", "source-1", "stranger"])
    await setup.coordinator.stop_triggering()
    assert not future.done()
    assert list(setup.coordinator.pending_checkpoints) == [checkpoint_id]
    setup.coordinator.acknowledge_checkpoint(
        "sink", checkpoint_id, state_ack(setup.storage, checkpoint_id, "sink", 2)
    )
    completed = await asyncio.wait_for(future, WAIT_S)
    assert completed.metadata.key_groups == frozenset({0, 1, 2})  # not the stranger's 2nd


# -- metadata and notifications --------------------------------------------------------------


async def test_metadata_is_written_atomically_once_and_only_when_every_task_acknowledged(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, properties={"job": "unit"})
    future, checkpoint_id = await s.triggered()
    acks = {
        t: state_ack(s.storage, checkpoint_id, t, i, sync_ns=i + 1, async_ns=10 * i, alignment_ns=7)
        for i, t in enumerate(sorted(TASKS))
    }
    for task in ("sink", "source-0"):
        s.coordinator.acknowledge_checkpoint(task, checkpoint_id, acks[task])
    await asyncio.sleep(0)
    assert s.storage.atomic_writes == []
    assert not s.storage.exists(metadata_path(checkpoint_id))
    s.clock.advance(3 * MS)
    s.coordinator.acknowledge_checkpoint("source-1", checkpoint_id, acks["source-1"])
    completed = await asyncio.wait_for(future, WAIT_S)
    assert s.storage.atomic_writes == [metadata_path(checkpoint_id)]
    on_disk = decode_metadata(s.storage.read_bytes(metadata_path(checkpoint_id)))
    assert on_disk == completed.metadata
    assert on_disk.checkpoint_type is CheckpointType.CHECKPOINT
    assert on_disk.key_groups == frozenset({0, 1, 2})
    assert on_disk.properties == {"job": "unit"}
    assert sorted(e.uid for e in on_disk.keyed) == sorted(f"op-{t}" for t in TASKS)
    assert {h.uid for h in on_disk.operator} == {f"op-{t}" for t in TASKS}
    assert all(isinstance(e, KeyedStateEntry) for e in on_disk.keyed)
    assert completed.location == checkpoint_dir(checkpoint_id)
    assert completed.duration_ns == 3 * MS
    assert (completed.sync_duration_ns, completed.async_duration_ns) == (3, 20)
    assert completed.alignment_duration_ns == 7
    assert completed.state_size == on_disk.state_size > 0
    stats = s.coordinator.history[-1]
    assert (stats.status, stats.checkpoint_id, stats.duration_ns) == (
        "completed",
        checkpoint_id,
        3 * MS,
    )
    assert stats.state_size == completed.state_size


async def test_every_task_is_notified_of_a_completion_only_once_its_metadata_is_durable(
    setup: Setup,
) -> None:
    first = await setup.complete()
    second = await setup.complete()
    assert setup.participants.completed == [first.checkpoint_id, second.checkpoint_id]
    assert setup.participants.metadata_seen_at_completion == [True, True]
    assert setup.participants.aborted == []


async def test_a_failed_metadata_write_aborts_the_checkpoint_and_counts_as_a_failure(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, tolerable_failed_checkpoints=0))
    s.storage.fail_metadata = True
    future, checkpoint_id = await s.triggered()
    acknowledge_all(s.coordinator, checkpoint_id)
    error = await failure_of(future)
    assert error.reason is CheckpointFailureReason.FINALIZE_CHECKPOINT_FAILURE
    assert "disk full" in str(error)
    assert s.participants.completed == []
    assert s.participants.aborted == [checkpoint_id]
    assert len(s.participants.failures) == 1
    assert s.coordinator.completed_checkpoints == []


async def test_a_savepoint_writes_its_metadata_at_the_root_of_its_own_storage_and_is_not_retained(
    setup: Setup, tmp_path: Path
) -> None:
    await setup.complete()
    savepoint_storage = RecordingStorage(tmp_path / "savepoint")
    savepoint = asyncio.ensure_future(
        setup.coordinator.trigger_savepoint(savepoint_storage, "/somewhere/savepoint-2")
    )
    barrier = await setup.participants.barrier(2)
    assert barrier.options.checkpoint_type is CheckpointType.SAVEPOINT
    acknowledge_all(setup.coordinator, barrier.checkpoint_id, storage=savepoint_storage)
    completed = await asyncio.wait_for(savepoint, WAIT_S)
    assert completed.is_savepoint
    assert completed.location == "/somewhere/savepoint-2"
    assert savepoint_storage.atomic_writes == [METADATA_FILE]
    assert setup.storage.atomic_writes == [metadata_path(1)]
    assert [c.checkpoint_id for c in setup.coordinator.completed_checkpoints] == [1]
    assert setup.coordinator.history[-1].is_savepoint


async def test_a_savepoint_whose_state_references_shared_files_is_refused(
    setup: Setup, tmp_path: Path
) -> None:
    savepoint_storage = RecordingStorage(tmp_path / "savepoint")
    savepoint = asyncio.ensure_future(setup.coordinator.trigger_savepoint(savepoint_storage, "sp"))
    savepoint_id = (await setup.participants.barrier()).checkpoint_id
    shared = savepoint_storage.write_file("shared/x.sst", b"x")
    for index, task in enumerate(sorted(TASKS)):
        ack = state_ack(savepoint_storage, savepoint_id, task, index, shared=[shared])
        setup.coordinator.acknowledge_checkpoint(task, savepoint_id, ack)
    error = await failure_of(savepoint)
    assert error.reason is CheckpointFailureReason.FINALIZE_CHECKPOINT_FAILURE
    assert "shared files" in str(error)
    assert savepoint_storage.atomic_writes == []


@pytest.mark.parametrize("kind", list(CheckpointType), ids=lambda k: k.name)
async def test_a_checkpoint_aborted_while_its_metadata_is_written_leaves_no_metadata_behind(
    setup: Setup, tmp_path: Path, kind: CheckpointType
) -> None:
    if kind is CheckpointType.SAVEPOINT:
        storage = RecordingStorage(tmp_path / "savepoint")
        future = asyncio.ensure_future(setup.coordinator.trigger_savepoint(storage, "sp"))
        checkpoint_id = (await setup.participants.barrier()).checkpoint_id
        written = METADATA_FILE
        last_cleaned = METADATA_FILE
    else:
        storage = setup.storage
        future, checkpoint_id = await setup.triggered()
        written = metadata_path(checkpoint_id)
        last_cleaned = shared_checkpoint_dir(checkpoint_id)
    storage.hold_metadata = True
    acknowledge_all(setup.coordinator, checkpoint_id, storage=storage)
    assert await asyncio.to_thread(storage.metadata_started.wait, WAIT_S)
    # e.g. a rebalance revoked key groups while the metadata was being written
    setup.coordinator.abort_pending_checkpoints(CheckpointFailureReason.JOB_FAILOVER_REGION)
    assert (await failure_of(future)).reason is CheckpointFailureReason.JOB_FAILOVER_REGION
    # the abort's cleanup is done before the write goes on (else the two race on the files)
    assert await asyncio.to_thread(storage.deletion(last_cleaned).wait, WAIT_S)
    storage.release_metadata.set()
    await setup.coordinator.shutdown()  # waits for the write and every cleanup
    assert storage.atomic_writes == [written]  # it was written ...
    assert not storage.exists(written), "... and left: an aborted checkpoint looks complete"
    assert not storage.exists(checkpoint_dir(checkpoint_id))
    assert setup.participants.completed == []
    assert setup.coordinator.completed_checkpoints == []
