"""State expiry (issue 12): series that stop reporting leave the window operators' key
dictionaries once their last window is purged; a series that comes back is exact again;
the source's key index forgets keys nobody uses (metricsflow/windows/keys.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from metricsflow.model.columnar import decode_columnar
from metricsflow.model.fieldkinds import FieldKinds, FieldSelector
from metricsflow.runtime.records import Watermark, window_key
from metricsflow.windows import build_cascade
from metricsflow.windows.corrections import STATE_PENDING, CorrectionMailbox
from metricsflow.windows.keys import STATE_CHUNKS, STATE_KEYS, WindowKeyIndex
from tests.windows.test_cascade_against_reference import (
    FINEST,
    TIERS,
    S,
    check_against_reference,
    check_restore,
)
from tests.windows.test_corrections import result
from tests.windows.test_tier_window_operator import TIERS as TIERS_1M_1H
from tests.windows.test_tier_window_operator import M, points, rows_of

FIXTURES = [HealthCheck.function_scoped_fixture]


def persisted_keys(backend: Any, kg: int = 0) -> list[str]:
    """The key dictionary as the state holds it (what a checkpoint writes)."""
    return [k for _, entry in backend.scan(kg, STATE_KEYS) for k in entry.keys]


def series(r: int, i: int) -> str:
    return window_key("db", f"cpu,pod=r{r}-{i}", "v")


def test_series_that_stop_reporting_leave_every_tier_once_their_windows_are_purged(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    ops = build_cascade(TIERS_1M_1H, 0)
    backends = [backend_factory(o.uid) for o in ops]
    chain = chain_factory(ops, backends, storage, frozenset({0}))
    for r in range(6):  # every round (one hour) replaces all series by 10 new ones
        chain.push(points([(series(r, i), r * 60 * M + i * S, float(i)) for i in range(10)]))
        chain.watermark(Watermark(0, (r + 1) * 60 * M))  # the round's 1m and 1h windows fire
        for backend in backends[:2]:  # 1m, 1h: their windows of the round were purged
            assert persisted_keys(backend) == []
        # 1d: the day is still open, every series of the day is live
        assert len(persisted_keys(backends[2])) == 10 * (r + 1)
    chain.watermark(Watermark(0, 24 * 60 * M))  # the day fired and was purged (lateness 0)
    for backend in backends:
        assert persisted_keys(backend) == []
        assert list(backend.scan(0, STATE_CHUNKS)) == []
    assert len(rows_of(chain.taps[1].batches())) == 60  # every series' 1h row was emitted


def test_a_series_that_comes_back_after_expiry_is_exact_again(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    ops = build_cascade(TIERS_1M_1H, 0)
    chain = chain_factory(ops, [backend_factory(o.uid) for o in ops], storage, frozenset({0}))
    back, other = series(0, 0), series(0, 1)
    chain.push(points([(back, 10 * S, 1.0), (other, 10 * S, 2.0)]))
    chain.watermark(Watermark(0, 2 * 60 * M))
    for r in range(1, 4):  # `back` is silent for three hours: expired everywhere
        chain.push(points([(other, r * 60 * M, 3.0)]))
        chain.watermark(Watermark(0, (r + 2) * 60 * M))
    chain.push(points([(back, 5 * 60 * M + 10 * S, 7.0), (back, 5 * 60 * M + 20 * S, 8.0)]))
    chain.watermark(Watermark(0, 7 * 60 * M))
    rows = [row for row in rows_of(chain.taps[1].batches()) if row[1] == back]
    assert rows == [
        ("1h", back, 0, 1, 1.0, 1.0, 1.0, 1.0, 1.0),
        ("1h", back, 5 * 60 * M, 2, 15.0, 7.0, 8.0, 7.0, 8.0),
    ]


def test_a_pending_correction_keeps_its_key_and_is_renumbered_when_others_expire(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    mailbox = CorrectionMailbox()
    ops = build_cascade(TIERS_1M_1H, 0, corrections=mailbox)
    backends = [backend_factory(o.uid) for o in ops]
    chain = chain_factory(ops, backends, storage, frozenset({0}))
    others, key, new = [series(0, i) for i in range(8)], series(1, 0), series(2, 0)
    chain.push(points([(k, 90 * S, 1.0) for k in others]))  # ids 0..7
    chain.push(points([(key, 10 * S, 1.0)]))  # id 8
    chain.watermark(Watermark(0, M))  # [0, 1m) fired and purged: 1 of 9 keys dead, kept
    chain.push(points([(key, 20 * S, 4.0)]))  # for a purged window: a correction is pending
    (request,) = chain.taps[0].requests
    chain.push(points([(new, 6 * M, 1.0)]))  # id 9
    chain.watermark(Watermark(0, 3 * M))  # `others` left; `key` is dead but pending
    assert persisted_keys(backends[0]) == [key, new]  # compacted, in order
    pending = [k for k, _ in backends[0].scan(0, STATE_PENDING)]
    assert [int.from_bytes(k[8:12], "big") for k in pending] == [0]  # renumbered from 8
    mailbox.put(result(request, 2, 5.0))
    chain.tick()
    assert rows_of(chain.taps[0].batches())[-1] == ("1m", key, 0, 2, 5.0, 1.0, 5.0, 1.0, 5.0)
    assert list(backends[0].scan(0, STATE_PENDING)) == []  # settled under its new id
    chain.finish()
    hourly = {row[1]: row for row in rows_of(chain.taps[1].batches())}
    assert hourly[key] == ("1h", key, 0, 2, 5.0, 1.0, 5.0, 1.0, 5.0)


# -- churn against the independent reference (tests/windows/test_cascade_against_reference.py)
@st.composite
def churn_streams(draw: st.DrawFn) -> dict[str, Any]:
    """Keys drift: each batch uses a few of a sliding range, which sometimes jumps back (a
    series returning after its state expired). Events span several 5m windows."""
    n_kg = draw(st.integers(1, 2))
    n_keys = 16
    cursor = dict.fromkeys(range(n_kg), draw(st.integers(0, 100)) * S)
    base = 0
    steps: list[tuple[Any, ...]] = []
    for _ in range(draw(st.integers(4, 30))):
        kg = draw(st.integers(0, n_kg - 1))
        cursor[kg] += draw(st.integers(0, 200)) * S
        move = draw(st.integers(-6, 3))
        base = min(max(base + move, 0), n_keys - 3)
        rows = draw(
            st.lists(
                st.tuples(
                    st.integers(base, base + 2),
                    st.integers(0, 40),
                    st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False),
                ),
                min_size=1,
                max_size=6,
            )
        )
        steps.append(("batch", kg, [(k, cursor[kg] - b * S, v) for k, b, v in rows], False))
    return {
        "n_kg": n_kg,
        "n_keys": n_keys,
        "steps": steps,
        "bound": draw(st.sampled_from([0, 5 * S])),
        "lateness": draw(st.sampled_from([0, FINEST, 60 * S])),
        "idle": None,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=FIXTURES)
@given(stream=churn_streams())
def test_churning_series_equal_the_reference_and_leave_no_key_behind_on_the_heap_backend(
    stream: dict[str, Any], chain_factory: Any, heap_backends: Any, storage: Any
) -> None:
    check_churn(stream, chain_factory, heap_backends, storage)


@settings(max_examples=8, deadline=None, suppress_health_check=FIXTURES)
@given(stream=churn_streams())
def test_churning_series_equal_the_reference_and_leave_no_key_behind_on_rocksdb(
    stream: dict[str, Any], chain_factory: Any, rocksdb_backends: Any, storage: Any
) -> None:
    check_churn(stream, chain_factory, rocksdb_backends, storage)


def check_churn(stream: dict[str, Any], chain_factory: Any, backends: Any, storage: Any) -> None:
    made: list[Any] = []

    def tracked(owner: str) -> Any:
        made.append(backends(owner))
        return made[-1]

    check_against_reference(stream, chain_factory, tracked, storage)
    assert len(made) == len(TIERS)  # the watermark assigner and one backend per tier
    for backend in made[1:]:  # after the end of input every window was purged
        for kg in range(stream["n_kg"]):
            assert persisted_keys(backend, kg) == []


@settings(max_examples=25, deadline=None, suppress_health_check=FIXTURES)
@given(stream=churn_streams(), cut=st.floats(0, 1))
def test_a_cascade_restored_between_expiries_emits_what_an_uninterrupted_one_emits(
    stream: dict[str, Any], cut: float, chain_factory: Any, heap_backends: Any, storage: Any
) -> None:
    check_restore(stream, cut, chain_factory, heap_backends, storage)


# -- the source side ----------------------------------------------------------------------
def record(*series_ids: int) -> bytes:
    return "\n".join(f"cpu,pod=p{i} v={i} 1" for i in series_ids).encode()


def test_the_source_index_forgets_its_keys_when_many_stopped_reporting() -> None:
    index = WindowKeyIndex(sweep_period_ns=10 * S)
    seen: Counter[str] = Counter()
    for r in range(10):  # every round (5 s of receive time): 20 new series, twice
        for half in range(2):
            chunk = decode_columnar(record(*range(20 * r, 20 * r + 20)), index.interner)
            ids = index.ids("db", chunk)
            keys = index.keys
            got = [keys[i] for i in ids.tolist()]
            assert got == [
                window_key("db", f"cpu,pod=p{i}", "v") for i in range(20 * r, 20 * r + 20)
            ]
            seen.update(got)
            index.sweep(r * 5 * S + half)
        # forgotten at the end of a period (10 s: two or three rounds) that left some unused
        assert len(index.dictionary) <= 100
        assert len(index.interner.series_keys) <= 100
    assert index.sweeps >= 2
    assert len(seen) == 200


def test_the_source_index_keeps_keys_that_are_still_used() -> None:
    index = WindowKeyIndex(sweep_period_ns=10 * S)
    for r in range(20):
        index.ids("db", decode_columnar(record(*range(30)), index.interner))
        assert not index.sweep(r * S)
    assert len(index.dictionary) == 30
    first = index.keys
    index.ids("db", decode_columnar(record(*range(30)), index.interner))
    assert index.keys is first  # nothing new: the same snapshot, the operators map nothing
    assert index.sweeps == 0


def test_a_sweep_waits_for_the_end_of_its_period() -> None:
    index = WindowKeyIndex(sweep_period_ns=10 * S)
    index.ids("db", decode_columnar(record(*range(10)), index.interner))
    assert not index.sweep(0)  # starts a period
    index.ids("db", decode_columnar(record(100), index.interner))
    assert not index.sweep(9 * S)  # the period goes on
    index.ids("db", decode_columnar(record(101), index.interner))
    assert not index.sweep(10 * S)  # every key was used in the period; the next one starts
    index.ids("db", decode_columnar(record(100), index.interner))
    assert not index.sweep(5 * S)  # the clock went back: a new period starts there
    assert index.sweep(15 * S)  # 1 of 12 keys used in [5 s, 15 s]: forgotten
    assert len(index.dictionary) == 0
    ids = index.ids("db", decode_columnar(record(5, 100), index.interner))
    assert [index.keys[i] for i in ids.tolist()] == [
        window_key("db", "cpu,pod=p5", "v"),
        window_key("db", "cpu,pod=p100", "v"),
    ]


def test_a_counter_keeps_its_last_sample_through_a_compaction(
    chain_factory: Any, backend_factory: Any, storage: Any
) -> None:
    kinds = FieldKinds(counters=FieldSelector.parse("*_total/*"))
    ops = build_cascade(TIERS_1M_1H, 0, field_kinds=kinds)
    backends = [backend_factory(o.uid) for o in ops]
    chain = chain_factory(ops, backends, storage, frozenset({0}))
    counter = window_key("db", "requests_total,host=a", "v")
    chain.push(points([(series(0, i), 10 * S, 1.0) for i in range(8)]))  # ids 0..7
    chain.push(points([(counter, 5 * S, 10.0)]))  # id 8
    chain.watermark(Watermark(0, 2 * M))  # the gauges left; the counter's last sample stays
    assert persisted_keys(backends[0]) == [counter]
    chain.push(points([(counter, 3 * M + 5 * S, 15.0)]))
    chain.watermark(Watermark(0, 5 * M))
    rows = {
        int(b.window_start_ns[i]): (float(b.increase[i]), int(b.resets[i]))
        for b in chain.taps[0].batches()
        for i in range(len(b))
        if b.keys[int(b.key_idx[i])] == counter and b.increase is not None
    }
    assert rows == {0: (0.0, 0), 3 * M: (5.0, 0)}  # paired with the sample before the gap
    # silent for longer than raw's retention (1 d here): InfluxDB forgets its last sample, and
    # so does the operator; its key leaves too
    chain.watermark(Watermark(0, 25 * 60 * M))
    assert persisted_keys(backends[0]) == []
    chain.push(points([(counter, 26 * 60 * M, 20.0)]))
    chain.watermark(Watermark(0, 27 * 60 * M))
    last = chain.taps[0].batches()[-1]
    assert (float(last.increase[0]), int(last.resets[0])) == (0.0, 0)  # no pair, as over raw
