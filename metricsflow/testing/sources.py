"""``InMemorySource``: a replayable, partitioned source for tests.

Each key group reads a list of elements: ``RecordBatch`` / ``RawLinesBatch``, and markers:

- :data:`END`: the key group's input ends here (``EndOfPartition``); without it the reader
  goes idle (``poll`` returns ``None``) after the last element, like a caught-up Kafka reader;
  ``element_delay_s`` slows reading down (so that checkpoints happen between elements);
- :data:`CRASH`: raises :class:`SimulatedCrashError` at this position, **once** (the source
  object remembers it across job restarts, so a restarted job gets past it);
- :data:`CRASH_DURING_CHECKPOINT`: arms a crash that fires on the first ``poll`` after the next
  barrier of this key group: after the synchronous phase of that checkpoint, before it can
  complete. Also once (it counts as fired when the crash happens; if the job fails for
  another reason first, the replay arms it again).

The position (index of the next element) is the reader's checkpointed operator state, so a job
restored from checkpoint *n* resumes exactly after it. ``committed`` holds, per key group, the
position of the last checkpoint whose completion was notified (like Kafka offset commits).
``positions`` holds each reader's current position, and :meth:`InMemorySource.wait_for_position`
lets a test wait until the job has read that far (an event, not a sleep).

Failure isolation (``metricsflow.runtime.isolation``): with ``fetch_size`` > 1 a reader hands
out up to that many consecutive ``RecordBatch`` elements (same keys) merged into one, like a
Kafka fetch of several records (a marker or another kind of element ends a fetch); each
element is one source position. Inside a suspect range it hands them out one by one, poison
positions are skipped, and ``dead_letter`` appends ``(key_group, position, error)`` to
``InMemorySource.dead_letters``.
"""

from __future__ import annotations

import asyncio
import enum
import struct
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from metricsflow.errors import SerializationError
from metricsflow.runtime.isolation import FailureIsolation, PositionRange
from metricsflow.runtime.records import EndOfPartition, RawLinesBatch, RecordBatch
from metricsflow.runtime.source import Source, SourceElement, SourceReader
from metricsflow.runtime.task import FatalTaskError


class Marker(enum.Enum):
    END = "end"
    CRASH = "crash"
    CRASH_DURING_CHECKPOINT = "crash-during-checkpoint"


END = Marker.END
CRASH = Marker.CRASH
CRASH_DURING_CHECKPOINT = Marker.CRASH_DURING_CHECKPOINT

InMemoryElement = RecordBatch | RawLinesBatch | Marker

_POSITION = struct.Struct(">BQ")
_POSITION_VERSION = 1


class SimulatedCrashError(FatalTaskError):
    """A crash injected by a test (a ``CRASH`` marker): the job fails as if killed."""

    retriable = True


def encode_position(index: int) -> bytes:
    return _POSITION.pack(_POSITION_VERSION, index)


def decode_position(data: bytes) -> int:
    if len(data) != _POSITION.size or data[0] != _POSITION_VERSION:
        raise SerializationError(f"not an InMemorySource position: {data!r}")
    return int(_POSITION.unpack(data)[1])


class InMemorySource(Source):
    """See the module docstring. ``partitions`` maps key group -> elements."""

    def __init__(
        self,
        partitions: Mapping[int, Sequence[InMemoryElement]],
        uid: str = "source",
        *,
        idle_sleep_s: float = 0.001,
        element_delay_s: float = 0.0,
        fetch_size: int = 1,
    ) -> None:
        super().__init__(uid)
        self.fetch_size = fetch_size
        self.dead_letters: list[tuple[int, int, str]] = []
        self.partitions = {kg: list(elements) for kg, elements in partitions.items()}
        self.idle_sleep_s = idle_sleep_s
        self.element_delay_s = element_delay_s
        self.fired: set[tuple[int, int]] = set()
        self.committed: dict[int, int] = {}
        self.positions: dict[int, int] = {}
        self.crashes = 0
        self._position_waiters: list[tuple[int, frozenset[int], asyncio.Future[None]]] = []

    @property
    def key_groups(self) -> frozenset[int]:
        return frozenset(self.partitions)

    def create_reader(self, key_group: int) -> InMemoryReader:
        return InMemoryReader(self, key_group)

    def record_position(self, key_group: int, position: int) -> None:
        """A reader of ``key_group`` handed out everything before ``position``."""
        self.positions[key_group] = position
        for waiter in self._position_waiters:
            if not waiter[2].done() and self._reached(waiter[0], waiter[1]):
                waiter[2].set_result(None)

    async def wait_for_position(
        self, position: int, key_groups: Iterable[int] | None = None
    ) -> None:
        """Return once the reader of every key group in ``key_groups`` (default: all) has
        handed out the elements before ``position`` (markers count as elements)."""
        wanted = self.key_groups if key_groups is None else frozenset(key_groups)
        if self._reached(position, wanted):
            return
        waiter = (position, wanted, asyncio.get_running_loop().create_future())
        self._position_waiters.append(waiter)
        try:
            await waiter[2]
        finally:
            self._position_waiters.remove(waiter)

    def _reached(self, position: int, key_groups: frozenset[int]) -> bool:
        return all(self.positions.get(kg, 0) >= position for kg in key_groups)


