"""Watermarks per key group: bounded out-of-orderness, idleness, monotonicity, restore."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricsflow.checkpointing.protocol import CheckpointBarrier
from metricsflow.errors import ConfigurationError, SerializationError
from metricsflow.runtime.base import OperatorContext, Output, StateInitializationContext
from metricsflow.runtime.records import AggregateBatch, RawLinesBatch, RecordBatch, Watermark
from metricsflow.runtime.source import WatermarkStatus
from metricsflow.state.handles import OperatorStateHandle
from metricsflow.state.heap import HeapKeyedStateBackend
from metricsflow.time import ManualClock, SystemClock
from metricsflow.windows import TierSpec, TierWindowOperator
from metricsflow.windows.watermarks import (
    WatermarkAssigner,
    WatermarkGeneratorState,
    WatermarkStrategy,
)

S = 1_000_000_000


@dataclass
class Out(Output):
    elements: list[Any] = field(default_factory=list)

    def emit(self, element: RecordBatch | AggregateBatch | RawLinesBatch) -> None:
        self.elements.append(element)

    def emit_watermark(self, watermark: Watermark) -> None:
        self.elements.append(watermark)

    def watermarks(self) -> list[Watermark]:
        return [e for e in self.elements if isinstance(e, Watermark)]


def batch(kg: int, *ts_s: float) -> RecordBatch:
    n = len(ts_s)
    return RecordBatch(
        kg,
        ("k",),
        np.zeros(n, dtype=np.int32),
        np.array([int(t * S) for t in ts_s], dtype=np.int64),
        np.ones(n),
    )


def assigner(bound_s: int = 5, idle_s: int | None = 30, clock: Any = None) -> WatermarkAssigner:
    op = WatermarkAssigner(
        "wm", WatermarkStrategy(bound_s * S, None if idle_s is None else idle_s * S), clock
    )
    op.setup(OperatorContext("wm", frozenset({0, 1}), HeapKeyedStateBackend(), None))  # type: ignore[arg-type]
    op.initialize_state(StateInitializationContext(False, (), ()))
    return op


def test_the_watermark_is_the_largest_event_time_minus_the_bound() -> None:
    gen = WatermarkStrategy(5 * S).build(None)
    assert gen.current_watermark_ns is None
    assert gen.on_events(100 * S, now_ns=0) == 95 * S
    assert gen.current_watermark_ns == 95 * S


@given(st.lists(st.integers(-(10**12), 10**12), min_size=1, max_size=50))
@settings(max_examples=50)
def test_the_watermark_never_moves_backwards(max_ts: list[int]) -> None:
    gen = WatermarkStrategy(7).build(None)
    seen: list[int] = []
    for i, t in enumerate(max_ts):
        gen.on_events(t, now_ns=i)
        gen.on_processing_time(i)
        assert gen.current_watermark_ns is not None
        seen.append(gen.current_watermark_ns)
    assert seen == sorted(seen)
    assert seen[-1] == max(max_ts) - 7


def test_an_idle_key_group_follows_the_wall_clock_minus_the_bound_after_the_idle_timeout() -> None:
    gen = WatermarkStrategy(5 * S, idle_timeout_ns=30 * S).build(None)
    gen.on_events(100 * S, now_ns=1000 * S)  # a backfill: event time far behind the clock
    assert gen.on_processing_time(1029 * S) is None
    assert gen.on_processing_time(1030 * S) == 1025 * S  # the timeout: up to now - bound
    assert gen.on_processing_time(1090 * S) == 1085 * S
    assert gen.is_idle(1090 * S)


def test_new_input_after_idleness_restarts_the_idle_timer_and_keeps_the_watermark() -> None:
    gen = WatermarkStrategy(0, idle_timeout_ns=10 * S).build(None)
    gen.on_events(100 * S, now_ns=100 * S)
    gen.on_processing_time(160 * S)  # idle
    assert gen.current_watermark_ns == 160 * S
    assert gen.on_events(120 * S, now_ns=161 * S) is None  # older data does not pull it back
    assert gen.current_watermark_ns == 160 * S
    assert gen.on_processing_time(170 * S) is None  # the timer restarted at 161 s
    assert gen.on_processing_time(171 * S) == 171 * S


def test_a_key_group_without_any_event_gets_no_watermark_when_idle() -> None:
    gen = WatermarkStrategy(0, idle_timeout_ns=S).build(None)
    assert gen.on_processing_time(0) is None
    assert gen.on_processing_time(100 * S) is None
    assert gen.current_watermark_ns is None


def test_without_an_idle_timeout_the_wall_clock_never_moves_the_watermark() -> None:
    gen = WatermarkStrategy(0).build(None)
    gen.on_events(5, now_ns=0)
    assert gen.on_processing_time(10**18) is None


def test_generator_state_round_trips_through_its_versioned_bytes() -> None:
    for state in (WatermarkGeneratorState(None, None), WatermarkGeneratorState(-5, 2**62)):
        assert WatermarkGeneratorState.from_bytes(state.to_bytes()) == state
    with pytest.raises(SerializationError):
        WatermarkGeneratorState.from_bytes(b"\x09" + bytes(17))


def test_a_resumed_generator_continues_from_its_snapshot_and_restarts_its_idle_timer() -> None:
    strategy = WatermarkStrategy(S, idle_timeout_ns=10 * S)
    gen = strategy.build(None)
    gen.on_events(50 * S, now_ns=0)
    resumed = strategy.build(gen.snapshot())
    assert resumed.current_watermark_ns == 49 * S
    assert resumed.on_processing_time(100 * S) is None  # first reading starts the timer
    assert resumed.on_processing_time(109 * S) is None
    assert resumed.on_processing_time(110 * S) == 109 * S
    assert resumed.on_events(40 * S, now_ns=112 * S) is None


def test_strategy_durations_parse_and_invalid_ones_are_refused() -> None:
    assert WatermarkStrategy.of("30s", "1m") == WatermarkStrategy(30 * S, 60 * S, 600 * S)
    assert WatermarkStrategy.of("0s", max_future=None) == WatermarkStrategy(0, None, None)
    with pytest.raises(ConfigurationError):
        WatermarkStrategy(0, max_future_ns=-1)
    with pytest.raises(ConfigurationError):
        WatermarkStrategy(-1)
    with pytest.raises(ConfigurationError):
        WatermarkStrategy(0, idle_timeout_ns=0)


def test_the_assigner_forwards_batches_and_emits_a_watermark_only_when_it_advances() -> None:
    op, out = assigner(), Out()
    b1, b2, b3 = batch(0, 10, 12), batch(0, 11), batch(1, 3)
    for b in (b1, b2, b3):
        op.process_batch(b, out)
    batches = [e for e in out.elements if isinstance(e, RecordBatch)]
    assert [b.ts_ns.tolist() for b in batches] == [b.ts_ns.tolist() for b in (b1, b2, b3)]
    assert out.watermarks() == [Watermark(0, 7 * S), Watermark(1, -2 * S)]
    assert [type(e).__name__ for e in out.elements] == [
        "RecordBatch",
        "Watermark",
        "RecordBatch",
        "RecordBatch",
        "Watermark",
    ]
    # each row carries the watermark as of its own position in the log
    assert [b.row_watermark_ns.tolist() for b in batches if b.row_watermark_ns is not None] == [
        [5 * S, 7 * S],
        [7 * S],
        [-2 * S],
    ]
    op.process_watermark(Watermark(0, 10**18), out)  # upstream watermarks are dropped
    assert len(out.elements) == 5


def test_a_point_far_ahead_of_its_receive_time_does_not_advance_the_watermark() -> None:
    op, out = assigner(bound_s=5), Out()
    day = 86_400 * S
    received = np.array([100 * S, 100 * S, 101 * S], dtype=np.int64)
    ts = np.array([100 * S, 100 * S + day, 99 * S], dtype=np.int64)
    op.process_batch(RecordBatch(0, ("k",), np.zeros(3, np.int32), ts, np.ones(3), received), out)
    assert out.watermarks() == [Watermark(0, 95 * S)]
    (forwarded,) = [e for e in out.elements if isinstance(e, RecordBatch)]
    assert forwarded.row_watermark_ns is not None
    assert forwarded.row_watermark_ns.tolist() == [95 * S, 95 * S, 95 * S]
    assert op.future_points == 1
    # 10 minutes ahead is the default limit: 9 minutes ahead still counts
    near = np.array([100 * S + 540 * S], dtype=np.int64)
    op.process_batch(
        RecordBatch(0, ("k",), np.zeros(1, np.int32), near, np.ones(1), received[:1]), out
    )
    assert out.watermarks()[-1] == Watermark(0, 635 * S)
    assert op.future_points == 1


def test_the_assigner_emits_idle_watermarks_on_processing_time_ticks() -> None:
    clock = ManualClock(1000 * S)
    op, out = assigner(bound_s=5, idle_s=30, clock=clock), Out()
    op.process_batch(batch(0, 100), out)
    op.process_batch(batch(1, 100), out)
    clock.advance(10 * S)
    op.process_batch(batch(1, 101), out)
    clock.advance(25 * S)  # key group 0 quiet for 35 s, key group 1 for 25 s
    op.on_processing_time(clock.now_ns(), out)
    assert out.watermarks()[-1] == Watermark(0, 1030 * S)  # the wall clock minus the bound
    assert op.current_watermark_ns(1) == 96 * S


def test_an_idle_partition_closes_its_last_window_downstream(tmp_path: Any) -> None:
    clock = ManualClock(0)
    op = assigner(bound_s=5, idle_s=30, clock=clock)
    window = TierWindowOperator("w1m", TierSpec("1m", "1m", "1d"))
    window.setup(OperatorContext("w1m", frozenset({0}), HeapKeyedStateBackend(), None))  # type: ignore[arg-type]
    window.initialize_state(StateInitializationContext(False, (), ()))
    out = Out()

    class Into(Out):
        def emit(self, element: Any) -> None:
            window.process_batch(element, out)

        def emit_watermark(self, watermark: Watermark) -> None:
            window.process_watermark(watermark, out)

    into = Into()
    clock.set(50 * S)
    op.process_batch(batch(0, 50), into)  # last point of the partition, window [0, 60 s)
    for _ in range(5):  # 25 s quiet: not idle yet
        clock.advance(5 * S)
        op.on_processing_time(clock.now_ns(), into)
    assert not any(isinstance(e, AggregateBatch) for e in out.elements)
    clock.advance(5 * S)  # 30 s quiet: the watermark jumps to now - bound = 75 s >= 60 s
    op.on_processing_time(clock.now_ns(), into)
    assert [len(e) for e in out.elements if isinstance(e, AggregateBatch)] == [1]


def test_the_assigner_snapshots_one_operator_state_handle_per_key_group_and_restores_it() -> None:
    op, out = assigner(), Out()
    op.process_batch(batch(0, 10), out)
    op.process_batch(batch(1, 20), out)
    snap = op.snapshot_state(CheckpointBarrier(1, 0))
    assert snap.keyed is None
    assert [h.key_group for h in snap.operator] == [0, 1]
    other = OperatorStateHandle("someone-else", 0, b"garbage")
    resumed = WatermarkAssigner("wm", WatermarkStrategy(5 * S, 30 * S), ManualClock())
    resumed.setup(OperatorContext("wm", frozenset({1}), HeapKeyedStateBackend(), None))  # type: ignore[arg-type]
    resumed.initialize_state(StateInitializationContext(True, (), (*snap.operator, other)))
    assert resumed.current_watermark_ns(1) == 15 * S
    assert resumed.current_watermark_ns(0) is None  # not assigned here
    resumed.on_key_groups_assigned(
        frozenset({0}), StateInitializationContext(True, (), snap.operator)
    )
    assert resumed.current_watermark_ns(0) == 5 * S
    resumed.on_key_groups_revoked(frozenset({0}))
    assert resumed.current_watermark_ns(0) is None


def test_the_manual_clock_moves_only_forward_and_the_system_clock_reads_real_time() -> None:
    clock = ManualClock(5)
    assert clock.advance(3) == 8
    clock.set(10)
    with pytest.raises(ValueError, match="backwards"):
        clock.set(9)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert SystemClock().now_ns() > 1_600_000_000 * S


# -- idleness is the source's call (WatermarkStatus) ------------------------------------------
def test_a_key_group_whose_source_is_active_never_follows_the_wall_clock() -> None:
    # backpressure: the reader stopped fetching, data waits in Kafka; that is not idleness
    gen = WatermarkStrategy(5 * S, idle_timeout_ns=30 * S).build(None)
    gen.on_events(100 * S, now_ns=1000 * S)
    gen.mark_active()
    assert gen.status is WatermarkStatus.ACTIVE
    for minutes in range(1, 61):
        assert gen.on_processing_time(1000 * S + minutes * 60 * S) is None
    assert gen.current_watermark_ns == 95 * S
    assert not gen.is_idle(5000 * S)


def test_the_idle_timer_starts_when_the_source_reports_idle_not_at_the_last_batch() -> None:
    gen = WatermarkStrategy(5 * S, idle_timeout_ns=30 * S).build(None)
    gen.mark_active()
    gen.on_events(100 * S, now_ns=1000 * S)
    gen.mark_idle(1100 * S)  # 100 s of backpressure, then the reader caught up
    assert gen.status is WatermarkStatus.IDLE
    assert gen.on_processing_time(1129 * S) is None  # not idle for the timeout yet
    assert gen.on_processing_time(1130 * S) == 1125 * S  # now - bound
    assert gen.on_processing_time(1190 * S) == 1185 * S
    assert gen.is_idle(1190 * S)


def test_reporting_active_stops_an_idle_advance_at_once_and_keeps_the_watermark() -> None:
    gen = WatermarkStrategy(0, idle_timeout_ns=10 * S).build(None)
    gen.mark_active()
    gen.on_events(100 * S, now_ns=100 * S)
    gen.mark_idle(100 * S)
    assert gen.on_processing_time(120 * S) == 120 * S
    gen.mark_active()
    assert gen.on_processing_time(500 * S) is None
    assert gen.current_watermark_ns == 120 * S
    gen.mark_idle(600 * S)  # a second quiet period
    gen.mark_idle(650 * S)  # repeated reports do not restart the timer
    assert gen.on_processing_time(609 * S) is None
    assert gen.on_processing_time(615 * S) == 615 * S


def test_the_assigner_routes_source_statuses_to_their_key_group() -> None:
    clock = ManualClock(1000 * S)
    op, out = assigner(bound_s=5, idle_s=30, clock=clock), Out()
    for kg in (0, 1):
        op.on_watermark_status(kg, WatermarkStatus.ACTIVE, clock.now_ns(), out)
        op.process_batch(batch(kg, 100), out)
    op.on_watermark_status(0, WatermarkStatus.IDLE, clock.now_ns(), out)  # caught up
    clock.advance(40 * S)  # key group 1 is held back by backpressure meanwhile
    op.on_processing_time(clock.now_ns(), out)
    assert out.watermarks()[-1] == Watermark(0, 1035 * S)
    assert op.current_watermark_ns(1) == 95 * S
    assert op.generator(1).status is WatermarkStatus.ACTIVE
