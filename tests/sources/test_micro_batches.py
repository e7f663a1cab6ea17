"""Cutting a fetch into micro-batches bounded by points (pure; the reader is tested against
the real broker in test_kafka_source.py)."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from metricsflow.sources.kafka import micro_batches, record_points


@given(
    points=st.lists(st.integers(min_value=0, max_value=50), max_size=60),
    bound=st.integers(min_value=1, max_value=120),
)
def test_micro_batches_never_exceed_the_bound_but_for_one_oversize_record_and_cover_the_fetch(
    points: list[int], bound: int
) -> None:
    cuts = micro_batches(points, bound)
    assert [i for start, end in cuts for i in range(start, end)] == list(range(len(points)))
    for start, end in cuts:
        assert end > start
        assert sum(points[start:end]) <= bound or end - start == 1
    for (start, end), (following, _) in pairwise(cuts):
        assert sum(points[start:end]) + points[following] > bound  # greedy: no needless cut


def test_a_record_has_one_point_per_line_and_an_empty_value_none() -> None:
    assert record_points(b"m v=1 1\nm v=2 2\nm v=3 3") == 3
    assert record_points(b"m v=1 1") == 1
    assert record_points(b"") == 0
    assert record_points(None) == 0
