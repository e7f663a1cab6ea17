"""Checkpoint settings, with Flink's names and meanings (``CheckpointConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from metricsflow.checkpointing.protocol import CheckpointingMode
from metricsflow.errors import ConfigurationError

NS_PER_MS = 1_000_000


@dataclass(frozen=True, slots=True)
class CheckpointConfig:
    """How and how often checkpoints are taken (Flink's ``CheckpointConfig``).

    - ``interval_ms``: time between the triggers of two periodic checkpoints; ``0`` disables
      periodic checkpoints (they can still be triggered by hand).
    - ``timeout_ms``: a checkpoint that is not complete after this long is aborted
      (``CHECKPOINT_EXPIRED``).
    - ``min_pause_between_checkpoints_ms``: least time between the end of one checkpoint and
      the trigger of the next, so that a slow checkpoint cannot starve processing.
    - ``max_concurrent_checkpoints``: checkpoints in flight at once.
    - ``tolerable_failed_checkpoints``: consecutive failed checkpoints the job tolerates; one
      more fails the job (``-1``: unlimited).
    - ``mode``: ``EXACTLY_ONCE`` aligns barriers; ``AT_LEAST_ONCE`` does not block inputs.
    - ``num_retained``: completed checkpoints kept; older ones are discarded.
    - ``retain_on_cancellation``: externalized checkpoints: keep the retained checkpoints
      when the job is cancelled (otherwise they are deleted on cancel).
    - ``incremental``: let backends write only what changed since their last completed
      checkpoint (RocksDB: new SST files; heap: changed key-range segments); savepoints are
      always full.
    """

    interval_ms: int = 5_000
    timeout_ms: int = 60_000
    min_pause_between_checkpoints_ms: int = 0
    max_concurrent_checkpoints: int = 1
    tolerable_failed_checkpoints: int = 0
    mode: CheckpointingMode = CheckpointingMode.EXACTLY_ONCE
    num_retained: int = 1
    retain_on_cancellation: bool = True
    incremental: bool = True

    def __post_init__(self) -> None:
        checks = (
            ("interval_ms", self.interval_ms >= 0),
            ("timeout_ms", self.timeout_ms > 0),
            ("min_pause_between_checkpoints_ms", self.min_pause_between_checkpoints_ms >= 0),
            ("max_concurrent_checkpoints", self.max_concurrent_checkpoints >= 1),
            ("tolerable_failed_checkpoints", self.tolerable_failed_checkpoints >= -1),
            ("num_retained", self.num_retained >= 1),
        )
        for name, ok in checks:
            if not ok:
                raise ConfigurationError(
                    f"CheckpointConfig.{name} has an invalid value {getattr(self, name)!r}"
                )

    @property
    def interval_ns(self) -> int:
        return self.interval_ms * NS_PER_MS

    @property
    def timeout_ns(self) -> int:
        return self.timeout_ms * NS_PER_MS

    @property
    def min_pause_ns(self) -> int:
        return self.min_pause_between_checkpoints_ms * NS_PER_MS
