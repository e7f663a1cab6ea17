"""What a partitioned, group-managed source adds to the runtime's ``Source`` contract.

``metricsflow.runtime.source`` defines a replayable source as one :class:`SourceReader` per key
group, whose position is checkpointed operator state. A source whose partitions are handed out
by an external group protocol (Kafka's consumer groups) must also tell the job **which** key
groups this worker owns, and when that changes. It does so through an
:class:`AssignmentListener`, which the job (``metricsflow.job``) implements:

* ``on_assigned(key_groups)``: the worker now owns these key groups. The job restores each
  one's state from the newest completed checkpoint that holds it, creates its reader and
  calls ``restore_position`` (the recorded offset, or ``None``: from the earliest offset).
* ``on_revoked(key_groups)``: awaited *before* the hand-over completes (Kafka waits for it
  before re-joining the group). The job stops processing those key groups, drains or aborts
  their in-flight work, closes their readers and drops their state. Anything not covered by a
  completed checkpoint is replayed by the next owner; that is correct because processing is
  deterministic per key group and the sink overwrites idempotently.

Positions are encoded by :func:`encode_offset` / :func:`decode_offset`: one version byte
then the next offset to read as a big-endian signed 64-bit integer (9 bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

from metricsflow.errors import SerializationError

POSITION_FORMAT_VERSION = 1
_POSITION = struct.Struct(">Bq")


def encode_offset(next_offset: int) -> bytes:
    """A reader position: the offset of the next record to read."""
    return _POSITION.pack(POSITION_FORMAT_VERSION, next_offset)


def decode_offset(position: bytes) -> int:
    """Inverse of :func:`encode_offset`; ``SerializationError`` for an unknown format."""
    if len(position) != _POSITION.size or position[0] != POSITION_FORMAT_VERSION:
        raise SerializationError(
            f"unknown source position format (version byte {position[:1]!r}, "
            f"{len(position)} bytes; this version reads version {POSITION_FORMAT_VERSION})"
        )
    _version, offset = _POSITION.unpack(position)
    return int(offset)


class AssignmentListener(Protocol):
    """How a group-managed source tells the job about ownership changes (module docstring)."""

    async def on_assigned(self, key_groups: frozenset[int]) -> None: ...

    async def on_revoked(self, key_groups: frozenset[int]) -> None: ...


@dataclass
class SourceStats:
    """Counters of one source (monotonic; exported by the worker's ``/metrics``)."""

    records_in: int = 0
    bytes_in: int = 0
    points_in: int = 0
    samples_in: int = 0
    dead_letters: int = 0
    poison_records: int = 0
    """Of ``dead_letters``: records an operator failed on (failure isolation)."""
    declarations_in: int = 0
    """``kinds1`` records (types from remote-write metadata) read."""
    rebalances: int = 0
    commits: int = 0
    commit_failures: int = 0
