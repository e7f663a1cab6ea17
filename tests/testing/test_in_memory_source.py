"""The test kit's source: markers, positions, resume after a checkpoint."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from metricsflow.runtime.records import EndOfPartition, RecordBatch
from metricsflow.testing import CRASH, END, InMemorySource, SimulatedCrashError


def _batch(i: int) -> RecordBatch:
    return RecordBatch(0, ("k",), np.zeros(1, np.int32), np.array([i], np.int64), np.array([1.0]))


async def test_a_crash_marker_raises_once_and_a_restarted_reader_resumes_after_the_position() -> (
    None
):
    source = InMemorySource({0: [_batch(0), CRASH, _batch(1), END]})
    reader = source.create_reader(0)
    reader.restore_position(None)
    assert await reader.poll() is not None
    position = reader.snapshot_position(1)
    with pytest.raises(SimulatedCrashError):
        await reader.poll()

    restarted = source.create_reader(0)
    restarted.restore_position(position)
    element = await restarted.poll()
    assert isinstance(element, RecordBatch)
    assert int(element.ts_ns[0]) == 1
    assert isinstance(await restarted.poll(), EndOfPartition)


async def test_a_reader_past_its_input_without_end_goes_idle() -> None:
    reader = InMemorySource({0: [_batch(0)]}).create_reader(0)
    reader.restore_position(None)
    await reader.poll()
    assert await reader.poll() is None


def test_positions_are_committed_only_for_completed_checkpoints() -> None:
    source = InMemorySource({0: [_batch(0)]})
    reader = source.create_reader(0)
    reader.restore_position(None)
    reader.snapshot_position(3)
    assert source.committed == {}
    reader.notify_checkpoint_complete(3)
    assert source.committed == {0: 0}


async def test_waiting_for_a_position_returns_once_every_key_group_has_read_that_far() -> None:
    source = InMemorySource({0: [_batch(0), _batch(1)], 1: [_batch(2), END]})
    readers = {kg: source.create_reader(kg) for kg in (0, 1)}
    for reader in readers.values():
        reader.restore_position(None)
    waiter = asyncio.create_task(source.wait_for_position(2))
    await readers[0].poll()
    await readers[0].poll()
    await readers[1].poll()
    await asyncio.sleep(0)
    assert not waiter.done(), "returned before key group 1 reached position 2"
    assert source.positions == {0: 2, 1: 1}
    await readers[1].poll()
    await asyncio.wait_for(waiter, 5.0)
    await asyncio.wait_for(source.wait_for_position(1, key_groups=[1]), 5.0)  # already there
