"""``ManualClock``: moves only when told to; coroutines sleeping on it wake when it passes them."""

from __future__ import annotations

import asyncio

import pytest

from metricsflow.time.base import ManualClock, SystemClock

WAIT_S = 5.0


def test_a_manual_clock_never_moves_backwards() -> None:
    clock = ManualClock(100)
    assert clock.advance(5) == 105
    clock.set(200)
    assert clock.now_ns() == 200
    with pytest.raises(ValueError, match="delta_ns=-1"):
        clock.advance(-1)
    with pytest.raises(ValueError, match="199 < 200"):
        clock.set(199)
    assert repr(clock) == "ManualClock(200)"


async def test_a_sleeper_wakes_only_once_the_clock_reaches_its_deadline() -> None:
    clock = ManualClock(1_000)
    sleeper = asyncio.create_task(clock.sleep_ns(50))
    await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
    clock.advance(49)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.set(1_050)
    await asyncio.wait_for(sleeper, WAIT_S)
    assert clock.sleepers == 0


async def test_sleepers_wake_in_deadline_order_as_the_clock_passes_them() -> None:
    clock = ManualClock()
    woke: list[int] = []

    async def sleep(delay: int) -> None:
        await clock.sleep_ns(delay)
        woke.append(delay)

    tasks = [asyncio.create_task(sleep(d)) for d in (30, 10, 20)]
    await asyncio.wait_for(clock.wait_for_sleepers(3), WAIT_S)
    clock.advance(15)
    await asyncio.wait_for(asyncio.gather(*tasks[1:2]), WAIT_S)
    assert woke == [10]
    clock.advance(100)
    await asyncio.wait_for(asyncio.gather(*tasks), WAIT_S)
    assert sorted(woke[1:]) == [20, 30]


async def test_a_zero_sleep_returns_without_the_clock_moving() -> None:
    clock = ManualClock(7)
    await asyncio.wait_for(clock.sleep_ns(0), WAIT_S)
    assert clock.sleepers == 0
    assert clock.now_ns() == 7


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock()
    sleeper = asyncio.create_task(clock.sleep_ns(10))
    await asyncio.wait_for(clock.wait_for_sleepers(), WAIT_S)
    sleeper.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeper
    assert clock.sleepers == 0


async def test_the_system_clock_sleeps_in_real_time() -> None:
    clock = SystemClock()
    before = clock.now_ns()
    await clock.sleep_ns(1_000_000)
    assert clock.now_ns() - before >= 1_000_000
