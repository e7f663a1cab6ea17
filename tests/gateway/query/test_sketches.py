"""The query API reads the workers' sketches (dense and sparse stores) and DataDog's, merges
them exactly and answers InfluxDB's nearest-rank percentile within 1 %."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.query.sketches import SketchAccumulator, SketchDecodeError
from metricsflow.windows import sketches as worker_sketches

PERCENTS = (0.5, 1, 25, 50, 90, 95, 99, 99.9, 100)


def nearest_rank(values: list[float], percent: float) -> float | None:
    """InfluxDB's PERCENTILE: 0-based rank floor(n * N / 100 + 0.5) - 1 of the sorted values."""
    ordered = sorted(values)
    rank = math.floor(len(ordered) * percent / 100 + 0.5) - 1
    return None if rank < 0 else ordered[min(rank, len(ordered) - 1)]


def worker_encoded(chunks: list[list[float]]) -> list[str]:
    group = np.repeat(np.arange(len(chunks)), [len(c) for c in chunks]).astype(np.int64)
    values = np.array([v for c in chunks for v in c], dtype=np.float64)
    _, encoded = worker_sketches.encode(worker_sketches.from_values(group, values))
    return encoded


def assert_within_accuracy(got: float | None, want: float | None) -> None:
    if want is None:
        assert got is None
        return
    assert got is not None
    assert math.isclose(got, want, rel_tol=0.01, abs_tol=0.0), (got, want)


values_strategy = st.lists(
    st.one_of(
        st.floats(1e-9, 1e9),
        st.floats(-1e6, -1e-6),
        st.just(0.0),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(st.lists(values_strategy, min_size=1, max_size=6), values_strategy)
def test_merged_worker_sketches_and_raw_values_answer_every_percentile_within_1_percent(
    chunks: list[list[float]], raw: list[float]
) -> None:
    acc = SketchAccumulator()
    for text in worker_encoded(chunks):
        acc.add_encoded(text)
    acc.add_values(raw)
    every = [v for c in chunks for v in c] + raw
    for percent, got in zip(PERCENTS, acc.percentiles(PERCENTS), strict=True):
        assert_within_accuracy(got, nearest_rank(every, percent))


def test_a_wide_sketch_uses_sparse_and_dense_stores_and_both_are_read() -> None:
    values = [1.0 + i for i in range(40)] + [1e6, 1e-6]  # a dense run and far-apart bins
    (text,) = worker_encoded([values])
    acc = SketchAccumulator()
    acc.add_encoded(text)
    for percent, got in zip(PERCENTS, acc.percentiles(PERCENTS), strict=True):
        assert_within_accuracy(got, nearest_rank(values, percent))


def test_sketches_written_by_datadogs_package_are_read() -> None:
    sketch = DDSketch(0.01)
    values = [0.001 * (i + 1) ** 1.5 for i in range(500)]
    for v in values:
        sketch.add(v)
    text = base64.b64encode(DDSketchProto.to_proto(sketch).SerializeToString()).decode()
    acc = SketchAccumulator()
    acc.add_encoded(text)
    for percent, got in zip(PERCENTS, acc.percentiles(PERCENTS), strict=True):
        assert_within_accuracy(got, nearest_rank(values, percent))


def test_an_empty_sketch_or_a_rank_below_the_first_value_answers_null_as_influxdb() -> None:
    assert SketchAccumulator().percentiles([50]) == [None]
    acc = SketchAccumulator()
    acc.add_values([5.0])
    assert acc.percentiles([10, 50]) == [None, pytest.approx(5.0, rel=0.01)]


@pytest.mark.parametrize(
    "text",
    [
        "not base64!",
        base64.b64encode(b"\xff\xff\xff").decode(),
        # a sketch of another accuracy (2 %)
        base64.b64encode(DDSketchProto.to_proto(DDSketch(0.02)).SerializeToString()).decode(),
    ],
)
def test_a_sketch_the_gateway_cannot_merge_is_refused_with_its_text(text: str) -> None:
    with pytest.raises(SketchDecodeError, match="sketch"):
        SketchAccumulator().add_encoded(text)
