"""Dead-letter and late-points files rotate by size and keep a bounded number of files; a
replay does not append the same late points again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.errors import ConfigurationError
from metricsflow.runtime.base import StateInitializationContext
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, RecordBatch
from metricsflow.sinks.base import Sink, SinkOperator, decode_late_seq
from metricsflow.sinks.deadletter import (
    DeadLetterFile,
    LatePointsFile,
    RotatingJsonlFile,
    read_dead_letters,
)


class CollectingNothing(Sink):
    """A sink for the operator's own bookkeeping (late-point numbers), writing nowhere."""

    def open(self) -> None:
        pass

    def write_raw(self, batch: RawLinesBatch) -> None:
        pass

    def write_aggregates(self, batch: AggregateBatch) -> None:
        pass

    def flush(self, timeout_s: float | None = None) -> None:
        pass

    def close(self, *, flush: bool = True) -> None:
        pass


def test_files_rotate_by_size_and_only_the_newest_are_kept(tmp_path: Path) -> None:
    f = RotatingJsonlFile(tmp_path, "late", max_bytes=1000, max_files=3, fsync=False)
    rows = [orjson.dumps({"i": i, "pad": "x" * 80}) + b"\n" for i in range(100)]
    for row in rows:
        f.append(row)
    files = f.files()
    assert len(files) == 3
    assert f.path == files[-1]
    assert all(p.stat().st_size <= 1000 for p in files)
    kept = [orjson.loads(line)["i"] for p in files for line in p.read_bytes().splitlines()]
    assert kept == list(range(100 - len(kept), 100)), "the newest rows, in order, none twice"
    assert f.rotations >= 9


def test_an_earlier_processes_files_count_against_the_limit(tmp_path: Path) -> None:
    for n in range(5):
        (tmp_path / f"influxdb-{n}.jsonl").write_bytes(b"{}\n")
    dead = DeadLetterFile(tmp_path, max_bytes=200, max_files=2)
    for _ in range(10):
        dead.write(
            db="d", rp="raw", reason="rejected", status=400, error="e" * 50, lines=[b"m v=1"]
        )
    assert len(list(tmp_path.glob("influxdb-*.jsonl"))) == 2
    assert read_dead_letters(tmp_path)[-1]["reason"] == "rejected"


def test_bad_limits_are_refused_with_their_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="max_files=0"):
        RotatingJsonlFile(tmp_path, "late", max_bytes=10, max_files=0)


def late_batch(kg: int, values: list[float]) -> RecordBatch:
    n = len(values)
    return RecordBatch(
        key_group=kg,
        keys=("db\x00m,host=a\x00v",),
        key_idx=np.zeros(n, dtype=np.int32),
        ts_ns=np.arange(n, dtype=np.int64),
        values=np.array(values),
    )


def late_rows(directory: Path) -> list[tuple[int, int, float]]:
    return [
        (r["kg"], r["seq"], r["value"])
        for p in sorted(directory.glob("late-*.jsonl"))
        for r in map(orjson.loads, p.read_bytes().splitlines())
    ]


def test_a_replay_does_not_append_the_same_late_points_again(tmp_path: Path) -> None:
    late = LatePointsFile(tmp_path, scope="topic")
    late.write(late_batch(3, [1.0, 2.0, 3.0]), 0)
    late.write(late_batch(3, [4.0]), 3)
    # a new process (or a restore) replays from a checkpoint taken after the first batch
    again = LatePointsFile(tmp_path, scope="topic")
    again.write(late_batch(3, [4.0, 5.0]), 3)  # seq 3 written already, seq 4 is new
    again.write(late_batch(5, [9.0]), 0)  # another key group counts on its own
    assert late_rows(tmp_path) == [
        (3, 0, 1.0),
        (3, 1, 2.0),
        (3, 2, 3.0),
        (3, 3, 4.0),
        (3, 4, 5.0),
        (5, 0, 9.0),
    ]
    assert again.skipped == 1


def test_the_sink_operator_checkpoints_its_late_point_numbers_per_key_group() -> None:
    seen: list[tuple[int, int]] = []
    op = SinkOperator(
        "influxdb-sink", CollectingNothing(), on_late=lambda b, s: seen.append((b.key_group, s))
    )
    op.on_key_groups_assigned(frozenset({1, 2}), StateInitializationContext(False, (), ()))
    op.process_side_output("late", late_batch(1, [1.0, 2.0]))
    op.process_side_output("late", late_batch(1, [3.0]))
    snapshot = op.snapshot_state(CheckpointBarrier(1, 0))
    assert seen == [(1, 0), (1, 2)]
    restored = SinkOperator(
        "influxdb-sink", CollectingNothing(), on_late=lambda b, s: seen.append((b.key_group, s))
    )
    restored.on_key_groups_assigned(
        frozenset({1}), StateInitializationContext(True, (), list(snapshot.operator))
    )
    restored.process_side_output("late", late_batch(1, [3.0]))
    assert seen[-1] == (1, 3)
    assert decode_late_seq(snapshot.operator[0].data) == 3
