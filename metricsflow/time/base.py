"""Clocks: where operators read wall-clock ("processing") time.

Event time comes from the data; processing time only drives idleness (watermarks.py) and
metrics. Everything that reads processing time takes a :class:`Clock`, so tests substitute a
:class:`ManualClock` and stay deterministic.
"""

from __future__ import annotations

import time
from typing import Protocol, runtime_checkable


@runtime_checkable
class Clock(Protocol):
    """A source of wall-clock time in integer nanoseconds since the epoch."""

    def now_ns(self) -> int: ...


class SystemClock:
    """The real wall clock (``time.time_ns``)."""

    def now_ns(self) -> int:
        return time.time_ns()

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that only moves when told to (tests). Never moves backwards."""

    def __init__(self, start_ns: int = 0) -> None:
        self._now_ns = start_ns

    def now_ns(self) -> int:
        return self._now_ns

    def advance(self, delta_ns: int) -> int:
        """Move forward by ``delta_ns`` (>= 0); return the new time."""
        if delta_ns < 0:
            raise ValueError(f"a clock cannot move backwards (delta_ns={delta_ns})")
        self._now_ns += delta_ns
        return self._now_ns

    def set(self, now_ns: int) -> None:
        """Jump to ``now_ns`` (>= the current time)."""
        if now_ns < self._now_ns:
            raise ValueError(f"a clock cannot move backwards ({now_ns} < {self._now_ns})")
        self._now_ns = now_ns

    def __repr__(self) -> str:
        return f"ManualClock({self._now_ns})"
