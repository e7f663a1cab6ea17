"""The worker benchmark's correctness gate (bench/tier_rows.py): parsing InfluxDB's answer
into rows and comparing two contenders' rows. Pure logic, no servers."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.bench.loader import load_bench_module

tier_rows = load_bench_module("bench_tier_rows", "tier_rows.py")

ANSWER: list[dict[str, Any]] = [
    {
        "name": "cpu",
        "tags": {"host": "a", "cpu": "cpu0"},
        "columns": ["time", "count_v", "sum_v", "first_v"],
        "values": [[60_000_000_000, 6, 12.5, 1.0], [120_000_000_000, 2, 3, None]],
    },
    {
        "name": "cpu",
        "tags": {"host": "b", "cpu": "cpu0"},
        "columns": ["time", "count_v", "sum_v", "first_v"],
        "values": [[60_000_000_000, 1, 0.1, 0.1]],
    },
]


def test_rows_from_series_keys_by_measurement_sorted_tags_and_time() -> None:
    rows = tier_rows.rows_from_series(ANSWER)
    key = ("cpu", (("cpu", "cpu0"), ("host", "a")), 60_000_000_000)
    assert rows[key] == {"count_v": 6, "sum_v": 12.5, "first_v": 1.0}
    # a null column is a field the row does not have
    assert rows[("cpu", (("cpu", "cpu0"), ("host", "a")), 120_000_000_000)] == {
        "count_v": 2,
        "sum_v": 3,
    }
    assert len(rows) == 3


def test_identical_rows_compare_equal() -> None:
    rows = tier_rows.rows_from_series(ANSWER)
    assert tier_rows.compare_rows(rows, tier_rows.rows_from_series(ANSWER)) == []


def test_missing_extra_and_field_differences_are_named() -> None:
    ref = tier_rows.rows_from_series(ANSWER)
    other = {k: dict(v) for k, v in ref.items()}
    gone = ("cpu", (("cpu", "cpu0"), ("host", "b")), 60_000_000_000)
    del other[gone]
    new = ("cpu", (("host", "c"),), 60_000_000_000)
    other[new] = {"count_v": 1}
    key = ("cpu", (("cpu", "cpu0"), ("host", "a")), 60_000_000_000)
    other[key]["count_v"] = 7
    problems = tier_rows.compare_rows(ref, other)
    assert any("missing row" in p and "'b'" in p for p in problems)
    assert any("unexpected row" in p and "'c'" in p for p in problems)
    assert any("count_v=7 instead of 6" in p for p in problems)


def test_a_missing_field_is_a_difference() -> None:
    ref = tier_rows.rows_from_series(ANSWER)
    other = {k: dict(v) for k, v in ref.items()}
    key = ("cpu", (("cpu", "cpu0"), ("host", "a")), 60_000_000_000)
    del other[key]["first_v"]
    assert tier_rows.compare_rows(ref, other) != []


def test_counts_are_exact_even_by_one() -> None:
    ref = {("m", (), 0): {"count_v": 10**12}}
    assert tier_rows.compare_rows(ref, {("m", (), 0): {"count_v": 10**12 + 1}}) != []


@given(
    st.floats(min_value=-1e12, max_value=1e12, allow_nan=False).filter(lambda x: abs(x) > 1e-3),
    st.floats(min_value=2e-9, max_value=1e-3),
)
def test_floats_within_1e9_relative_pass_and_beyond_fail(value: float, rel: float) -> None:
    ref = {("m", (), 0): {"sum_v": value}}
    close = {("m", (), 0): {"sum_v": value * (1 + 1e-10)}}
    far = {("m", (), 0): {"sum_v": value * (1 + rel)}}
    assert tier_rows.compare_rows(ref, close) == []
    assert tier_rows.compare_rows(ref, far) != []


def test_the_list_is_bounded_and_counts_the_rest() -> None:
    ref = {("m", (), i): {"count_v": 1} for i in range(50)}
    problems = tier_rows.compare_rows(ref, {}, limit=5)
    assert len(problems) == 6
    assert problems[-1] == "... 45 more difference(s)"
