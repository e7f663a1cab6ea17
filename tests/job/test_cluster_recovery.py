"""``ClusterRecovery`` on hand-written checkpoint roots: ranking by (restore generation,
source offset), savepoints with Flink's meaning, no silent empty start, and the retention
guard's view of other roots."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from metricsflow.checkpointing.metadata import (
    METADATA_FILE,
    CheckpointMetadata,
    encode_metadata,
    metadata_path,
)
from metricsflow.checkpointing.protocol import CheckpointingMode, CheckpointType
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.job.recovery import (
    GENERATIONS_PROPERTY,
    ClusterRecovery,
    PartitionStateMissingError,
    generation_of,
)
from metricsflow.sources.base import encode_offset
from metricsflow.state.handles import OperatorStateHandle

SOURCE = "kafka-source"


def metadata(
    checkpoint_id: int,
    offsets: dict[int, int],
    generations: dict[int, int] | None = None,
    *,
    savepoint: bool = False,
    properties: dict[str, str] | None = None,
) -> CheckpointMetadata:
    props = dict(properties or {})
    if generations is not None:
        gens = {str(k): v for k, v in generations.items()}
        props[GENERATIONS_PROPERTY] = orjson.dumps(gens).decode()
    return CheckpointMetadata(
        checkpoint_id=checkpoint_id,
        checkpoint_type=CheckpointType.SAVEPOINT if savepoint else CheckpointType.CHECKPOINT,
        mode=CheckpointingMode.EXACTLY_ONCE,
        trigger_timestamp_ns=checkpoint_id,
        completion_timestamp_ns=checkpoint_id,
        key_groups=frozenset(offsets),
        operator=tuple(
            OperatorStateHandle(SOURCE, kg, encode_offset(off)) for kg, off in offsets.items()
        ),
        properties=props,
    )


def checkpoint(root: Path, meta: CheckpointMetadata) -> None:
    FsCheckpointStorage(str(root)).write_atomic(
        metadata_path(meta.checkpoint_id), encode_metadata(meta)
    )


def savepoint(path: Path, meta: CheckpointMetadata) -> str:
    FsCheckpointStorage(str(path)).write_atomic(METADATA_FILE, encode_metadata(meta))
    return str(path)


def test_the_highest_offset_wins_within_a_generation(tmp_path: Path) -> None:
    checkpoint(tmp_path / "ck" / "w1", metadata(7, {0: 100, 1: 50}))
    checkpoint(tmp_path / "ck" / "w2", metadata(3, {1: 80}))
    plan = ClusterRecovery(tmp_path / "ck", SOURCE).plan({0, 1})
    assert {kg: r.storage.root_url.rsplit("/", 1)[-1] for kg, r in plan.key_groups.items()} == {
        0: "w1",
        1: "w2",
    }


def test_a_savepoint_beats_newer_checkpoints_and_the_new_runs_checkpoints_beat_it(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ck"
    checkpoint(root / "w1", metadata(9, {0: 500, 1: 400}, {0: 0, 1: 0}))
    sp = savepoint(tmp_path / "sp", metadata(4, {0: 100, 1: 90}, {0: 0, 1: 0}, savepoint=True))
    recovery = ClusterRecovery(root, SOURCE, own_root=root / "w1", savepoint=sp)
    assert recovery.generation == 1
    plan = recovery.plan({0, 1})
    assert all(r.metadata.is_savepoint for r in plan.key_groups.values())
    assert recovery.generations == {0: 1, 1: 1}
    # the new run checkpoints (generation 1, lower offsets than the old run's chk-9)
    checkpoint(
        root / "w1",
        metadata(10, {0: 120, 1: 95}, properties=recovery.properties({0, 1})),
    )
    again = ClusterRecovery(root, SOURCE, savepoint=sp)  # restarted with the flag left in
    assert again.generation == 1, "joins the run already started from this savepoint"
    plan = ClusterRecovery(root, SOURCE).plan({0, 1})
    assert {kg: r.metadata.checkpoint_id for kg, r in plan.key_groups.items()} == {0: 10, 1: 10}


def test_a_worker_restarted_with_the_same_savepoint_flag_does_not_roll_back_again(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ck"
    sp = savepoint(tmp_path / "sp", metadata(4, {0: 100}, {0: 0}, savepoint=True))
    first = ClusterRecovery(root, SOURCE, own_root=root / "w1", savepoint=sp)
    first.plan({0})
    checkpoint(
        root / "w1", metadata(5, {0: 300}, first.generations, properties=first.properties({0}))
    )
    second = ClusterRecovery(root, SOURCE, own_root=root / "w1", savepoint=sp)
    assert second.generation == first.generation
    (chosen,) = second.plan({0}).key_groups.values()
    assert not chosen.metadata.is_savepoint
    assert generation_of(chosen.metadata, 0) == first.generation


def test_a_partition_with_committed_offsets_and_no_checkpoint_refuses_to_start_empty(
    tmp_path: Path,
) -> None:
    root = tmp_path / "ck"
    checkpoint(root / "w1", metadata(2, {0: 10}))
    recovery = ClusterRecovery(root, SOURCE)
    with pytest.raises(PartitionStateMissingError) as info:
        recovery.plan({0, 3}, committed={0: 10, 3: 4711})
    message = str(info.value)
    assert "partition 3 (committed offset 4711)" in message
    assert str(root / "w1") in message
    assert recovery.refused == {3: 1}
    # never committed: a new partition starts empty; explicitly allowed: too
    assert recovery.plan({0, 3}, committed={0: 10, 3: None}).get(3) is None
    allowed = ClusterRecovery(root, SOURCE, allow_empty_start=True)
    assert allowed.plan({3}, committed={3: 4711}).get(3) is None


def test_the_retention_guard_sees_newer_checkpoints_in_other_roots_only(tmp_path: Path) -> None:
    root = tmp_path / "ck"
    mine = metadata(5, {2: 100}, {2: 0})
    checkpoint(root / "w1", mine)
    guard = ClusterRecovery(root, SOURCE, own_root=root / "w1")
    assert not guard.superseded(2, mine)
    checkpoint(root / "w2", metadata(1, {2: 99}, {2: 0}))
    assert not guard.superseded(2, mine), "older state elsewhere does not supersede"
    checkpoint(root / "w2", metadata(2, {2: 100}, {2: 0}))
    assert guard.superseded(2, mine)
    assert not guard.superseded(3, mine)
