"""Clocks: where operators read wall-clock ("processing") time.

Event time comes from the data; processing time only drives idleness (watermarks.py) and
metrics. Everything that reads processing time takes a :class:`Clock`, so tests substitute a
:class:`ManualClock` and stay deterministic.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of wall-clock time in integer nanoseconds since the epoch."""

    def now_ns(self) -> int: ...


class SleepingClock(Clock, Protocol):
    """A clock that coroutines can also wait on (restart delays)."""

    async def sleep_ns(self, delay_ns: int) -> None:
        """Return once the clock has moved ``delay_ns`` forward."""


class SystemClock:
    """The real wall clock (``time.time_ns``)."""

    def now_ns(self) -> int:
        return time.time_ns()

    async def sleep_ns(self, delay_ns: int) -> None:
        await asyncio.sleep(max(delay_ns, 0) / 1e9)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that only moves when told to (tests). Never moves backwards.

    Coroutines may :meth:`sleep_ns` on it: they wake when :meth:`advance` or :meth:`set` moves
    the clock past their deadline, never on their own; a test learns that the code under test
    is waiting with :meth:`wait_for_sleepers`.
    """

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns
        self._sleepers: list[tuple[int, asyncio.Future[None]]] = []
        self._sleeper_waiters: list[asyncio.Future[None]] = []

    def now_ns(self) -> int:
        return self._now_ns

    def advance(self, delta_ns: int) -> int:
        """Move forward by ``delta_ns`` (>= 0); return the new time."""
        if delta_ns < 0:
            raise ValueError(f"a clock cannot move backwards (delta_ns={delta_ns})")
        self._now_ns += delta_ns
        self._wake()
        return self._now_ns

    def set(self, now_ns: int) -> None:
        """Jump to ``now_ns`` (>= the current time)."""
        if now_ns < self._now_ns:
            raise ValueError(f"a clock cannot move backwards ({now_ns} < {self._now_ns})")
        self._now_ns = now_ns
        self._wake()

    async def sleep_ns(self, delay_ns: int) -> None:
        """Wait until the clock reaches now + ``delay_ns`` (at once, after a yield, if <= 0)."""
        if delay_ns <= 0:
            await asyncio.sleep(0)
            return
        sleeper = (self._now_ns + delay_ns, asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        for waiter in self._sleeper_waiters:
            if not waiter.done():
                waiter.set_result(None)
        try:
            await sleeper[1]
        finally:
            self._sleepers.remove(sleeper)

    @property
    def sleepers(self) -> int:
        """How many coroutines are sleeping on this clock now."""
        return len(self._sleepers)

    async def wait_for_sleepers(self, count: int = 1) -> None:
        """Return once at least ``count`` coroutines are sleeping on this clock."""
        while len(self._sleepers) < count:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._sleeper_waiters.append(waiter)
            try:
                await waiter
            finally:
                self._sleeper_waiters.remove(waiter)

    def _wake(self) -> None:
        for deadline, future in self._sleepers:
            if deadline <= self._now_ns and not future.done():
                future.set_result(None)

    def __repr__(self) -> str:
        return f"ManualClock({self._now_ns})"
