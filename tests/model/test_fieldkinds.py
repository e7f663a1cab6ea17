"""Counter and sketch field patterns: defaults, globs, precedence, errors; the worker setting."""

from __future__ import annotations

import fnmatch

import pytest
from hypothesis import given
from hypothesis import strategies as st

from metricsflow.errors import ConfigurationError
from metricsflow.model.fieldkinds import FieldKinds, FieldPattern, FieldSelector
from metricsflow.worker.settings import WorkerSettings


@pytest.mark.parametrize(
    ("measurement", "field", "counter", "sketch"),
    [
        ("http_requests_total", "value", True, False),  # remote write counter
        ("http_request_duration_seconds_bucket", "value", True, False),  # histogram bucket
        ("http_request_duration_seconds_count", "value", True, False),
        ("http_request_duration_seconds_sum", "value", True, False),
        ("http_request_duration_seconds", "value", False, True),  # a summary quantile gauge
        ("prometheus", "go_gc_duration_seconds_count", True, False),  # Telegraf prometheus v2
        ("prometheus", "go_gc_duration_seconds", False, True),
        ("prometheus", "process_cpu_seconds_total", True, False),
        ("net", "bytes_recv", True, False),
        ("net", "icmp_inerrors", False, False),
        ("diskio", "reads", True, False),
        ("diskio", "iops_in_progress", False, False),
        ("diskio", "weighted_io_time", True, False),
        ("cpu", "usage_idle", False, False),
        ("api", "latency_ms", False, True),
        ("http_response", "response_time", False, True),
        ("Net", "bytes_recv", False, False),  # case-sensitive, as InfluxDB names are
    ],
)
def test_defaults(measurement: str, field: str, counter: bool, sketch: bool) -> None:
    kinds = FieldKinds()
    assert kinds.is_counter(measurement, field) is counter
    assert kinds.has_sketch(measurement, field) is sketch


def test_patterns_and_precedence() -> None:
    kinds = FieldKinds(
        counters=FieldSelector.parse("app/req?, requests_*"),
        sketches=FieldSelector.parse("app/*,db/q[0-9]"),
    )
    assert kinds.is_counter("app", "reqs")
    assert kinds.is_counter("anything", "requests_ok")
    assert not kinds.is_counter("app", "requests")  # `?` is exactly one character
    assert kinds.has_sketch("app", "lat")
    assert not kinds.has_sketch("app", "reqs")
    assert kinds.has_sketch("db", "q7")
    assert not kinds.has_sketch("db", "qx")
    assert str(FieldSelector.parse("a/b,c")) == "a/b,*/c"
    assert FieldSelector.parse("  ").patterns == ()
    assert not FieldSelector.parse("").matches("m", "f")


name_st = st.text(st.sampled_from("ab_/x*?"), min_size=1, max_size=6)


@given(m=st.text("ab_x/", max_size=5), f=st.text("ab_x", max_size=5), pats=st.lists(name_st))
def test_matches_is_any_pattern_by_fnmatch(m: str, f: str, pats: list[str]) -> None:
    text = ",".join(pats)
    try:
        selector = FieldSelector.parse(text)
    except ConfigurationError:
        return
    expected = False
    for p in pats:
        meas, sep, fld = p.strip().partition("/")
        if not sep:
            meas, fld = "*", meas
        expected |= fnmatch.fnmatchcase(m, meas) and fnmatch.fnmatchcase(f, fld)
    assert selector.matches(m, f) is expected


@pytest.mark.parametrize("bad", ["a/", "/f", "m/[ab"])
def test_bad_patterns_are_named(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="field pattern"):
        FieldPattern.parse(bad)


def test_worker_setting_is_parsed_and_a_bad_pattern_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("METRICSFLOW_COUNTER_FIELDS", "mymeas/hits")
    monkeypatch.setenv("METRICSFLOW_SKETCH_FIELDS", "")
    kinds = WorkerSettings().field_kinds
    assert kinds.is_counter("mymeas", "hits")
    assert not kinds.is_counter("http_requests_total", "value")
    assert not kinds.has_sketch("api", "latency")
    monkeypatch.setenv("METRICSFLOW_SKETCH_FIELDS", "ok,m/")
    with pytest.raises(ConfigurationError, match=r"METRICSFLOW_SKETCH_FIELDS: field pattern 'm/'"):
        WorkerSettings()
