"""The test kit's source: markers, positions, resume after a checkpoint."""

from __future__ import annotations

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
