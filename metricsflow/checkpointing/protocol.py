"""The messages of the checkpoint protocol: barriers with their options, and acknowledgements.

They sit with the checkpoint protocol, below the runtime (as in Flink, which keeps
``CheckpointBarrier``, ``CheckpointOptions``, ``CheckpointType`` and the acknowledgement of a
checkpoint with its checkpoint code): the coordinator creates barriers and collects
acknowledgements; the runtime carries barriers through the job graph (between batches, see
:mod:`metricsflow.runtime.records`) and sends acknowledgements back.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from metricsflow.state.handles import KeyGroupStateHandle, OperatorStateHandle


class CheckpointType(enum.Enum):
    CHECKPOINT = "checkpoint"
    SAVEPOINT = "savepoint"


class CheckpointingMode(enum.Enum):
    EXACTLY_ONCE = "exactly_once"
    AT_LEAST_ONCE = "at_least_once"


@dataclass(frozen=True, slots=True)
class CheckpointOptions:
    checkpoint_type: CheckpointType = CheckpointType.CHECKPOINT
    mode: CheckpointingMode = CheckpointingMode.EXACTLY_ONCE


@dataclass(frozen=True, slots=True)
class CheckpointBarrier:
    """Barrier ``checkpoint_id``: everything before it belongs to checkpoint n's state."""

    checkpoint_id: int
    timestamp_ns: int
    options: CheckpointOptions = field(default_factory=CheckpointOptions)


@dataclass(frozen=True, slots=True)
class TaskAcknowledgement:
    """What a task sends when its snapshot of checkpoint *n* is persisted."""

    keyed: Sequence[tuple[str, KeyGroupStateHandle]] = ()
    operator: Sequence[OperatorStateHandle] = ()
    key_groups: frozenset[int] = frozenset()
    sync_duration_ns: int = 0
    async_duration_ns: int = 0
    alignment_duration_ns: int = 0
