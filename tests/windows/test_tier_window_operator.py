"""Unit behaviour of TierWindowOperator: firing, dedupe, replacement, lateness, purge, restore."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from metricsflow.errors import ConfigurationError, StateError
from metricsflow.runtime.records import AggregateBatch, RecordBatch, Watermark
from metricsflow.windows import TierSpec, TierWindowOperator, build_cascade
from metricsflow.windows.operator import STATE_CHUNKS

S = 1_000_000_000
M = 60 * S
H = 3600 * S
KEY = "db\x00cpu,host=a\x00usage"
OTHER = "db\x00cpu,host=b\x00usage"
TIERS = (
    TierSpec("raw", "0s", "1d"),
    TierSpec("1m", "1m", "30d"),
    TierSpec("1h", "1h", "52w"),
    TierSpec("1d", "1d", "INF"),
)


def points(rows: list[tuple[str, int, float]], kg: int = 0) -> RecordBatch:
    keys = tuple(dict.fromkeys(k for k, _, _ in rows))
    return RecordBatch(
        kg,
        keys,
        np.array([keys.index(k) for k, _, _ in rows], dtype=np.int32),
        np.array([t for _, t, _ in rows], dtype=np.int64),
        np.array([v for _, _, v in rows], dtype=np.float64),
    )


def rows_of(batches: list[AggregateBatch]) -> list[tuple[Any, ...]]:
    out = []
    for b in batches:
        for i in range(len(b)):
            out.append(
                (
                    b.tier,
                    b.keys[int(b.key_idx[i])],
                    int(b.window_start_ns[i]),
                    int(b.count[i]),
                    float(b.sum[i]),
                    float(b.min[i]),
                    float(b.max[i]),
                    float(b.first[i]),
                    float(b.last[i]),
                )
            )
    return out


@pytest.fixture
def cascade(chain_factory: Any, backend_factory: Any, storage: Any) -> Any:
    def make(lateness_ns: int = 0) -> Any:
        ops = build_cascade(TIERS, lateness_ns)
        return chain_factory(ops, [backend_factory(o.uid) for o in ops], storage, frozenset({0}))

    return make


def test_a_window_fires_when_the_watermark_reaches_its_end_and_not_before(cascade: Any) -> None:
    chain = cascade()
    chain.push(points([(KEY, 10 * S, 1.0), (KEY, 70 * S, 2.0)]))
    chain.watermark(Watermark(0, M - 1))
    assert chain.taps[0].batches() == []
    chain.watermark(Watermark(0, M))
    assert rows_of(chain.taps[0].batches()) == [("1m", KEY, 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert chain.operators[0].metrics.fired_windows == 1
    assert chain.taps[0].watermarks() == [Watermark(0, M - 1), Watermark(0, M)]


def test_a_rewritten_point_replaces_the_earlier_value_instead_of_adding(cascade: Any) -> None:
    chain = cascade()
    chain.push(points([(KEY, 1 * S, 5.0), (KEY, 2 * S, 7.0), (KEY, 1 * S, 3.0)]))
    chain.push(points([(KEY, 2 * S, 9.0), (OTHER, 2 * S, 1.0)]))  # a client retry, rewritten
    chain.watermark(Watermark(0, M))
    assert sorted(rows_of(chain.taps[0].batches())) == [
        ("1m", KEY, 0, 2, 12.0, 3.0, 9.0, 3.0, 9.0),
        ("1m", OTHER, 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0),
    ]


def test_late_points_within_the_lateness_update_the_window_and_it_is_re_emitted(
    cascade: Any,
) -> None:
    chain = cascade(lateness_ns=30 * S)
    chain.push(points([(KEY, 10 * S, 1.0)]))
    chain.watermark(Watermark(0, M + 5 * S))
    chain.push(points([(KEY, 20 * S, 4.0), (KEY, 10 * S, 2.0)]))  # late, within lateness
    first, again = chain.taps[0].batches()
    assert rows_of([first]) == [("1m", KEY, 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0)]
    assert rows_of([again]) == [("1m", KEY, 0, 2, 6.0, 2.0, 4.0, 2.0, 4.0)]
    assert chain.operators[0].metrics.reemitted_windows == 1
    assert chain.taps[0].late == []


def test_points_beyond_the_lateness_go_to_the_late_side_output_and_are_counted(
    cascade: Any,
) -> None:
    chain = cascade(lateness_ns=30 * S)
    chain.push(points([(KEY, 10 * S, 1.0)]))
    chain.watermark(Watermark(0, M + 30 * S))  # end + lateness <= watermark: beyond
    chain.push(points([(KEY, 20 * S, 4.0), (KEY, M + 40 * S, 8.0)]))
    (late,) = chain.taps[0].late
    assert (late.keys[int(late.key_idx[0])], int(late.ts_ns[0]), float(late.values[0])) == (
        KEY,
        20 * S,
        4.0,
    )
    assert chain.operators[0].metrics.late_points == 1
    chain.finish()
    assert [r[2:5] for r in rows_of(chain.taps[0].batches())] == [(0, 1, 1.0), (M, 1, 8.0)]


def test_a_re_emitted_partial_replaces_its_earlier_version_in_the_next_tier(
    cascade: Any,
) -> None:
    chain = cascade(lateness_ns=5 * M)
    chain.push(points([(KEY, 10 * S, 1.0), (KEY, 20 * S, 100.0)]))
    chain.watermark(Watermark(0, M))  # 1m window [0, 1m) fires: count 2, max 100
    chain.push(points([(KEY, 20 * S, 2.0)]))  # rewrite: max must drop to 2, count stay 2
    chain.finish()
    hour = rows_of(chain.taps[1].batches())
    assert hour == [("1h", KEY, 0, 2, 3.0, 1.0, 2.0, 1.0, 2.0)]


def test_a_re_emitted_partial_replaces_its_old_version_even_after_the_coarse_window_fired(
    cascade: Any,
) -> None:
    chain = cascade(lateness_ns=2 * H)
    chain.push(points([(KEY, 59 * M + 10 * S, 50.0), (KEY, 30 * M, 1.0)]))
    chain.watermark(Watermark(0, H))  # 1m and 1h windows fire
    chain.push(points([(KEY, 59 * M + 10 * S, 5.0)]))  # 1m re-emits, then 1h re-emits
    hour = rows_of(chain.taps[1].batches())
    assert hour == [
        ("1h", KEY, 0, 2, 51.0, 1.0, 50.0, 1.0, 50.0),
        ("1h", KEY, 0, 2, 6.0, 1.0, 5.0, 1.0, 5.0),
    ]
    assert chain.operators[1].metrics.reemitted_windows == 1
    chain.finish()
    day = rows_of(chain.taps[2].batches())
    assert day == [("1d", KEY, 0, 2, 6.0, 1.0, 5.0, 1.0, 5.0)]


def test_window_rows_are_purged_once_the_watermark_passes_end_plus_lateness(
    cascade: Any,
) -> None:
    chain = cascade(lateness_ns=30 * S)
    chain.push(points([(KEY, 10 * S, 1.0), (KEY, 70 * S, 1.0)]))
    backend = chain.backends[0]
    chain.watermark(Watermark(0, M))
    assert len(list(backend.scan(0, STATE_CHUNKS))) == 2  # fired, kept for lateness
    chain.watermark(Watermark(0, M + 30 * S))
    assert len(list(backend.scan(0, STATE_CHUNKS))) == 1  # only [1m, 2m) is left


def test_queryable_state_reports_the_aggregates_of_open_windows(cascade: Any) -> None:
    chain = cascade()
    chain.push(points([(KEY, 10 * S, 1.0), (KEY, 15 * S, 3.0), (KEY, 15 * S, 2.0)]))
    current = chain.operators[0].current_aggregates(0)
    assert rows_of([current]) == [("1m", KEY, 0, 2, 3.0, 1.0, 2.0, 1.0, 2.0)]
    assert chain.taps[0].batches() == []


def test_each_tier_emits_its_full_key_dictionary_so_the_next_tier_maps_keys_once(
    cascade: Any,
) -> None:
    chain = cascade()
    chain.push(points([(KEY, 10 * S, 1.0)]))
    chain.push(points([(OTHER, 70 * S, 1.0)]))
    chain.watermark(Watermark(0, 2 * M))
    batch = chain.taps[0].batches()[0]
    assert batch.keys == (KEY, OTHER)
    assert chain.operators[1].current_watermark_ns(0) == 2 * M


def test_a_tier_rejects_partials_of_the_wrong_size_and_raw_points_when_it_reads_partials(
    cascade: Any,
) -> None:
    chain = cascade()
    hour = chain.operators[1]
    with pytest.raises(StateError):
        hour.process_batch(points([(KEY, 1, 1.0)]), chain.outputs[1])


@pytest.mark.parametrize(
    ("window", "input_ns", "lateness"),
    [("1h", 7 * M, 0), ("1m", M, 0), ("1m", 0, -1), ("1m", 2 * M, 0)],
)
def test_invalid_tier_configurations_are_refused(window: str, input_ns: int, lateness: int) -> None:
    with pytest.raises(ConfigurationError):
        TierWindowOperator("w", TierSpec(window, window, "1d"), lateness, input_window_ns=input_ns)


def test_a_raw_tier_has_no_window_operator() -> None:
    with pytest.raises(ConfigurationError):
        TierWindowOperator("w", TierSpec("raw", "0s", "1d"))


def test_build_cascade_chains_tiers_and_names_them_by_uid() -> None:
    ops = build_cascade(TIERS, 10 * S, uid_prefix="tiers")
    assert [(o.uid, o.input_window_ns, o.allowed_lateness_ns) for o in ops] == [
        ("tiers-1m", 0, 10 * S),
        ("tiers-1h", M, 10 * S),
        ("tiers-1d", H, 10 * S),
    ]
