"""Topic message format lp1: encoding, exact and columnar decoding, malformed records."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricsflow.errors import SerializationError
from metricsflow.model import (
    Point,
    RecordFormatError,
    Unsigned,
    decode_columnar,
    decode_record,
    encode_chunk,
    partition_for,
)
from metricsflow.model.message import decode_points

POINTS = [
    Point.make("cpu", {"host": "a"}, {"usage": 1.5, "n": 2, "u": Unsigned(3), "ok": True}, 10),
    Point.make("cpu", {"host": "b"}, {"usage": 2.5, "msg": 'hi "x"'}, 20),
    Point.make("cpu", {"host": "a"}, {"usage": 3.5}, 30),
]


def test_a_chunk_round_trips_through_headers_and_canonical_lines() -> None:
    (rec,) = encode_chunk(POINTS, "telegraf", "autogen", received_ns=99)
    assert dict(rec.headers) == {
        "mf-format": b"lp1",
        "mf-db": b"telegraf",
        "mf-rp": b"autogen",
        "mf-received-ns": b"99",
    }
    assert rec.key is None
    assert rec.value.split(b"\n")[0] == b"cpu,host=a n=2i,ok=true,u=3u,usage=1.5 10"
    chunk = decode_record(rec.value, rec.headers)
    assert (chunk.db, chunk.rp, chunk.received_ns) == ("telegraf", "autogen", 99)
    assert chunk.points() == POINTS


def test_a_single_series_chunk_is_keyed_by_its_series_key() -> None:
    (rec,) = encode_chunk([POINTS[0], POINTS[2]], "db")
    assert rec.key == b"cpu,host=a"


def test_columns_hold_every_numeric_sample_with_its_series_field_time_and_kind() -> None:
    (rec,) = encode_chunk(POINTS, "db")
    for value in (rec.value, rec.value.replace(b"cpu,host=b", b"cpu,host=b ").replace(b"  ", b" ")):
        c = decode_columnar(value)
        assert c.series_keys == ["cpu,host=a", "cpu,host=b"]
        cols = zip(c.series_idx, c.field_idx, c.time_ns, c.values, c.kinds, strict=True)
        samples = {
            (c.series_keys[s], c.field_keys[f], int(t), float(v), int(k)) for s, f, t, v, k in cols
        }
        assert samples == {
            ("cpu,host=a", "n", 10, 2.0, 1),
            ("cpu,host=a", "u", 10, 3.0, 2),
            ("cpu,host=a", "usage", 10, 1.5, 0),
            ("cpu,host=b", "usage", 20, 2.5, 0),
            ("cpu,host=a", "usage", 30, 3.5, 0),
        }
        assert c.non_numeric == 2
        assert c.point_count == 3
        assert c.time_ns.dtype == np.int64
        assert c.values.dtype == np.float64


def test_a_third_party_record_with_unsorted_tags_maps_to_the_canonical_series() -> None:
    c = decode_columnar(b"m,b=1,a=2 v=1 1\nm,a=2,b=1 v=2 2")
    assert c.series_keys == ["m,a=2,b=1"]
    assert list(c.series_idx) == [0, 0]


def test_large_chunks_are_split_under_the_record_size_limit() -> None:
    pts = [Point.make("m", {"k": str(i)}, {"v": float(i)}, i) for i in range(1000)]
    recs = encode_chunk(pts, "db", max_bytes=2_000)
    assert len(recs) > 5
    assert all(len(r.value) <= 2_000 for r in recs)
    assert [p for r in recs for p in decode_points(r.value)] == pts


@pytest.mark.parametrize(
    ("value", "line", "column"),
    [
        (b"m v=1 1\nm v=abc 2", 2, 5),
        (b"m v=1", 1, 6),  # the timestamp is required in a record
        (b"m v=1 1\n\xff", 2, 1),
        (b"m,a=1,a=2 v=1 1", 1, 7),
    ],
)
def test_malformed_records_raise_a_serialization_error_naming_line_and_column(
    value: bytes, line: int, column: int
) -> None:
    with pytest.raises(RecordFormatError) as info:
        decode_columnar(value)
    assert isinstance(info.value, SerializationError)
    assert (info.value.line, info.value.column) == (line, column)


def test_records_without_the_format_header_are_refused() -> None:
    with pytest.raises(SerializationError, match="mf-format"):
        decode_record(b"m v=1 1", [("mf-db", b"x")])
    with pytest.raises(SerializationError, match="unsupported"):
        decode_record(b"m v=1 1", [("mf-format", b"lp9"), ("mf-db", b"x")])


@given(st.binary(max_size=200) | st.text(max_size=80).map(str.encode))
@settings(max_examples=300)
def test_any_bytes_decode_or_raise_a_serialization_error_never_anything_else(value: bytes) -> None:
    with contextlib.suppress(SerializationError):
        decode_columnar(value)


def test_the_partition_is_kafkas_default_partitioner_of_the_series_key() -> None:
    from aiokafka.partitioner import DefaultPartitioner

    for key in ["cpu,host=a", "mem", "disk,path=/,host=é"]:
        parts = list(range(7))
        assert partition_for(key, 7) == DefaultPartitioner()(key.encode(), parts, parts)
