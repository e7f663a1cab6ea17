"""Sources: where a job's input comes from, one reader per key group (partition).

A source is replayable: its position in a key group (e.g. a Kafka offset) is **operator state**
that the runtime snapshots at every barrier, in band with the data (the barrier goes out
between two batches, right after the position is recorded). After a restore the reader
resumes exactly after that position. ``notify_checkpoint_complete`` is where a reader may
commit its position externally (Kafka offsets, for lag monitoring): only completed checkpoints
are a position to resume from.
"""

from __future__ import annotations

import abc

from metricsflow.runtime.records import EndOfPartition, RawLinesBatch, RecordBatch

SourceElement = RecordBatch | RawLinesBatch | EndOfPartition


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

    def notify_checkpoint_complete(self, checkpoint_id: int) -> None:  # noqa: B027
        """Checkpoint ``checkpoint_id`` completed: its position may be committed externally."""

    def close(self) -> None:  # noqa: B027
        """Release resources; the reader is not used afterwards."""


class Source(abc.ABC):
    """A partitioned source; ``uid`` names its position state in checkpoints."""

    def __init__(self, uid: str) -> None:
        self.uid = uid

    @abc.abstractmethod
    def create_reader(self, key_group: int) -> SourceReader: ...
