"""``CheckpointCoordinator`` alone, part 1: when checkpoints are triggered and how they fail.

Every setting of ``CheckpointConfig`` that decides triggering and failure (interval, timeout,
min pause, max concurrent, tolerable failures, mode), declines with every
``CheckpointFailureReason``, and the coordinator's lifecycle. Doubles, the ``ManualClock`` and
the storage: coordinator_doubles.py. Part 2 (completion): test_coordinator_completion.py;
random runs against a reference model: test_coordinator_model.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from metricsflow.checkpointing.base import CheckpointFailureReason
from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.coordinator import (
    UNCOUNTED_FAILURES,
    CompletedCheckpoint,
    max_checkpoint_id_in,
)
from metricsflow.checkpointing.metadata import (
    METADATA_FILE,
    CheckpointMetadata,
    checkpoint_dir,
    decode_metadata,
    metadata_path,
)
from metricsflow.checkpointing.protocol import (
    CheckpointingMode,
    CheckpointType,
)
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import CheckpointError, ConfigurationError
from metricsflow.state.handles import CheckpointStorage
from tests.checkpointing.coordinator_doubles import (
    MS,
    TASKS,
    WAIT_S,
    RecordingStorage,
    Setup,
    WatchedClock,
    acknowledge_all,
    failure_of,
    state_ack,
)


@pytest.fixture
async def setup(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


# -- CheckpointConfig ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("interval_ms", -1),
        ("timeout_ms", 0),
        ("min_pause_between_checkpoints_ms", -5),
        ("max_concurrent_checkpoints", 0),
        ("tolerable_failed_checkpoints", -2),
        ("num_retained", 0),
    ],
)
def test_an_invalid_checkpoint_setting_is_refused_naming_the_setting_and_its_value(
    setting: str, value: int
) -> None:
    with pytest.raises(ConfigurationError, match=rf"CheckpointConfig\.{setting} .* {value}$"):
        CheckpointConfig(**{setting: value})  # type: ignore[arg-type]


def test_the_config_gives_its_durations_in_nanoseconds() -> None:
    config = CheckpointConfig(interval_ms=7, timeout_ms=11, min_pause_between_checkpoints_ms=13)
    assert (config.interval_ns, config.timeout_ns, config.min_pause_ns) == (
        7 * MS,
        11 * MS,
        13 * MS,
    )


# -- interval_ms -----------------------------------------------------------------------------


async def test_periodic_checkpoints_are_triggered_once_per_interval_of_the_clock(
    tmp_path: Path,
) -> None:
    clock = WatchedClock(1_000 * MS)
    s = Setup(tmp_path, CheckpointConfig(interval_ms=100), clock=clock)
    s.coordinator.start()
    s.coordinator.start()  # idempotent: one timer
    clock.advance(99 * MS)
    await clock.ticks()
    assert s.participants.barriers == []
    clock.advance(1 * MS)
    first = await s.participants.barrier(1)
    assert first.checkpoint_id == 1
    acknowledge_all(s.coordinator, 1)
    await s.participants.until(lambda: s.participants.completed == [1])
    clock.advance(99 * MS)
    await clock.ticks()
    assert len(s.participants.barriers) == 1, "triggered before a whole interval had passed"
    clock.advance(1 * MS)
    second = await s.participants.barrier(2)
    assert second.checkpoint_id == 2
    await s.coordinator.shutdown()
    assert s.participants.aborted == [2]


async def test_an_interval_of_zero_triggers_nothing_by_itself_but_a_checkpoint_by_hand_works(
    setup: Setup,
) -> None:
    setup.coordinator.start()
    setup.clock.advance(3_600_000 * MS)
    await asyncio.sleep(0)
    assert setup.participants.barriers == []
    completed = await setup.complete()
    assert completed.checkpoint_id == 1


async def test_a_periodic_trigger_refused_because_tasks_are_not_running_is_retried_next_interval(
    tmp_path: Path,
) -> None:
    clock = WatchedClock(0)
    s = Setup(tmp_path, CheckpointConfig(interval_ms=10), clock=clock, tasks=None)
    s.coordinator.start()
    clock.advance(10 * MS)
    await clock.ticks(3)
    assert s.participants.barriers == []
    assert s.coordinator.next_checkpoint_id == 1  # no id spent on a refused trigger
    s.participants.tasks = TASKS
    clock.advance(10 * MS)
    barrier = await s.participants.barrier()
    assert barrier.checkpoint_id == 1
    await s.coordinator.shutdown()


# -- timeout_ms ------------------------------------------------------------------------------


async def test_a_checkpoint_that_outlives_its_timeout_is_expired_and_counted_as_failed(
    tmp_path: Path,
) -> None:
    s = Setup(
        tmp_path, CheckpointConfig(interval_ms=0, timeout_ms=50, tolerable_failed_checkpoints=5)
    )
    future, checkpoint_id = await s.triggered()
    s.clock.advance(50 * MS)
    s.coordinator.expire_overdue()
    assert not future.done(), "expired at exactly the timeout; it only expires after it"
    s.clock.advance(1)
    s.coordinator.expire_overdue()
    error = await failure_of(future)
    assert error.reason is CheckpointFailureReason.CHECKPOINT_EXPIRED
    assert error.checkpoint_id == checkpoint_id
    assert error.retriable
    assert s.coordinator.consecutive_failures == 1
    assert s.participants.aborted == [checkpoint_id]
    stats = s.coordinator.history[-1]
    assert (stats.status, stats.failure_reason) == ("failed", "CHECKPOINT_EXPIRED")
    assert stats.duration_ns == 50 * MS + 1


async def test_the_periodic_timer_expires_overdue_checkpoints_by_itself(tmp_path: Path) -> None:
    clock = WatchedClock(0)
    config = CheckpointConfig(interval_ms=10, timeout_ms=30, tolerable_failed_checkpoints=-1)
    s = Setup(tmp_path, config, clock=clock)
    s.coordinator.start()
    clock.advance(10 * MS)
    first = await s.participants.barrier()
    clock.advance(30 * MS + 1)
    await s.participants.aborted_checkpoint(first.checkpoint_id)
    assert s.coordinator.history[-1].failure_reason == "CHECKPOINT_EXPIRED"
    await s.coordinator.shutdown()


async def test_a_checkpoint_whose_metadata_is_being_written_is_not_expired(tmp_path: Path) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, timeout_ms=10))
    s.storage.hold_metadata = True
    future, checkpoint_id = await s.triggered()
    acknowledge_all(s.coordinator, checkpoint_id)
    assert await asyncio.to_thread(s.storage.metadata_started.wait, WAIT_S)
    s.clock.advance(11 * MS)
    s.coordinator.expire_overdue()
    s.storage.release_metadata.set()
    completed = await asyncio.wait_for(future, WAIT_S)
    assert completed.checkpoint_id == checkpoint_id
    assert s.participants.aborted == []


# -- min_pause_between_checkpoints_ms --------------------------------------------------------


async def test_no_checkpoint_is_triggered_before_the_minimum_pause_after_the_last_completion(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, min_pause_between_checkpoints_ms=20))
    assert (await s.complete()).checkpoint_id == 1
    s.clock.advance(20 * MS - 1)
    error = await failure_of(s.trigger())
    assert error.reason is CheckpointFailureReason.MINIMUM_TIME_BETWEEN_CHECKPOINTS
    assert s.coordinator.consecutive_failures == 0  # a refusal is not a failure
    assert len(s.participants.barriers) == 1
    s.clock.advance(1)
    assert (await s.complete()).checkpoint_id == 2


async def test_the_periodic_trigger_waits_for_the_minimum_pause_even_when_the_interval_is_due(
    tmp_path: Path,
) -> None:
    clock = WatchedClock(0)
    config = CheckpointConfig(interval_ms=10, min_pause_between_checkpoints_ms=50)
    s = Setup(tmp_path, config, clock=clock)
    s.coordinator.start()
    clock.advance(10 * MS)
    await s.participants.barrier(1)
    acknowledge_all(s.coordinator, 1)
    await s.participants.until(lambda: s.participants.completed == [1])  # at t=10 ms
    clock.advance(49 * MS)  # t=59 ms: four intervals due, the pause is not over
    await clock.ticks()
    assert len(s.participants.barriers) == 1
    clock.advance(1 * MS)
    second = await s.participants.barrier(2)
    assert second.checkpoint_id == 2
    await s.coordinator.shutdown()


# -- max_concurrent_checkpoints --------------------------------------------------------------


async def test_no_more_than_max_concurrent_checkpoints_are_in_flight_and_a_refusal_is_not_counted(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, max_concurrent_checkpoints=2))
    first, first_id = await s.triggered()
    _, second_id = await s.triggered()
    error = await failure_of(s.trigger())
    assert error.reason is CheckpointFailureReason.TOO_MANY_CONCURRENT_CHECKPOINTS
    assert "not triggered" in str(error)
    assert sorted(s.coordinator.pending_checkpoints) == [first_id, second_id]
    assert s.participants.failures == []  # tolerable_failed_checkpoints=0, yet no job failure
    acknowledge_all(s.coordinator, first_id)
    await asyncio.wait_for(first, WAIT_S)
    _, third_id = await s.triggered()
    assert third_id == second_id + 1


async def test_savepoints_ignore_max_concurrent_and_min_pause(tmp_path: Path) -> None:
    config = CheckpointConfig(
        interval_ms=0, max_concurrent_checkpoints=1, min_pause_between_checkpoints_ms=1_000
    )
    s = Setup(tmp_path, config)
    await s.complete()  # the pause starts
    refused = await failure_of(s.trigger())
    assert refused.reason is CheckpointFailureReason.MINIMUM_TIME_BETWEEN_CHECKPOINTS
    s.clock.advance(1_000 * MS)
    _, pending_id = await s.triggered()  # the one checkpoint allowed in flight
    savepoint_storage = RecordingStorage(tmp_path / "savepoint")
    savepoint = asyncio.ensure_future(
        s.coordinator.trigger_savepoint(savepoint_storage, str(tmp_path / "savepoint"))
    )
    barrier = await s.participants.barrier(3)
    assert barrier.checkpoint_id == pending_id + 1
    assert barrier.options.checkpoint_type is CheckpointType.SAVEPOINT
    acknowledge_all(s.coordinator, barrier.checkpoint_id, storage=savepoint_storage)
    assert (await asyncio.wait_for(savepoint, WAIT_S)).is_savepoint
    # a savepoint neither starts the pause nor subsumes the pending checkpoint
    assert list(s.coordinator.pending_checkpoints) == [pending_id]


# -- tolerable_failed_checkpoints ------------------------------------------------------------


async def test_failures_up_to_the_tolerable_number_are_tolerated_and_one_more_fails_the_job(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, tolerable_failed_checkpoints=2))
    for expected in (1, 2):
        future, checkpoint_id = await s.triggered()
        s.coordinator.decline_checkpoint(
            "source-0", checkpoint_id, CheckpointFailureReason.CHECKPOINT_DECLINED
        )
        await failure_of(future)
        assert s.coordinator.consecutive_failures == expected
        assert s.participants.failures == []
    future, checkpoint_id = await s.triggered()
    s.coordinator.decline_checkpoint(
        "sink", checkpoint_id, CheckpointFailureReason.IO_EXCEPTION, OSError("disk")
    )
    error = await failure_of(future)
    assert "task=sink" in str(error)
    assert "OSError('disk')" in str(error)
    [job_failure] = s.participants.failures
    assert isinstance(job_failure, CheckpointError)
    message = str(job_failure)
    assert "tolerable_failed_checkpoints=2" in message
    assert "3 consecutive" in message
    assert f"checkpoint_id={checkpoint_id}" in message
    assert "reason=IO_EXCEPTION" in message


async def test_a_completed_checkpoint_resets_the_count_of_consecutive_failures(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, tolerable_failed_checkpoints=1))
    future, checkpoint_id = await s.triggered()
    s.coordinator.decline_checkpoint("sink", checkpoint_id, CheckpointFailureReason.IO_EXCEPTION)
    await failure_of(future)
    await s.complete()
    assert s.coordinator.consecutive_failures == 0
    future, checkpoint_id = await s.triggered()
    s.coordinator.decline_checkpoint("sink", checkpoint_id, CheckpointFailureReason.IO_EXCEPTION)
    await failure_of(future)
    assert s.coordinator.consecutive_failures == 1
    assert s.participants.failures == []  # 1 then 1, never 2 in a row


async def test_tolerable_minus_one_tolerates_any_number_of_failures(tmp_path: Path) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, tolerable_failed_checkpoints=-1))
    for _ in range(10):
        future, checkpoint_id = await s.triggered()
        s.coordinator.decline_checkpoint(
            "sink", checkpoint_id, CheckpointFailureReason.CHECKPOINT_ASYNC_EXCEPTION
        )
        await failure_of(future)
    assert s.coordinator.consecutive_failures == 10
    assert s.participants.failures == []


@pytest.mark.parametrize("reason", sorted(UNCOUNTED_FAILURES, key=lambda r: r.name))
async def test_a_failure_that_does_not_count_never_fails_the_job(
    setup: Setup, reason: CheckpointFailureReason
) -> None:
    for _ in range(3):
        future, _ = await setup.triggered()
        setup.coordinator.abort_pending_checkpoints(reason)
        assert (await failure_of(future)).reason is reason
    assert setup.coordinator.consecutive_failures == 0
    assert setup.participants.failures == []


async def test_a_failed_savepoint_is_not_counted_against_the_checkpoints(
    setup: Setup, tmp_path: Path
) -> None:
    savepoint_storage = RecordingStorage(tmp_path / "savepoint")
    savepoint = asyncio.ensure_future(setup.coordinator.trigger_savepoint(savepoint_storage, "sp"))
    barrier = await setup.participants.barrier()
    setup.coordinator.decline_checkpoint(
        "sink", barrier.checkpoint_id, CheckpointFailureReason.CHECKPOINT_DECLINED
    )
    await failure_of(savepoint)
    assert setup.coordinator.consecutive_failures == 0
    assert setup.participants.failures == []
    await setup.coordinator.shutdown()
    # its files are cleaned up in its own storage, including a _metadata at its root
    assert {checkpoint_dir(barrier.checkpoint_id), METADATA_FILE} <= set(savepoint_storage.deleted)
    assert setup.storage.deleted == []


# -- declines --------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(CheckpointFailureReason), ids=lambda r: r.name)
async def test_a_decline_aborts_the_checkpoint_with_its_reason_and_counts_if_the_reason_counts(
    tmp_path: Path, reason: CheckpointFailureReason
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, tolerable_failed_checkpoints=-1))
    future, checkpoint_id = await s.triggered()
    s.coordinator.acknowledge_checkpoint(
        "source-0", checkpoint_id, state_ack(s.storage, checkpoint_id, "source-0", 0)
    )
    s.coordinator.decline_checkpoint("source-1", checkpoint_id, reason)
    error = await failure_of(future)
    assert error.reason is reason
    assert reason.name in str(error)
    assert error.retriable is (reason is not CheckpointFailureReason.CORRUPT_CHECKPOINT)
    assert s.coordinator.pending_checkpoints == {}
    assert s.participants.aborted == [checkpoint_id]
    assert s.coordinator.consecutive_failures == (0 if reason in UNCOUNTED_FAILURES else 1)
    await s.coordinator.shutdown()
    assert not s.storage.exists(checkpoint_dir(checkpoint_id)), "the aborted files were kept"


async def test_a_decline_of_an_unknown_or_finished_checkpoint_changes_nothing(
    setup: Setup,
) -> None:
    completed = await setup.complete()
    setup.coordinator.decline_checkpoint(
        "sink", completed.checkpoint_id, CheckpointFailureReason.IO_EXCEPTION
    )
    setup.coordinator.decline_checkpoint("sink", 99, CheckpointFailureReason.IO_EXCEPTION)
    assert setup.coordinator.consecutive_failures == 0
    assert setup.participants.aborted == []
    assert setup.coordinator.latest_completed_checkpoint() == completed


# -- mode ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(CheckpointingMode), ids=lambda m: m.name)
async def test_the_mode_travels_in_every_barrier_and_is_recorded_in_the_metadata(
    tmp_path: Path, mode: CheckpointingMode
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, mode=mode))
    completed = await s.complete()
    assert s.participants.barriers[0].options.mode is mode
    assert s.participants.barriers[0].options.checkpoint_type is CheckpointType.CHECKPOINT
    on_disk = decode_metadata(s.storage.read_bytes(metadata_path(completed.checkpoint_id)))
    assert on_disk.mode is mode
    assert completed.metadata.mode is mode


# -- not all tasks running -------------------------------------------------------------------


@pytest.mark.parametrize("tasks", [None, frozenset()], ids=["not-running", "no-tasks"])
async def test_no_checkpoint_is_triggered_while_not_every_task_is_running(
    tmp_path: Path, tasks: frozenset[str] | None
) -> None:
    s = Setup(tmp_path, tasks=tasks)
    error = await failure_of(s.trigger())
    assert error.reason is CheckpointFailureReason.NOT_ALL_REQUIRED_TASKS_RUNNING
    assert s.participants.barriers == []
    assert s.coordinator.next_checkpoint_id == 1
    assert s.coordinator.consecutive_failures == 0


# -- lifecycle -------------------------------------------------------------------------------


async def test_shutdown_aborts_pending_checkpoints_and_refuses_new_ones(setup: Setup) -> None:
    future, checkpoint_id = await setup.triggered()
    await setup.coordinator.shutdown()
    error = await failure_of(future)
    assert error.reason is CheckpointFailureReason.CHECKPOINT_COORDINATOR_SHUTDOWN
    assert setup.participants.aborted == [checkpoint_id]
    refused = await failure_of(setup.trigger())
    assert refused.reason is CheckpointFailureReason.CHECKPOINT_COORDINATOR_SHUTDOWN
    assert setup.participants.failures == []


async def test_after_stop_triggering_a_pending_checkpoint_may_still_complete(setup: Setup) -> None:
    future, checkpoint_id = await setup.triggered()
    await setup.coordinator.stop_triggering()
    refused = await failure_of(setup.trigger())
    assert refused.reason is CheckpointFailureReason.CHECKPOINT_COORDINATOR_SHUTDOWN
    acknowledge_all(setup.coordinator, checkpoint_id)
    assert (await asyncio.wait_for(future, WAIT_S)).checkpoint_id == checkpoint_id


async def test_shutdown_lets_a_checkpoint_whose_metadata_is_being_written_complete(
    setup: Setup,
) -> None:
    setup.storage.hold_metadata = True
    future, checkpoint_id = await setup.triggered()
    acknowledge_all(setup.coordinator, checkpoint_id)
    assert await asyncio.to_thread(setup.storage.metadata_started.wait, WAIT_S)
    shutdown = asyncio.ensure_future(setup.coordinator.shutdown())
    setup.storage.release_metadata.set()
    await asyncio.wait_for(shutdown, WAIT_S)
    assert (await asyncio.wait_for(future, WAIT_S)).checkpoint_id == checkpoint_id
    assert setup.participants.completed == [checkpoint_id]
    assert setup.participants.aborted == []


async def test_cancelling_the_caller_does_not_cancel_the_checkpoint(setup: Setup) -> None:
    caller = setup.trigger()
    barrier = await setup.participants.barrier()
    caller.cancel()
    acknowledge_all(setup.coordinator, barrier.checkpoint_id)
    await setup.participants.until(lambda: setup.participants.completed == [1])
    assert setup.coordinator.latest_completed_checkpoint() is not None


def _restored(
    storage: CheckpointStorage,
    checkpoint_id: int,
    kind: CheckpointType = CheckpointType.CHECKPOINT,
) -> CompletedCheckpoint:
    meta = CheckpointMetadata(
        checkpoint_id=checkpoint_id,
        checkpoint_type=kind,
        mode=CheckpointingMode.EXACTLY_ONCE,
        trigger_timestamp_ns=1,
        completion_timestamp_ns=2,
        key_groups=frozenset({0}),
    )
    return CompletedCheckpoint(meta, storage=storage, location=checkpoint_dir(checkpoint_id))


async def test_restored_checkpoints_are_retained_in_order_and_ids_continue_after_the_newest(
    tmp_path: Path,
) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=2), start_checkpoint_id=3)
    for checkpoint_id in (7, 5, 6):
        s.storage.write_file(f"{checkpoint_dir(checkpoint_id)}/state", b"s")
        s.coordinator.add_restored_checkpoint(_restored(s.storage, checkpoint_id))
    s.coordinator.add_restored_checkpoint(_restored(s.storage, 40, CheckpointType.SAVEPOINT))
    assert [c.checkpoint_id for c in s.coordinator.completed_checkpoints] == [6, 7]
    assert s.coordinator.next_checkpoint_id == 8
    assert (await s.complete()).checkpoint_id == 8
    await s.coordinator.shutdown()
    assert sorted(s.storage.list_dir("")) == [checkpoint_dir(7), checkpoint_dir(8)]


def test_ids_continue_after_the_largest_checkpoint_directory_complete_or_not(
    tmp_path: Path,
) -> None:
    storage = FsCheckpointStorage(str(tmp_path))
    assert max_checkpoint_id_in(storage) == 0
    for name in ("chk-3/_metadata", "chk-12/x", "chk-x/y", "shared/chk-99", "savepoint-50/z"):
        storage.write_file(name, b"")
    assert max_checkpoint_id_in(storage) == 12


async def test_the_history_keeps_only_the_newest_entries(tmp_path: Path) -> None:
    s = Setup(
        tmp_path, CheckpointConfig(interval_ms=0, tolerable_failed_checkpoints=-1), history_size=3
    )
    for _ in range(2):
        await s.complete()
    for _ in range(2):
        future, checkpoint_id = await s.triggered()
        s.coordinator.decline_checkpoint(
            "sink", checkpoint_id, CheckpointFailureReason.IO_EXCEPTION
        )
        await failure_of(future)
    assert [(h.checkpoint_id, h.status) for h in s.coordinator.history] == [
        (2, "completed"),
        (3, "failed"),
        (4, "failed"),
    ]
