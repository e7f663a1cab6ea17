"""Test harness for the window operators: outputs that record, a chain that wires operators
like chained tasks do, and state backends (heap and RocksDB)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.checkpointing.storage import FsCheckpointStorage
from metricsflow.runtime.base import Operator, OperatorContext, Output, StateInitializationContext
from metricsflow.runtime.records import (
    AggregateBatch,
    CorrectionRequest,
    RawLinesBatch,
    RecordBatch,
    SideOutput,
    Watermark,
)
from metricsflow.state.base import KeyedStateBackend
from metricsflow.state.handles import CheckpointStorage, KeyGroupStateHandle
from metricsflow.state.heap import HeapKeyedStateBackend
from metricsflow.state.rocksdb import RocksDBKeyedStateBackend

BackendFactory = Callable[[str], KeyedStateBackend]


def _backends(kind: str, tmp_path: Path) -> Iterator[BackendFactory]:
    made: list[KeyedStateBackend] = []
    counter = iter(range(1_000_000))
    if kind == "heap":

        def make(owner: str) -> KeyedStateBackend:
            made.append(HeapKeyedStateBackend(owner))
            return made[-1]
    else:

        def make(owner: str) -> KeyedStateBackend:
            path = tmp_path / f"rocks-{next(counter)}"
            made.append(RocksDBKeyedStateBackend(local_dir=str(path), owner=owner))
            return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture(params=["heap", "rocksdb"])
def backend_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BackendFactory]:
    """``backend_factory(owner)`` -> a fresh backend of the parametrized kind."""
    yield from _backends(request.param, tmp_path)


@pytest.fixture
def heap_backends(tmp_path: Path) -> Iterator[BackendFactory]:
    yield from _backends("heap", tmp_path)


@pytest.fixture
def rocksdb_backends(tmp_path: Path) -> Iterator[BackendFactory]:
    yield from _backends("rocksdb", tmp_path)


@pytest.fixture
def storage(tmp_path: Path) -> CheckpointStorage:
    return FsCheckpointStorage(str(tmp_path / "checkpoints"))


@dataclass
class Recorder(Output):
    """An output that keeps everything it is given, in order."""

    elements: list[Any] = field(default_factory=list)
    late: list[RecordBatch] = field(default_factory=list)
    requests: list[CorrectionRequest] = field(default_factory=list)

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        self.elements.append(element)

    def emit_watermark(self, watermark: Watermark) -> None:
        self.elements.append(watermark)

    def emit_side(self, tag: str, element: SideOutput) -> None:
        if isinstance(element, CorrectionRequest):
            assert tag == "correct"
            self.requests.append(element)
            return
        assert tag == "late"
        self.late.append(element)

    def batches(self) -> list[AggregateBatch]:
        return [e for e in self.elements if isinstance(e, AggregateBatch)]

    def watermarks(self) -> list[Watermark]:
        return [e for e in self.elements if isinstance(e, Watermark)]


class _Link(Output):
    """Feeds what one operator emits into the next one, and taps it into a recorder."""

    def __init__(self, tap: Recorder, downstream: Operator | None, next_out: Output | None):
        self.tap, self.downstream, self.next_out = tap, downstream, next_out

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        self.tap.emit(element)
        if self.downstream is not None and self.next_out is not None:
            self.downstream.process_batch(element, self.next_out)

    def emit_watermark(self, watermark: Watermark) -> None:
        self.tap.emit_watermark(watermark)
        if self.downstream is not None and self.next_out is not None:
            self.downstream.process_watermark(watermark, self.next_out)

    def emit_side(self, tag: str, element: SideOutput) -> None:
        self.tap.emit_side(tag, element)


class Chain:
    """Operators chained in one task: ``chain.push(batch)`` runs it through all of them.

    ``chain.taps[i]`` records what operator ``i`` emitted (and its late side output).
    """

    def __init__(
        self,
        operators: Sequence[Operator],
        backends: Sequence[KeyedStateBackend],
        storage: CheckpointStorage,
        key_groups: frozenset[int],
        restore: Sequence[tuple[list[KeyGroupStateHandle], list[Any]]] | None = None,
    ) -> None:
        self.operators = list(operators)
        self.backends = list(backends)
        self.storage = storage
        self.taps = [Recorder() for _ in operators]
        self.outputs: list[Output] = []
        next_out: Output | None = None
        for i in reversed(range(len(operators))):
            downstream = operators[i + 1] if i + 1 < len(operators) else None
            next_out = _Link(self.taps[i], downstream, next_out)
            self.outputs.insert(0, next_out)
        for i, op in enumerate(operators):
            op.setup(OperatorContext(op.uid, key_groups, backends[i], storage))
            keyed, operator_state = restore[i] if restore else ([], [])
            if keyed:
                backends[i].restore(keyed, storage)
            op.initialize_state(
                StateInitializationContext(bool(restore), tuple(keyed), tuple(operator_state))
            )
            op.open()

    def push(self, batch: RecordBatch | AggregateBatch) -> None:
        self.operators[0].process_batch(batch, self.outputs[0])

    def watermark(self, watermark: Watermark) -> None:
        self.operators[0].process_watermark(watermark, self.outputs[0])

    def finish(self) -> None:
        for op, out in zip(self.operators, self.outputs, strict=True):
            op.finish(out)

    def tick(self, now_ns: int = 0) -> None:
        """A processing-time tick for every operator that takes one (as the task does)."""
        for op, out in zip(self.operators, self.outputs, strict=True):
            callback = getattr(op, "on_processing_time", None)
            if callback is not None:
                callback(now_ns, out)

    def checkpoint(self, checkpoint_id: int) -> list[tuple[list[KeyGroupStateHandle], list[Any]]]:
        """Snapshot every operator (as a task does on a barrier) and persist it now."""
        barrier = CheckpointBarrier(checkpoint_id, 0)
        result = []
        for op in self.operators:
            snap = op.snapshot_state(barrier)
            keyed = snap.keyed.run() if snap.keyed is not None else []
            result.append((keyed, list(snap.operator)))
        return result


@pytest.fixture
def chain_factory() -> type[Chain]:
    return Chain


@pytest.fixture
def recorder_factory() -> type[Recorder]:
    return Recorder
