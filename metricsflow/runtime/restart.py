"""Restart strategies (Flink's): what to do when a job fails.

- :class:`FixedDelayRestartStrategy`: up to ``max_attempts`` restarts, ``delay_s`` apart.
- :class:`FailureRateRestartStrategy`: restart after ``delay_s`` as long as there were at most
  ``max_failures_per_interval`` failures in the last ``failure_rate_interval_s``.
- :class:`NoRestartStrategy`: fail at once.

:func:`run_with_restarts` runs a job and, after every failure the strategy allows, builds a new
one restored from the newest valid completed checkpoint of each key group, as a worker does.
A :class:`~metricsflow.runtime.isolation.RecordProcessingError` (failure isolation) restarts
at once and is not counted.
"""

from __future__ import annotations

import abc
import asyncio
import collections
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from metricsflow.checkpointing.recovery import CheckpointRecovery, RestorePlan
from metricsflow.errors import ConfigurationError
from metricsflow.runtime.isolation import RecordProcessingError
from metricsflow.runtime.job import Job
from metricsflow.time.base import SleepingClock

logger = logging.getLogger(__name__)


class RestartStrategy(abc.ABC):
    @abc.abstractmethod
    def can_restart(self, now_s: float) -> bool:
        """Record a failure at ``now_s`` and say whether the job may restart."""

    @property
    @abc.abstractmethod
    def delay_s(self) -> float: ...


class NoRestartStrategy(RestartStrategy):
    def can_restart(self, now_s: float) -> bool:
        return False

    @property
    def delay_s(self) -> float:
        return 0.0


@dataclass
class FixedDelayRestartStrategy(RestartStrategy):
    max_attempts: int
    delay: float = 1.0
    attempts: int = 0

    def __post_init__(self) -> None:
        if self.max_attempts < 0 or self.delay < 0:
            raise ConfigurationError(
                f"FixedDelayRestartStrategy needs max_attempts >= 0 and delay >= 0, got "
                f"max_attempts={self.max_attempts} delay={self.delay}"
            )

    def can_restart(self, now_s: float) -> bool:
        self.attempts += 1
        return self.attempts <= self.max_attempts

    @property
    def delay_s(self) -> float:
        return self.delay


class FailureRateRestartStrategy(RestartStrategy):
    def __init__(
        self, max_failures_per_interval: int, failure_rate_interval_s: float, delay: float = 1.0
    ) -> None:
        if max_failures_per_interval < 1 or failure_rate_interval_s <= 0 or delay < 0:
            raise ConfigurationError(
                "FailureRateRestartStrategy needs max_failures_per_interval >= 1, "
                "failure_rate_interval_s > 0 and delay >= 0, got "
                f"max_failures_per_interval={max_failures_per_interval} "
                f"failure_rate_interval_s={failure_rate_interval_s} delay={delay}"
            )
        self.max_failures = max_failures_per_interval
        self.interval_s = failure_rate_interval_s
        self.delay = delay
        self._failures: collections.deque[float] = collections.deque()

    def can_restart(self, now_s: float) -> bool:
        self._failures.append(now_s)
        while self._failures and self._failures[0] < now_s - self.interval_s:
            self._failures.popleft()
        return len(self._failures) <= self.max_failures

    @property
    def delay_s(self) -> float:
        return self.delay


async def run_with_restarts(
    job_factory: Callable[[RestorePlan | None], Job],
    recovery: CheckpointRecovery,
    key_groups: Iterable[int],
    strategy: RestartStrategy,
    *,
    restore: RestorePlan | None = None,
    on_restart: Callable[[BaseException, int], None] | None = None,
    clock: SleepingClock | None = None,
) -> int:
    """Run a job to its end, restarting it after failures; return how many restarts.

    Failure times and restart delays follow ``clock`` (tests pass a ``ManualClock``); without
    one, ``time.monotonic`` and ``asyncio.sleep``.
    """
    wanted = sorted(set(key_groups))
    restarts = 0
    plan = restore
    while True:
        job = job_factory(plan)
        try:
            await job.run()
            return restarts
        except RecordProcessingError as exc:
            # failure isolation: restart at once, not counted (runtime/isolation.py)
            logger.warning("job failed on records, restarting to isolate them error=%r", exc)
            if on_restart is not None:
                on_restart(exc, restarts)
        except Exception as exc:
            now_s = time.monotonic() if clock is None else clock.now_ns() / 1e9
            if not strategy.can_restart(now_s):
                logger.error("job failed, no restart left restarts=%d error=%r", restarts, exc)
                raise
            restarts += 1
            logger.warning(
                "job failed, restarting restart=%d delay_s=%.3f error=%r",
                restarts,
                strategy.delay_s,
                exc,
            )
            if on_restart is not None:
                on_restart(exc, restarts)
            if clock is None:
                await asyncio.sleep(strategy.delay_s)
            else:
                await clock.sleep_ns(round(strategy.delay_s * 1e9))
        plan = CheckpointRecovery(
            recovery.storage, verify_checksums=recovery.verify_checksums
        ).plan(wanted)
