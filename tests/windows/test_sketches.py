"""DDSketch kernel: relative accuracy against exact nearest-rank percentiles, exact merges,
the wire format against DataDog's own ``ddsketch`` package."""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from ddsketch import DDSketch
from ddsketch.pb.ddsketch_pb2 import DDSketch as DDSketchPb
from ddsketch.pb.proto import DDSketchProto
from hypothesis import given, settings
from hypothesis import strategies as st

from metricsflow.errors import SerializationError
from metricsflow.windows import sketches

ALPHA = sketches.RELATIVE_ACCURACY
TOL = ALPHA * (1 + 1e-9)


def influx_percentile(values: list[float], n_pct: float) -> float:
    """InfluxDB 1.x ``PERCENTILE(f, N)``: sort, take 0-based index floor(len*N/100 + 0.5) - 1."""
    ordered = sorted(values)
    i = math.floor(len(ordered) * n_pct / 100.0 + 0.5) - 1
    i = min(max(i, 0), len(ordered) - 1)
    return ordered[i]


def within(estimate: float, exact: float) -> bool:
    return abs(estimate - exact) <= TOL * abs(exact)


magnitude = st.one_of(
    st.floats(1e-300, 1e300, allow_subnormal=False),
    st.floats(1e-3, 1e4),  # the range latencies live in: many values share buckets
    st.sampled_from([1.0, 2.0, 0.5, 1.0202, 100.0]),
)
value_st = st.one_of(magnitude, magnitude.map(lambda x: -x), st.just(0.0))
groups_st = st.lists(st.lists(value_st, min_size=1, max_size=60), min_size=1, max_size=6)


def bins_of(groups: list[list[float]]) -> sketches.SketchBins:
    g = np.concatenate([np.full(len(vs), i, dtype=np.int64) for i, vs in enumerate(groups)])
    v = np.array([x for vs in groups for x in vs], dtype=np.float64)
    return sketches.from_values(g, v)


@settings(max_examples=300, deadline=None)
@given(groups=groups_st, extra=st.lists(st.floats(0, 100), max_size=4))
def test_percentiles_within_relative_accuracy_of_influx_nearest_rank(
    groups: list[list[float]], extra: list[float]
) -> None:
    percents = [*sketches.PERCENTILES, *extra, 100.0]
    gid, got = sketches.percentiles(bins_of(groups), percents)
    assert gid.tolist() == list(range(len(groups)))
    for i, vs in enumerate(groups):
        for j, pct in enumerate(percents):
            exact = influx_percentile(vs, pct)
            assert within(float(got[i, j]), exact), (vs, pct, got[i, j], exact)


@settings(max_examples=200, deadline=None)
@given(a=groups_st, b=groups_st, data=st.data())
def test_merge_equals_the_sketch_of_the_union(
    a: list[list[float]], b: list[list[float]], data: st.DataObject
) -> None:
    width = max(len(a), len(b))
    a += [[] for _ in range(width - len(a))]
    b += [[] for _ in range(width - len(b))]
    union = [x + y for x, y in zip(a, b, strict=True)]
    merged = sketches.merge([bins_of_sparse(a), bins_of_sparse(b)])
    whole = bins_of_sparse(union)
    for name in ("group", "store", "index", "count"):
        assert np.array_equal(getattr(merged, name), getattr(whole, name))
    assert sketches.encode(merged)[1] == sketches.encode(whole)[1]
    # regrouping (fine windows -> one coarse window) is a merge too
    coarse = sketches.merge([whole], regroup=np.zeros(width, dtype=np.int64))
    flat = [x for vs in union for x in vs]
    if flat:
        _, got = sketches.percentiles(coarse, [50, 99])
        assert within(float(got[0, 0]), influx_percentile(flat, 50))
        assert within(float(got[0, 1]), influx_percentile(flat, 99))


def bins_of_sparse(groups: list[list[float]]) -> sketches.SketchBins:
    """Like bins_of, for lists that may contain empty groups."""
    g = np.array([i for i, vs in enumerate(groups) for _ in vs], dtype=np.int64)
    v = np.array([x for vs in groups for x in vs], dtype=np.float64)
    return sketches.from_values(g, v)


@settings(max_examples=200, deadline=None)
@given(groups=groups_st, dense_only=st.booleans())
def test_encode_decode_round_trip(groups: list[list[float]], dense_only: bool) -> None:
    bins = bins_of(groups)
    gid, text = sketches.encode(bins, dense_only=dense_only)
    back = sketches.decode(text, gid)
    for name in ("group", "store", "index", "count"):
        assert np.array_equal(getattr(back, name), getattr(bins, name))
    assert all(
        set(t) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
        for t in text
    )


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.one_of(st.floats(1e-6, 1e9), st.floats(-1e9, -1e-6)), min_size=1))
def test_wire_format_is_datadogs(values: list[float]) -> None:
    """DataDog's ``ddsketch`` reads what we write, and we read what it writes."""
    bins = sketches.from_values(np.zeros(len(values), dtype=np.int64), np.array(values))
    _, (text,) = sketches.encode(bins, dense_only=True)  # the Python package reads dense stores
    theirs = DDSketchProto.from_proto(DDSketchPb.FromString(base64.b64decode(text)))
    assert theirs.count == len(values)
    assert theirs._mapping.gamma == pytest.approx(sketches.DEFAULT_MAPPING.gamma, rel=1e-15)
    for q in (0.0, 0.5, 0.99, 1.0):
        # same bins -> same answer at the package's own rank rule (lower rank q * (n - 1))
        exact = sorted(values)[math.floor(q * (len(values) - 1))]
        assert within(theirs.get_quantile_value(q), exact)

    native = DDSketch(ALPHA)
    for v in values:
        native.add(v)
    blob = base64.b64encode(DDSketchProto.to_proto(native).SerializeToString()).decode()
    back = sketches.decode([blob], np.zeros(1, dtype=np.int64))
    assert float(back.count.sum()) == len(values)
    _, got = sketches.percentiles(back, sketches.PERCENTILES)
    for j, pct in enumerate(sketches.PERCENTILES):
        assert within(float(got[0, j]), influx_percentile(values, pct))


def test_sparse_store_is_chosen_for_spread_values_and_is_smaller() -> None:
    values = np.array([1e-3, 1.0, 1e3, 1e6])
    bins = sketches.from_values(np.zeros(4, dtype=np.int64), values)
    _, (sparse,) = sketches.encode(bins)
    _, (dense,) = sketches.encode(bins, dense_only=True)
    assert len(sparse) < 120 < len(dense)


def test_bad_input_is_named() -> None:
    with pytest.raises(sketches.SketchError, match=r"non-finite value nan \(row 1\)"):
        sketches.from_values(np.zeros(2, dtype=np.int64), np.array([1.0, math.nan]))
    with pytest.raises(sketches.SketchError, match=r"1\.7976931348623157e\+308"):
        sketches.from_values(np.zeros(1, dtype=np.int64), np.array([1.7976931348623157e308]))
    with pytest.raises(SerializationError, match=r"sketch 0 .*not a base64 DDSketch"):
        sketches.decode(["%%%"], np.zeros(1, dtype=np.int64))
    other = DDSketch(0.05)
    other.add(1.0)
    blob = base64.b64encode(DDSketchProto.to_proto(other).SerializeToString()).decode()
    with pytest.raises(SerializationError, match=r"does not match gamma=1\.0202"):
        sketches.decode([blob], np.zeros(1, dtype=np.int64))
