"""Record format kinds1: what one metadata entry declares, and declarations round trips."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metricsflow.errors import SerializationError
from metricsflow.model.declarations import (
    FORMAT_KINDS1,
    MAX_DECLARATION_BYTES,
    DeclaredKind,
    KindDeclarations,
    PromMetricType,
    decode_declarations,
    encode_declarations,
    expand_family,
    record_format,
)

C, G = DeclaredKind.COUNTER, DeclaredKind.GAUGE


@pytest.mark.parametrize(
    ("family", "metric_type", "expected"),
    [
        ("http_requests", PromMetricType.COUNTER, {"http_requests": C, "http_requests_total": C}),
        ("http_requests_total", PromMetricType.COUNTER, {"http_requests_total": C}),
        ("temperature", PromMetricType.GAUGE, {"temperature": G}),
        ("queue_total", PromMetricType.GAUGE, {"queue_total": G}),
        ("rpc", PromMetricType.HISTOGRAM, {"rpc_bucket": C, "rpc_count": C, "rpc_sum": C}),
        ("q", PromMetricType.GAUGEHISTOGRAM, {"q_bucket": G, "q_gcount": G, "q_gsum": G}),
        ("gc", PromMetricType.SUMMARY, {"gc": G, "gc_count": C, "gc_sum": C}),
        ("build_info", PromMetricType.INFO, {}),
        ("state", PromMetricType.STATESET, {}),
        ("mystery", PromMetricType.UNKNOWN, {}),
        ("future", 42, {}),
        ("", PromMetricType.COUNTER, {}),
    ],
)
def test_a_metadata_entry_declares_the_measurements_of_its_family(
    family: str, metric_type: int, expected: dict[str, DeclaredKind]
) -> None:
    assert expand_family(family, metric_type) == expected


names = st.text(min_size=1, max_size=40)
kinds_maps = st.dictionaries(names, st.sampled_from(DeclaredKind), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    db=names,
    rp=st.none() | names,
    kinds=kinds_maps,
    received=st.none() | st.integers(0, 2**63 - 1),
)
def test_declarations_round_trip_through_one_kinds1_record(
    db: str, rp: str | None, kinds: dict[str, DeclaredKind], received: int | None
) -> None:
    decl = KindDeclarations(db, kinds, rp, received)
    records = encode_declarations(decl)
    assert len(records) == (1 if kinds else 0)
    for value, headers in records:
        assert record_format(headers) == FORMAT_KINDS1.encode()
        assert decode_declarations(value, headers) == decl


@settings(max_examples=12, deadline=None)
@given(
    alphabet=st.sampled_from(["a", "é", "\u20ac", "\U0001f600", '"', "\x01"]),
    length=st.integers(1_000, 40_000),
    count=st.integers(1, 40),
)
def test_many_long_names_split_into_records_each_within_the_record_limit(
    alphabet: str, length: int, count: int
) -> None:
    kinds = {f"{i}{alphabet * length}": C if i % 2 else G for i in range(count)}
    records = encode_declarations(KindDeclarations("db", kinds))
    merged: dict[str, DeclaredKind] = {}
    for value, headers in records:
        assert len(value) <= MAX_DECLARATION_BYTES
        part = decode_declarations(value, headers).kinds
        assert not merged.keys() & part.keys()
        merged.update(part)
    assert merged == kinds


def test_the_value_is_the_documented_json() -> None:
    ((value, headers),) = encode_declarations(
        KindDeclarations("prom", {"up": G, "x_total": C}, None, 7)
    )
    assert json.loads(value) == {"kinds": {"up": "gauge", "x_total": "counter"}}
    assert dict(headers) == {"mf-format": b"kinds1", "mf-db": b"prom", "mf-received-ns": b"7"}


@pytest.mark.parametrize(
    ("value", "headers", "names"),
    [
        (b'{"kinds": {}}', [("mf-format", b"lp1"), ("mf-db", b"d")], "not a kinds1"),
        (b'{"kinds": {}}', [("mf-format", b"kinds1")], "mf-db"),
        (None, [("mf-format", b"kinds1"), ("mf-db", b"d")], "tombstone"),
        (b"{", [("mf-format", b"kinds1"), ("mf-db", b"d")], "bad kinds1"),
        (b'{"kinds": []}', [("mf-format", b"kinds1"), ("mf-db", b"d")], "expected"),
        (b'{"kinds": {"m": "histo"}}', [("mf-format", b"kinds1"), ("mf-db", b"d")], "'histo'"),
    ],
)
def test_a_malformed_kinds1_record_is_refused_naming_what_does_not_fit(
    value: bytes | None, headers: list[tuple[str, bytes]], names: str
) -> None:
    with pytest.raises(SerializationError, match=names):
        decode_declarations(value, headers)
