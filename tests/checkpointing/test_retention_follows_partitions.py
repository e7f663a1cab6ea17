"""Retention follows partitions: a checkpoint past ``num_retained`` that is the newest one
of its storage holding a key group the job no longer checkpoints (handed over) is pinned
until the ``RetentionGuard`` reports a newer checkpoint of that key group elsewhere."""

from __future__ import annotations

import asyncio
from pathlib import Path

from metricsflow.checkpointing.config import CheckpointConfig
from metricsflow.checkpointing.metadata import CheckpointMetadata, checkpoint_dir
from tests.checkpointing.coordinator_doubles import WAIT_S, Setup, acknowledge_all

ALL = ["sink", "source-0", "source-1"]  # acknowledge key groups 0, 1, 2
KEPT = ["sink", "source-0"]  # key group 2 moved to another worker


class Guard:
    def __init__(self) -> None:
        self.newer_elsewhere: set[int] = set()
        self.asked: list[tuple[int, int]] = []

    def superseded(self, key_group: int, metadata: CheckpointMetadata) -> bool:
        self.asked.append((key_group, metadata.checkpoint_id))
        return key_group in self.newer_elsewhere


async def complete(s: Setup, tasks: list[str]) -> int:
    s.participants.tasks = frozenset(tasks)
    future, checkpoint_id = await s.triggered()
    acknowledge_all(s.coordinator, checkpoint_id, tasks)
    await asyncio.wait_for(future, WAIT_S)
    return checkpoint_id


async def eventually(s: Setup, expected: list[int]) -> None:
    """Until the storage holds exactly ``expected`` (discards run in the background)."""
    want = sorted(checkpoint_dir(i) for i in expected)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while sorted(s.storage.list_dir("")) != want:
        assert loop.time() < deadline, (sorted(s.storage.list_dir("")), want)
        await asyncio.sleep(0.005)


async def test_the_newest_holder_of_a_handed_over_key_group_outlives_retention_until_superseded(
    tmp_path: Path,
) -> None:
    guard = Guard()
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=2), retention_guard=guard)
    await complete(s, ALL)
    holder = await complete(s, ALL)
    later = [await complete(s, KEPT) for _ in range(4)]
    # the older holder is discarded, the newest holder of key group 2 is pinned
    await eventually(s, [holder, *later[-2:]])
    assert list(s.coordinator.pinned) == [holder]
    assert (2, holder) in guard.asked
    guard.newer_elsewhere.add(2)  # the new owner completed a checkpoint of key group 2
    last = await complete(s, KEPT)
    await eventually(s, [later[-1], last])
    assert s.coordinator.pinned == {}


async def test_a_key_group_that_comes_back_releases_its_pinned_checkpoint(tmp_path: Path) -> None:
    guard = Guard()
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=1), retention_guard=guard)
    holder = await complete(s, ALL)
    await complete(s, KEPT)
    kept = await complete(s, KEPT)
    await eventually(s, [holder, kept])
    assert list(s.coordinator.pinned) == [holder]
    await complete(s, ALL)  # key group 2 assigned back and checkpointed here
    last = await complete(s, ALL)
    await eventually(s, [last])
    assert s.coordinator.pinned == {}


async def test_without_a_guard_retention_is_a_plain_count(tmp_path: Path) -> None:
    s = Setup(tmp_path, CheckpointConfig(interval_ms=0, num_retained=1))
    await complete(s, ALL)
    last = [await complete(s, KEPT) for _ in range(2)][-1]
    await eventually(s, [last])
