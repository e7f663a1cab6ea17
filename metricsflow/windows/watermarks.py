"""Per-key-group watermarks: bounded out-of-orderness plus idleness (docs/windows.md).

Semantics (documented in docs/windows.md):

* **Bounded out-of-orderness.** For each key group the generator tracks the maximum event
  time seen, ``max_ts``. Its watermark is ``max_ts - max_out_of_orderness_ns``: a point with
  ``ts >= watermark`` is on time, a point with ``ts < watermark`` is late (the operators
  downstream decide what late means for them, see ``allowed_lateness_ns``). A watermark with
  timestamp ``t`` means "no more points with ``ts < t``" (records.Watermark).
* **Per record.** Lateness is judged per row against the watermark *as of that row's
  position in the partition's log*: ``max(watermark before the batch, running max of the
  event times up to the row - bound)`` (``np.maximum.accumulate``), attached to the batch as
  ``RecordBatch.row_watermark_ns``. Any split of the same log into fetch batches therefore
  judges every row alike; the ``Watermark`` element still goes out once, after the batch.
* **Future points.** A row whose event time is more than ``max_future_ns`` ahead of its
  receive time (``RecordBatch.received_ns``, which travels with the record) does not count
  in the maximum: one point dated a day ahead cannot make the rest of its partition late. It
  is counted (``future_points``) and waits in its window until the watermark gets there.
* **Idleness.** A key group is idle when its *source says so*
  (:class:`~metricsflow.runtime.source.WatermarkStatus`): ``IDLE`` = the reader has nothing to
  read (caught up), ``ACTIVE`` = input is or may be waiting (also while the reader is held back
  by backpressure or cut off from its broker). Missing batches alone never make a key group
  idle. Once a key group has been quiet *and* idle for ``idle_timeout_ns`` of wall-clock time
  (quiet since the later of its last batch and the ``IDLE`` report), its watermark follows the
  wall clock: ``max(watermark, now - max_out_of_orderness_ns)``. So after a backfill of
  two-hour-old data every window up to "now" is written within about ``idle_timeout`` of the
  end of the backfill. Points that arrive later for windows closed that way are late, and the
  window operators correct those windows (docs/windows.md, "Corrections"): never lost.
  ``ACTIVE`` stops the advance at once. A generator nobody reports a status to (used without
  a source, e.g. in unit tests) counts every quiet moment as idle.
* The watermark **never moves backwards** (new input can only raise it).

Determinism: without idleness the watermark is a pure function of the partition's log (not
of its batch boundaries), so replay from a checkpoint judges every row as the live run did.
Idle advances depend on the wall clock; they are the only non-replayable input. A replay may
therefore accept a row the live run judged late, or the reverse; both paths end in the same
tier rows (a late row's windows are re-derived from InfluxDB), see docs/windows.md.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt

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
#: Row watermark of a row before the key group's first eligible point: nothing is late.
_NO_WATERMARK = -(2**63)
_NO_MAX = 2**63 - 1
#: Default of :attr:`WatermarkStrategy.max_future_ns`: 10 minutes.
DEFAULT_MAX_FUTURE_NS = 600 * 1_000_000_000

Int64Array = npt.NDArray[np.int64]


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
        """A batch whose largest (watermark-eligible) event time is ``max_ts_ns`` arrived at
        wall time ``now_ns``. Returns the new watermark if it advanced, else ``None``."""
        if self._max_ts_ns is None or max_ts_ns > self._max_ts_ns:
            self._max_ts_ns = max_ts_ns
        advanced = self._raise_to(self._max_ts_ns - self._strategy.max_out_of_orderness_ns)
        self._quiet_since_ns = now_ns
        return advanced

    def on_batch(
        self, ts_ns: Int64Array, received_ns: Int64Array | None, now_ns: int
    ) -> tuple[Int64Array, int | None, int]:
        """A batch of event times (in log order) arrived at wall time ``now_ns``.

        Returns ``(row watermarks, new watermark or None, future rows)``: the watermark as of
        each row (``_NO_WATERMARK`` where there is none yet), the watermark after the batch
        if it advanced, and how many rows were future points (ignored by the maximum).
        """
        eligible = ts_ns
        future = 0
        limit = self._strategy.max_future_ns
        if received_ns is not None and limit is not None:
            ahead = ts_ns > received_ns + np.minimum(limit, _NO_MAX - received_ns)
            future = int(np.count_nonzero(ahead))
            if future:
                eligible = np.where(ahead, _NO_WATERMARK, ts_ns)
        running = np.maximum.accumulate(eligible)
        prior = self._max_ts_ns
        if prior is not None:
            np.maximum(running, prior, out=running)
        bound = self._strategy.max_out_of_orderness_ns
        rows = np.where(running == _NO_WATERMARK, _NO_WATERMARK, running - bound)
        if self._watermark_ns is not None:
            np.maximum(rows, self._watermark_ns, out=rows)
        advanced = None
        last_max = int(running[-1])
        if last_max != _NO_WATERMARK:
            advanced = self.on_events(last_max, now_ns)
        else:
            self._quiet_since_ns = now_ns
        return rows, advanced, future

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
        if self._watermark_ns is None:
            return None  # no event seen yet: nothing to close
        if now_ns - self._quiet_since_ns < idle_timeout:
            return None
        return self._raise_to(now_ns - self._strategy.max_out_of_orderness_ns)

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
    follows the clock (``None``: never). ``max_future_ns``: a point more than this ahead of its
    receive time does not advance the watermark (``None``: every point does).
    """

    max_out_of_orderness_ns: int
    idle_timeout_ns: int | None = None
    max_future_ns: int | None = DEFAULT_MAX_FUTURE_NS

    def __post_init__(self) -> None:
        if self.max_out_of_orderness_ns < 0:
            raise ConfigurationError(
                f"max_out_of_orderness_ns must be >= 0, got {self.max_out_of_orderness_ns}"
            )
        if self.idle_timeout_ns is not None and self.idle_timeout_ns <= 0:
            raise ConfigurationError(
                f"idle_timeout_ns must be > 0 or None, got {self.idle_timeout_ns}"
            )
        if self.max_future_ns is not None and self.max_future_ns < 0:
            raise ConfigurationError(
                f"max_future_ns must be >= 0 or None, got {self.max_future_ns}"
            )

    @classmethod
    def of(
        cls,
        max_out_of_orderness: str,
        idle_timeout: str | None = None,
        max_future: str | None = "10m",
    ) -> WatermarkStrategy:
        """From durations: ``WatermarkStrategy.of("30s", idle_timeout="1m")``."""
        bound = (
            0 if max_out_of_orderness in ("0", "0s") else parse_duration_ns(max_out_of_orderness)
        )
        idle = None if idle_timeout is None else parse_duration_ns(idle_timeout)
        future = None if max_future is None else parse_duration_ns(max_future)
        return cls(bound, idle or None, future or None)

    def build(self, resume_state: WatermarkGeneratorState | None) -> WatermarkGenerator:
        """A generator for one key group, resumed from ``resume_state`` (None: fresh)."""
        return WatermarkGenerator(self, resume_state)