class InMemoryReader(SourceReader):
    def __init__(self, source: InMemorySource, key_group: int) -> None:
        self.source = source
        self.key_group = key_group
        self.elements = source.partitions.get(key_group, [])
        self.index = 0
        self._snapshots: dict[int, int] = {}
        self._armed: tuple[int, int] | None = None
        self._crash_on_poll: tuple[int, int] | None = None
        self._ended = False
        self._last_range: PositionRange | None = None
        self._isolation: FailureIsolation | None = None

    def restore_position(self, position: bytes | None) -> None:
        self.index = 0 if position is None else decode_position(position)

    def _crash(self, where: str) -> SimulatedCrashError:
        self.source.crashes += 1
        return SimulatedCrashError(
            f"simulated crash key_group={self.key_group} position={self.index} ({where})"
        )

    async def poll(self) -> SourceElement | None:
        if self._crash_on_poll is not None:
            self.source.fired.add(self._crash_on_poll)
            self._crash_on_poll = None
            raise self._crash("during checkpoint")
        while self.index < len(self.elements):
            element = self.elements[self.index]
            marker = (self.key_group, self.index)
            if element is CRASH:
                if marker not in self.source.fired:
                    self.source.fired.add(marker)
                    raise self._crash("marker")
                self.index += 1
                continue
            if element is CRASH_DURING_CHECKPOINT:
                if marker not in self.source.fired:
                    self._armed = marker
                self.index += 1
                continue
            if self._isolation is not None and self._isolation.is_poison(
                self.key_group, self.index
            ):
                self._isolation.note_skipped()
                self.index += 1
                continue
            await asyncio.sleep(self.source.element_delay_s)
            first = self.index
            self.index += 1
            if isinstance(element, RecordBatch):
                element = self._fetch_more(element)
            self._last_range = PositionRange(first, self.index)
            self.source.record_position(self.key_group, self.index)
            if element is END:
                self._ended = True
                return EndOfPartition(self.key_group)
            assert not isinstance(element, Marker)
            return element
        await asyncio.sleep(self.source.idle_sleep_s)
        return None

    def _fetch_more(self, batch: RecordBatch) -> RecordBatch:
        """Up to ``fetch_size`` consecutive record batches (one per position) merged into one;
        one only inside a suspect range."""
        isolation = self._isolation
        batches = [batch]
        while len(batches) < self.source.fetch_size and self.index < len(self.elements):
            nxt = self.elements[self.index]
            if (
                not isinstance(nxt, RecordBatch)
                or nxt.keys != batch.keys
                or (nxt.received_ns is None) != (batch.received_ns is None)
                or (isolation is not None and isolation.is_poison(self.key_group, self.index))
                or (
                    isolation is not None
                    and (
                        isolation.is_suspect(self.key_group, self.index)
                        or isolation.is_suspect(self.key_group, self.index - 1)
                    )
                )
            ):
                break
            batches.append(nxt)
            self.index += 1
        if len(batches) == 1:
            return batch
        received = [b.received_ns for b in batches]
        return RecordBatch(
            batch.key_group,
            batch.keys,
            np.concatenate([b.key_idx for b in batches]),
            np.concatenate([b.ts_ns for b in batches]),
            np.concatenate([b.values for b in batches]),
            None if batch.received_ns is None else np.concatenate(received),  # type: ignore[arg-type]
        )

    def last_range(self) -> PositionRange | None:
        return self._last_range

    def isolate(self, isolation: FailureIsolation) -> None:
        self._isolation = isolation

    async def dead_letter(self, position: int, error: str) -> None:
        self.source.dead_letters.append((self.key_group, position, error))

    def snapshot_position(self, checkpoint_id: int) -> bytes:
        self._snapshots[checkpoint_id] = self.index
        if self._armed is not None:
            self._crash_on_poll, self._armed = self._armed, None
        return encode_position(self.index)

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:
        for cid in [c for c in self._snapshots if c <= checkpoint_id]:
            position = self._snapshots.pop(cid)
            if cid == checkpoint_id:
                self.source.committed[self.key_group] = position
                if self._isolation is not None:
                    self._isolation.prune(self.key_group, position)
