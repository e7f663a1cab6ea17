"""Restart strategies and ``run_with_restarts``, driven by a ``ManualClock`` (no real waiting).

The jobs are small doubles whose ``run`` fails or finishes as the test says; the checkpoints
they restore from are real ``_metadata`` files in a real ``FsCheckpointStorage``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from metricsflow.checkpointing.metadata import CheckpointMetadata, encode_metadata, metadata_path
from metricsflow.checkpointing.protocol import CheckpointingMode, CheckpointType
from metricsflow.checkpointing.recovery import CheckpointRecovery, RestorePlan
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.errors import ConfigurationError
from metricsflow.runtime.restart import (
    FailureRateRestartStrategy,
    FixedDelayRestartStrategy,
    NoRestartStrategy,
    RestartStrategy,
    run_with_restarts,
)
from metricsflow.time.base import ManualClock

S = 1_000_000_000
WAIT_S = 5.0  # generous bound on an event that must happen; never a measured delay


class JobFailedError(Exception):
    pass


class ScriptedJob:
    """A job double: ``run`` raises the next scripted failure, or returns if there is none."""

    def __init__(self, failure: BaseException | None) -> None:
        self.failure = failure

    async def run(self) -> None:
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure


class JobFactory:
    """Builds one ``ScriptedJob`` per call and records the restore plan each was given."""

    def __init__(self, failures: list[BaseException | None]) -> None:
        self.failures = list(failures)
        self.plans: list[RestorePlan | None] = []

    def __call__(self, plan: RestorePlan | None) -> ScriptedJob:
        self.plans.append(plan)
        return ScriptedJob(self.failures.pop(0) if self.failures else None)

    @property
    def builds(self) -> int:
        return len(self.plans)


def write_checkpoint(
    storage: FsCheckpointStorage, checkpoint_id: int, key_groups: set[int]
) -> None:
    meta = CheckpointMetadata(
        checkpoint_id=checkpoint_id,
        checkpoint_type=CheckpointType.CHECKPOINT,
        mode=CheckpointingMode.EXACTLY_ONCE,
        trigger_timestamp_ns=checkpoint_id,
        completion_timestamp_ns=checkpoint_id + 1,
        key_groups=frozenset(key_groups),
    )
    storage.write_atomic(metadata_path(checkpoint_id), encode_metadata(meta))


@pytest.fixture
def storage(tmp_path: Path) -> FsCheckpointStorage:
    return FsCheckpointStorage(str(tmp_path / "checkpoints"))


def start(
    factory: JobFactory,
    storage: FsCheckpointStorage,
    strategy: RestartStrategy,
    clock: ManualClock | None,
    on_restart: Callable[[BaseException, int], None] | None = None,
) -> asyncio.Task[int]:
    return asyncio.create_task(
        run_with_restarts(
            factory,  # type: ignore[arg-type]
            CheckpointRecovery(storage),
            [0, 1],
            strategy,
            on_restart=on_restart,
            clock=clock,
        )
    )


# -- the strategies on their own ------------------------------------------------------------


def test_no_restart_strategy_never_allows_a_restart() -> None:
    strategy = NoRestartStrategy()
    assert strategy.can_restart(0.0) is False
    assert strategy.delay_s == 0.0


def test_fixed_delay_allows_exactly_max_attempts_restarts_whatever_the_time() -> None:
    strategy = FixedDelayRestartStrategy(max_attempts=3, delay=2.5)
    assert [strategy.can_restart(t * 1000.0) for t in range(5)] == [True, True, True, False, False]
    assert strategy.attempts == 5
    assert strategy.delay_s == 2.5


def test_fixed_delay_with_zero_attempts_gives_up_at_the_first_failure() -> None:
    assert FixedDelayRestartStrategy(max_attempts=0).can_restart(0.0) is False


def test_failure_rate_allows_max_failures_within_one_interval_and_refuses_one_more() -> None:
    strategy = FailureRateRestartStrategy(3, failure_rate_interval_s=60.0, delay=0.5)
    assert [strategy.can_restart(t) for t in (0.0, 10.0, 20.0)] == [True, True, True]
    assert strategy.can_restart(30.0) is False
    assert strategy.delay_s == 0.5


def test_failures_older_than_the_interval_leave_the_failure_rate_window() -> None:
    strategy = FailureRateRestartStrategy(2, failure_rate_interval_s=60.0)
    assert strategy.can_restart(0.0)
    assert strategy.can_restart(30.0)
    # at 60.0 the failure at 0.0 is exactly one interval old: still inside the window
    assert strategy.can_restart(60.0) is False
    # at 90.5 only 60.0 (and 90.5 itself) are in [30.5, 90.5]; 0.0 and 30.0 dropped out
    assert strategy.can_restart(90.5) is True
    assert strategy.can_restart(91.0) is False


def test_a_burst_after_a_quiet_period_is_judged_by_the_burst_alone() -> None:
    strategy = FailureRateRestartStrategy(1, failure_rate_interval_s=10.0)
    assert [strategy.can_restart(t) for t in (0.0, 11.0, 22.0, 33.0)] == [True] * 4
    assert strategy.can_restart(34.0) is False


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_attempts": -1}, "max_attempts=-1"),
        ({"max_attempts": 1, "delay": -0.5}, "delay=-0.5"),
    ],
)
def test_fixed_delay_refuses_a_negative_setting_naming_its_value(
    kwargs: dict[str, float], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        FixedDelayRestartStrategy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        ((0, 60.0, 1.0), "max_failures_per_interval=0"),
        ((1, 0.0, 1.0), "failure_rate_interval_s=0.0"),
        ((1, -5.0, 1.0), "failure_rate_interval_s=-5.0"),
        ((1, 60.0, -1.0), "delay=-1.0"),
    ],
)
def test_failure_rate_refuses_an_invalid_setting_naming_its_value(
    args: tuple[int, float, float], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named):
        FailureRateRestartStrategy(*args)


# -- run_with_restarts -----------------------------------------------------------------------


async def test_a_job_that_finishes_is_run_once_and_not_restarted(
    storage: FsCheckpointStorage,
) -> None:
    factory = JobFactory([None])
    restarts = await asyncio.wait_for(
        start(factory, storage, FixedDelayRestartStrategy(3), ManualClock()), WAIT_S
    )
    assert restarts == 0
    assert factory.plans == [None]


async def test_each_restart_waits_the_fixed_delay_on_the_clock_before_the_next_job_is_built(
    storage: FsCheckpointStorage,
) -> None:
    clock = ManualClock(1_000 * S)
    seen: list[tuple[str, int]] = []
    factory = JobFactory([JobFailedError("first"), JobFailedError("second"), None])
    run = start(
        factory,
        storage,
        FixedDelayRestartStrategy(max_attempts=5, delay=2.0),
        clock,
        on_restart=lambda exc, n: seen.append((str(exc), n)),
    )
    for restart in (1, 2):
        await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
        assert factory.builds == restart  # still waiting: no new job yet
        clock.advance(2 * S - 1)
        await asyncio.sleep(0)
        assert factory.builds == restart, "restarted before the delay elapsed"
        assert clock.sleepers == 1
        clock.advance(1)
    assert await asyncio.wait_for(run, WAIT_S) == 2
    assert factory.builds == 3
    assert seen == [("first", 1), ("second", 2)]


async def test_a_restarted_job_is_restored_from_the_newest_checkpoint(
    storage: FsCheckpointStorage,
) -> None:
    clock = ManualClock()
    write_checkpoint(storage, 3, {0, 1})
    write_checkpoint(storage, 7, {0, 1})
    factory = JobFactory([JobFailedError("boom"), None])
    run = start(factory, storage, FixedDelayRestartStrategy(1, delay=1.0), clock)
    await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
    clock.advance(S)
    assert await asyncio.wait_for(run, WAIT_S) == 1
    first, second = factory.plans
    assert first is None
    assert second is not None
    assert {kg: r.metadata.checkpoint_id for kg, r in second.key_groups.items()} == {0: 7, 1: 7}


async def test_when_fixed_delay_attempts_are_used_up_the_last_failure_is_raised(
    storage: FsCheckpointStorage,
) -> None:
    clock = ManualClock()
    factory = JobFactory([JobFailedError(f"failure {i}") for i in range(1, 4)])
    run = start(factory, storage, FixedDelayRestartStrategy(max_attempts=2, delay=0.5), clock)
    for _ in range(2):
        await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
        clock.advance(S // 2)
    with pytest.raises(JobFailedError, match="failure 3"):
        await asyncio.wait_for(run, WAIT_S)
    assert factory.builds == 3


async def test_no_restart_strategy_raises_the_first_failure_without_building_another_job(
    storage: FsCheckpointStorage,
) -> None:
    factory = JobFactory([JobFailedError("only")])
    with pytest.raises(JobFailedError, match="only"):
        await asyncio.wait_for(start(factory, storage, NoRestartStrategy(), ManualClock()), WAIT_S)
    assert factory.builds == 1


async def test_failure_rate_gives_up_when_failures_crowd_into_one_interval_of_the_clock(
    storage: FsCheckpointStorage,
) -> None:
    clock = ManualClock(0)
    strategy = FailureRateRestartStrategy(2, failure_rate_interval_s=60.0, delay=10.0)
    factory = JobFactory([JobFailedError(f"failure {i}") for i in range(1, 6)])
    run = start(factory, storage, strategy, clock)
    # failure 1 at t=0 -> restart at 10; failure 2 at t=10 -> restart at 20
    for _ in range(2):
        await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
        clock.advance(10 * S)
    # failure 3 at t=20: three failures in [-40, 20] > 2
    with pytest.raises(JobFailedError, match="failure 3"):
        await asyncio.wait_for(run, WAIT_S)
    assert factory.builds == 3


async def test_failure_rate_keeps_restarting_when_failures_are_spread_wider_than_the_interval(
    storage: FsCheckpointStorage,
) -> None:
    clock = ManualClock(0)
    strategy = FailureRateRestartStrategy(1, failure_rate_interval_s=60.0, delay=61.0)
    factory = JobFactory([JobFailedError(f"failure {i}") for i in range(1, 5)] + [None])
    run = start(factory, storage, strategy, clock)
    for _ in range(4):  # every failure comes 61 s after the previous one: one per window
        await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
        clock.advance(61 * S)
    assert await asyncio.wait_for(run, WAIT_S) == 4
    assert factory.builds == 5


async def test_without_a_clock_the_restart_delay_is_real_time(
    storage: FsCheckpointStorage,
) -> None:
    factory = JobFactory([JobFailedError("once"), None])
    restarts = await asyncio.wait_for(
        start(factory, storage, FixedDelayRestartStrategy(1, delay=0.0), None), WAIT_S
    )
    assert restarts == 1
    assert factory.builds == 2


async def test_cancelling_the_run_during_a_restart_delay_builds_no_further_job(
    storage: FsCheckpointStorage,
) -> None:
    clock = ManualClock()
    factory = JobFactory([JobFailedError("boom"), None])
    run = start(factory, storage, FixedDelayRestartStrategy(1, delay=5.0), clock)
    await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert clock.sleepers == 0
    clock.advance(10 * S)
    assert factory.builds == 1