@dataclass(slots=True)
class WatermarkMetrics:
    """Counters of watermark assigners (may be shared by every chain of a worker, so that
    they stay monotonic across restarts and rebalances); metrics, not state."""

    future_points: int = 0
    """rows more than ``max_future_ns`` ahead of their receive time"""


class WatermarkAssigner(Operator):
    """Forwards every batch, a ``RecordBatch`` with its per-row watermarks attached
    (``row_watermark_ns``), and emits a :class:`Watermark` per key group when it advances:
    after each ``RecordBatch`` and on idle ticks (:meth:`on_processing_time`).

    Upstream watermarks are dropped: this operator is where watermarks are born. Its state
    (one :class:`WatermarkGeneratorState` per key group) is operator state, one
    ``OperatorStateHandle`` per key group, so it moves with its key group.
    """

    def __init__(
        self,
        uid: str,
        strategy: WatermarkStrategy,
        clock: Clock | None = None,
        metrics: WatermarkMetrics | None = None,
    ) -> None:
        super().__init__(uid)
        self.strategy = strategy
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._generators: dict[int, WatermarkGenerator] = {}
        self._key_groups: frozenset[int] = frozenset()
        self.metrics = metrics if metrics is not None else WatermarkMetrics()

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

    @property
    def future_points(self) -> int:
        return self.metrics.future_points

    def current_watermark_ns(self, key_group: int) -> int | None:
        gen = self._generators.get(key_group)
        return None if gen is None else gen.current_watermark_ns

    def process_batch(
        self, batch: RecordBatch | AggregateBatch | RawLinesBatch, output: Output
    ) -> None:
        if not isinstance(batch, RecordBatch) or len(batch) == 0:
            output.emit(batch)
            return
        rows, advanced, future = self.generator(batch.key_group).on_batch(
            batch.ts_ns, batch.received_ns, self._clock.now_ns()
        )
        if future:
            self.metrics.future_points += future
            logger.info(
                "future points do not advance the watermark key_group=%d points=%d",
                batch.key_group,
                future,
            )
        output.emit(replace(batch, row_watermark_ns=rows))
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
