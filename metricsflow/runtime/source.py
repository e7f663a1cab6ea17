"""Sources: where a job's input comes from, one reader per key group (partition).

A source is replayable: its position in a key group (e.g. a Kafka offset) is **operator state**
that the runtime snapshots at every barrier, in band with the data (the barrier goes out
between two batches, right after the position is recorded). After a restore the reader
resumes exactly after that position. ``notify_checkpoint_complete`` is where a reader may
commit its position externally (Kafka offsets, for lag monitoring): only completed checkpoints
are a position to resume from.

**Idleness is the reader's call** (Flink's ``WatermarkStatus``). After every ``poll`` that
returned ``None`` the task asks :meth:`SourceReader.watermark_status`: ``IDLE`` means "I have
nothing to read right now" (caught up with the end of the input), ``ACTIVE`` means input is or
may be waiting (the reader is held back by backpressure, not positioned yet, or cannot tell
because its broker is unreachable). Only an ``IDLE`` key group's watermark may advance with the
wall clock (``metricsflow.windows.watermarks``); a batch always makes it ``ACTIVE`` again.

**Failure isolation** (``metricsflow.runtime.isolation``) needs a reader's help: which
positions the element it returned came from (:meth:`SourceReader.last_range`), records of a
suspect range handed out one at a time and poison positions skipped
(:meth:`SourceReader.isolate`), and a poison record sent to the dead-letter place
(:meth:`SourceReader.dead_letter`). A reader without it (``last_range`` ``None``) keeps the
old behaviour: a failure fails the job.
"""

from __future__ import annotations

import abc
import enum

from metricsflow.runtime.isolation import FailureIsolation, PositionRange
from metricsflow.runtime.records import EndOfPartition, RawLinesBatch, RecordBatch

SourceElement = RecordBatch | RawLinesBatch | EndOfPartition


class WatermarkStatus(enum.Enum):
    """Whether a key group's source has input (Flink's ``WatermarkStatus``)."""

    ACTIVE = "active"
    """Input was delivered, is waiting, or may be waiting: event time comes from the data."""
    IDLE = "idle"
    """Nothing to read right now: after the idle timeout, event time follows the wall clock."""


class SourceReader(abc.ABC):
    """Reads one key group. All methods run on the job's event loop."""

    @abc.abstractmethod
    def restore_position(self, position: bytes | None) -> None:
        """Resume after ``position`` (from a checkpoint), or from the start if ``None``.
        Called once, before the first ``poll``."""

    @abc.abstractmethod
    async def poll(self) -> SourceElement | None:
        """The next batch, ``EndOfPartition`` at the end of a bounded input, or ``None`` when
        nothing is available right now. Must return within a short time (~100 ms) so that
        barriers and processing-time ticks are not held up by an idle input."""

    @abc.abstractmethod
    def snapshot_position(self, checkpoint_id: int) -> bytes:
        """The position after the last element returned by ``poll`` (synchronous, cheap)."""

    def watermark_status(self) -> WatermarkStatus:
        """Asked after ``poll`` returned ``None``: ``IDLE`` only if there is nothing to read.

        The default suits a reader whose ``poll`` returns ``None`` only when it has nothing
        (an in-memory input past its last element). A reader that also returns ``None`` when it
        is held back (backpressure), not positioned yet or cut off from its input must override
        this and answer ``ACTIVE`` then, so that waiting input is never mistaken for idleness.
        """
        return WatermarkStatus.IDLE

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` completed: its position may be committed externally."""

    def last_range(self) -> PositionRange | None:
        """The source positions the element last returned by ``poll`` was read from
        (``None``: unknown; a failure processing it then fails the job)."""
        return None

    def isolate(self, isolation: FailureIsolation) -> None:  # noqa: B027
        """Called once, before the first ``poll``, by a job with failure isolation: from then
        on hand out the records of ``isolation``'s suspect range of this key group one per
        element, skip its poison positions (``note_skipped``), and prune it when a checkpoint
        completes (``isolation.prune``)."""

    async def dead_letter(self, position: int, error: str) -> None:
        """Send the record at ``position`` (of the element last returned) to the dead-letter
        place; return once it is durable there."""
        raise NotImplementedError(f"{type(self).__name__} cannot dead-letter records")

    def close(self) -> None:  # noqa: B027
        """Release resources; the reader is not used afterwards."""


class Source(abc.ABC):
    """A partitioned source; ``uid`` names its position state in checkpoints."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    @abc.abstractmethod
    def create_reader(self, key_group: int) -> SourceReader: ...
