"""Per-key-group watermarks: bounded out-of-orderness plus idleness (docs/windows.md).

Semantics (documented in docs/windows.md):

* **Bounded out-of-orderness.** For each key group the generator tracks the maximum event
  time seen, ``max_ts``. Its watermark is ``max_ts - max_out_of_orderness_ns``: a point with
  ``ts >= watermark`` is on time, a point with ``ts < watermark`` is late (the operators
  downstream decide what late means for them, see ``allowed_lateness_ns``). A watermark with
  timestamp ``t`` means "no more points with ``ts < t``" (records.Watermark).
* **Idleness.** A key group is idle when its *source says so*
  (:class:`~metricsflow.runtime.source.WatermarkStatus`): ``IDLE`` = the reader has nothing to
  read (caught up), ``ACTIVE`` = input is or may be waiting (also while the reader is held back
  by backpressure or cut off from its broker). Missing batches alone never make a key group
  idle. Once a key group has been quiet *and* idle for ``idle_timeout_ns`` of wall-clock time,
  its event time is assumed to keep going at the wall clock's rate: at wall-clock time ``now``
  the watermark is ``max(watermark, base + (now - quiet_since - idle_timeout_ns))`` where
  ``quiet_since`` is the later of the last batch and the moment the source reported ``IDLE``,
  and ``base`` the watermark at that moment. The watermark starts moving exactly
  ``idle_timeout_ns`` after that, continuously (no jump), so any window of a quiet key group
  closes after at most ``idle_timeout + window size + max_out_of_orderness`` of idle wall-clock
  time, and a pause in a backfill of old data does not push the watermark to "now". ``ACTIVE``
  stops the advance at once. A generator nobody reports a status to (used without a source,
  e.g. in unit tests) counts every quiet moment as idle.
* The watermark **never moves backwards** (new input can only raise it).

Determinism: without idleness the watermark is a pure function of the input and its batch
boundaries, so replay from a checkpoint is exact. Idle advances depend on the wall clock; they
are the only non-replayable input, and only matter for data arriving after a quiet period in
which the source had nothing to read.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.errors import ConfigurationError, SerializationError
from metricsflow.model.durations import parse_duration_ns
from metricsflow.runtime.base import (
    Operator,
    OperatorContext,
    OperatorSnapshot,
    Output,
    StateInitializationContext,
)
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, RecordBatch, Watermark
from metricsflow.runtime.source import WatermarkStatus
from metricsflow.state.handles import OperatorStateHandle
from metricsflow.time.base import Clock, SystemClock

logger = logging.getLogger(__name__)

#: The largest watermark: "end of input" (fires every window).
MAX_WATERMARK_NS = 2**63 - 1


@dataclass(frozen=True, slots=True)
class WatermarkGeneratorState:
    """What a generator needs to resume: the event-time maximum and the watermark.

    Wall-clock times are deliberately not part of it: after a restore the idle timer starts
    from the first wall-clock reading.
    """

    max_event_ts_ns: int | None
    watermark_ns: int | None

    _FORMAT = struct.Struct(">BBqq")
    VERSION = 1

    def to_bytes(self) -> bytes:
        flags = (self.max_event_ts_ns is not None) | ((self.watermark_ns is not None) << 1)
        return self._FORMAT.pack(
            self.VERSION, flags, self.max_event_ts_ns or 0, self.watermark_ns or 0
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> WatermarkGeneratorState:
        if len(data) != cls._FORMAT.size or data[0] != cls.VERSION:
            raise SerializationError(
                f"unknown watermark generator state (version {data[:1]!r}, {len(data)} bytes)"
            )
        _, flags, max_ts, wm = cls._FORMAT.unpack(data)
        return cls(max_ts if flags & 1 else None, wm if flags & 2 else None)


class WatermarkGenerator:
    """The watermark of one key group (build it with :meth:`WatermarkStrategy.build`)."""

    __slots__ = (
        "_active",
        "_base_ns",
        "_max_ts_ns",
        "_quiet_since_ns",
        "_strategy",
        "_watermark_ns",
    )

    def __init__(
        self, strategy: WatermarkStrategy, resume_state: WatermarkGeneratorState | None
    ) -> None:
        self._strategy = strategy
        self._max_ts_ns = resume_state.max_event_ts_ns if resume_state else None
        self._watermark_ns = resume_state.watermark_ns if resume_state else None
        self._base_ns = self._watermark_ns
        self._quiet_since_ns: int | None = None
        self._active = False

    @property
    def current_watermark_ns(self) -> int | None:
        """The watermark, or ``None`` before the first point."""
        return self._watermark_ns

    @property
    def max_event_ts_ns(self) -> int | None:
        return self._max_ts_ns

    @property
    def status(self) -> WatermarkStatus:
        """What the source last reported (``IDLE`` until it reports anything)."""
        return WatermarkStatus.ACTIVE if self._active else WatermarkStatus.IDLE

    def on_events(self, max_ts_ns: int, now_ns: int) -> int | None:
        """A batch whose largest event time is ``max_ts_ns`` arrived at wall time ``now_ns``.

        Returns the new watermark if it advanced, else ``None``.
        """
        if self._max_ts_ns is None or max_ts_ns > self._max_ts_ns:
            self._max_ts_ns = max_ts_ns
        advanced = self._raise_to(self._max_ts_ns - self._strategy.max_out_of_orderness_ns)
        self._quiet_since_ns = now_ns
        self._base_ns = self._watermark_ns
        return advanced

    def mark_active(self) -> None:
        """The source has (or may have) input: the wall clock stops moving the watermark."""
        self._active = True

    def mark_idle(self, now_ns: int) -> None:
        """The source has nothing to read since ``now_ns``: the idle timer starts (if it is
        not running already)."""
        if not self._active:
            return
        self._active = False
        if self._quiet_since_ns is None or now_ns > self._quiet_since_ns:
            self._quiet_since_ns = now_ns
        self._base_ns = self._watermark_ns

    def on_processing_time(self, now_ns: int) -> int | None:
        """A wall-clock tick: advance the watermark if the key group is idle for longer than
        the idle timeout.

        Returns the new watermark if it advanced, else ``None``.
        """
        idle_timeout = self._strategy.idle_timeout_ns
        if idle_timeout is None or self._active:
            return None
        if self._quiet_since_ns is None:
            # first reading after start or restore: the idle timer starts now
            self._quiet_since_ns = now_ns
            return None
        if self._base_ns is None:
            return None  # no event seen yet: nothing to close
        idle_for = now_ns - self._quiet_since_ns - idle_timeout
        if idle_for <= 0:
            return None
        return self._raise_to(min(self._base_ns + idle_for, MAX_WATERMARK_NS))

    def is_idle(self, now_ns: int) -> bool:
        """Idle for at least the idle timeout (the wall clock moves the watermark)."""
        timeout = self._strategy.idle_timeout_ns
        last = self._quiet_since_ns
        return (
            timeout is not None
            and not self._active
            and last is not None
            and now_ns - last >= timeout
        )

    def snapshot(self) -> WatermarkGeneratorState:
        return WatermarkGeneratorState(self._max_ts_ns, self._watermark_ns)

    def _raise_to(self, candidate_ns: int) -> int | None:
        if self._watermark_ns is None or candidate_ns > self._watermark_ns:
            self._watermark_ns = candidate_ns
            return candidate_ns
        return None


@dataclass(frozen=True, slots=True)
class WatermarkStrategy:
    """How watermarks are generated, per key group.

    ``max_out_of_orderness_ns``: how far behind the newest point a point may be and still be on
    time. ``idle_timeout_ns``: quiet wall-clock time after which a key group's watermark
    advances with the clock (``None``: never).
    """

    max_out_of_orderness_ns: int
    idle_timeout_ns: int | None = None

    def __post_init__(self) -> None:
        if self.max_out_of_orderness_ns < 0:
            raise ConfigurationError(
                f"max_out_of_orderness_ns must be >= 0, got {self.max_out_of_orderness_ns}"
            )
        if self.idle_timeout_ns is not None and self.idle_timeout_ns <= 0:
            raise ConfigurationError(
                f"idle_timeout_ns must be > 0 or None, got {self.idle_timeout_ns}"
            )

    @classmethod
    def of(cls, max_out_of_orderness: str, idle_timeout: str | None = None) -> WatermarkStrategy:
        """From durations: ``WatermarkStrategy.of("30s", idle_timeout="1m")``."""
        bound = (
            0 if max_out_of_orderness in ("0", "0s") else parse_duration_ns(max_out_of_orderness)
        )
        idle = None if idle_timeout is None else parse_duration_ns(idle_timeout)
        return cls(bound, idle or None)

    def build(self, resume_state: WatermarkGeneratorState | None) -> WatermarkGenerator:
        """A generator for one key group, resumed from ``resume_state`` (None: fresh)."""
        return WatermarkGenerator(self, resume_state)


class WatermarkAssigner(Operator):
    """Forwards every batch unchanged and emits a :class:`Watermark` per key group when it
    advances: after each ``RecordBatch`` and on idle ticks (:meth:`on_processing_time`).

    Upstream watermarks are dropped: this operator is where watermarks are born. Its state
    (one :class:`WatermarkGeneratorState` per key group) is operator state, one
    ``OperatorStateHandle`` per key group, so it moves with its key group.
    """

    def __init__(self, uid: str, strategy: WatermarkStrategy, clock: Clock | None = None) -> None:
        super().__init__(uid)
        self.strategy = strategy
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._generators: dict[int, WatermarkGenerator] = {}
        self._key_groups: frozenset[int] = frozenset()

    @property
    def is_stateful(self) -> bool:
        return True

    def setup(self, ctx: OperatorContext) -> None:
        self._key_groups = ctx.key_groups

    def initialize_state(self, ctx: StateInitializationContext) -> None:
        self._restore(self._key_groups, ctx.operator)

    def on_key_groups_assigned(
        self, key_groups: frozenset[int], ctx: StateInitializationContext
    ) -> None:
        self._key_groups = self._key_groups | key_groups
        self._restore(key_groups, ctx.operator)

    def on_key_groups_revoked(self, key_groups: frozenset[int]) -> None:
        self._key_groups = self._key_groups - key_groups
        for kg in key_groups:
            self._generators.pop(kg, None)

    def _restore(self, key_groups: frozenset[int], handles: Iterable[OperatorStateHandle]) -> None:
        for handle in handles:
            if handle.uid != self.uid or handle.key_group not in key_groups:
                continue
            state = WatermarkGeneratorState.from_bytes(handle.data)
            self._generators[handle.key_group] = self.strategy.build(state)
            logger.debug("restored watermark of key group %d: %s", handle.key_group, state)

    def generator(self, key_group: int) -> WatermarkGenerator:
        gen = self._generators.get(key_group)
        if gen is None:
            gen = self._generators[key_group] = self.strategy.build(None)
        return gen

    def current_watermark_ns(self, key_group: int) -> int | None:
        gen = self._generators.get(key_group)
        return None if gen is None else gen.current_watermark_ns

    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        output.emit(batch)
        if not isinstance(batch, RecordBatch) or len(batch) == 0:
            return
        max_ts = int(np.max(batch.ts_ns))
        advanced = self.generator(batch.key_group).on_events(max_ts, self._clock.now_ns())
        if advanced is not None:
            output.emit_watermark(Watermark(batch.key_group, advanced))

    def process_watermark(self, watermark: Watermark, output: Output) -> None:
        """Upstream watermarks are dropped (watermarks originate here)."""

    def on_watermark_status(
        self, key_group: int, status: WatermarkStatus, now_ns: int, output: Output
    ) -> None:
        """The source of ``key_group`` reports whether it has input (called by the runtime
        when the status changes): only an ``IDLE`` key group's watermark follows the clock."""
        gen = self.generator(key_group)
        if status is WatermarkStatus.IDLE:
            gen.mark_idle(now_ns)
        else:
            gen.mark_active()
        logger.debug("key group %d source status %s", key_group, status.value)

    def on_processing_time(self, now_ns: int, output: Output) -> None:
        """Called periodically by the runtime: emit the watermarks of idle key groups."""
        for kg in sorted(self._generators):
            advanced = self._generators[kg].on_processing_time(now_ns)
            if advanced is not None:
                logger.debug("key group %d idle: watermark advanced to %d", kg, advanced)
                output.emit_watermark(Watermark(kg, advanced))

    def snapshot_state(self, barrier: CheckpointBarrier) -> OperatorSnapshot:
        handles = [
            OperatorStateHandle(self.uid, kg, gen.snapshot().to_bytes())
            for kg, gen in sorted(self._generators.items())
        ]
        return OperatorSnapshot(keyed=None, operator=handles)
