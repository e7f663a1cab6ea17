"""Pure logic of the gateway's admission: linear gzip, sliced parsing with whole-body line
numbers, costs and reservations, names InfluxDB refuses. (Against the real stack, with the
gateway's RSS and /ping watched: tests/hostile.)"""

from __future__ import annotations

import gzip
import time
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.admission import (
    SLICE_BYTES,
    Reservation,
    check_target,
    line_protocol_cost,
    parse_line_protocol_in_slices,
)
from gateway.base import BadRequestError, OverloadedError, PayloadTooLargeError
from gateway.body import gunzip_limited
from gateway.responses import error_response
from metricsflow.model import ParseError
from metricsflow.model.lineprotocol import canonicalize


def empty_members(n: int) -> bytes:
    member = gzip.compress(b"", mtime=0)
    return member * n


def test_many_empty_gzip_members_take_linear_time() -> None:
    small, large = empty_members(20_000), empty_members(200_000)
    started = time.perf_counter()
    assert gunzip_limited(small, 1 << 20) == b""
    t_small = time.perf_counter() - started
    started = time.perf_counter()
    assert gunzip_limited(large, 1 << 20) == b""
    t_large = time.perf_counter() - started
    # 10x the members: linear is ~10x the time; quadratic (the old unused_data re-copy of the
    # whole rest per member) was ~100x, and 34 s for 200,000 members.
    assert t_large < 30 * t_small + 0.5, (t_small, t_large)
    assert t_large < 5


@given(st.lists(st.binary(max_size=3000), min_size=1, max_size=6))
@settings(max_examples=60, deadline=None)
def test_multi_member_gzip_decompresses_to_the_concatenation(parts: list[bytes]) -> None:
    body = b"".join(gzip.compress(p, mtime=0) for p in parts)
    assert gunzip_limited(body, 1 << 20) == b"".join(parts)


def test_gzip_limits_and_errors() -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    with pytest.raises(PayloadTooLargeError):
        gunzip_limited(bomb, 1_000_000)
    with pytest.raises(BadRequestError, match="truncated"):
        gunzip_limited(gzip.compress(b"abc" * 1000)[:-10], 1 << 20)
    with pytest.raises(BadRequestError, match="invalid gzip"):
        gunzip_limited(b"not gzip", 1 << 20)
    with pytest.raises(BadRequestError):
        gunzip_limited(gzip.compress(b"x") + zlib.compress(b"y"), 1 << 20)


def parse(body: bytes) -> tuple[list[str], list[str], list[ParseError]]:
    result = canonicalize(body, default_time_ns=1)
    return result.series_keys, result.lines, result.errors


async def test_sliced_parsing_equals_whole_parsing_and_names_the_whole_body_line() -> None:
    lines = [f"m,host=h{i % 7} v={i} {1_000 + i}".encode() for i in range(3 * SLICE_BYTES // 20)]
    body = b"\n".join(lines)
    assert len(body) > 2 * SLICE_BYTES
    assert await parse_line_protocol_in_slices(body, parse) == parse(body)
    bad_line = len(lines) - 5
    lines[bad_line - 1] = b"m v=oops 1"
    _, good, errors = await parse_line_protocol_in_slices(b"\n".join(lines), parse)
    assert len(good) == len(lines) - 1
    assert [(e.line, e.column, e.text) for e in errors] == [(bad_line, 5, "m v=oops 1")]


async def test_slices_are_cut_at_line_ends_not_inside_a_string_holding_newlines() -> None:
    # every line holds a string with newlines: a cut at any newline would split a point
    lines = [f'm,host=h{i % 7} s="a\nb\nc",v={i} {1_000 + i}'.encode() for i in range(5_000)]
    body = b"\n".join(lines)
    assert len(body) > 2 * SLICE_BYTES
    keys, good, errors = await parse_line_protocol_in_slices(body, parse)
    assert errors == []
    assert (keys, good, errors) == parse(body)
    assert len(good) == 5_000


class Writer:
    def __init__(self, budget: int) -> None:
        self.inflight_bytes = 0
        self.budget = budget

    def reserve(self, n: int) -> None:
        if self.inflight_bytes and self.inflight_bytes + n > self.budget:
            raise OverloadedError("busy")
        self.inflight_bytes += n

    def release(self, n: int) -> None:
        self.inflight_bytes -= n


def test_a_request_is_reserved_at_its_cost_and_refused_when_it_alone_exceeds_the_budget() -> None:
    writer = Writer(budget=1_000_000)
    tiny_lines = b"m v=1\n" * 4_000  # 24 kB of text, 4000 points
    assert line_protocol_cost(tiny_lines) > 20 * len(tiny_lines)
    first = Reservation(writer, writer.budget)  # type: ignore[arg-type]
    first.grow_to(line_protocol_cost(tiny_lines), "the request")
    assert writer.inflight_bytes == line_protocol_cost(tiny_lines)
    second = Reservation(writer, writer.budget)  # type: ignore[arg-type]
    with pytest.raises(OverloadedError):
        second.grow_to(600_000, "the request")
    assert writer.inflight_bytes == line_protocol_cost(tiny_lines)
    first.release()
    assert writer.inflight_bytes == 0
    with pytest.raises(PayloadTooLargeError, match="GATEWAY_MAX_INFLIGHT_BYTES"):
        second.grow_to(1_000_001, "the request")
    assert writer.inflight_bytes == 0


@pytest.mark.parametrize(
    ("db", "rp", "message"),
    [
        ("x" * 300, None, "database name 'xxx"),
        ("a/b", None, "contains '/'"),
        ("..", None, "is not a valid name"),
        ("ok", "r\tp", "retention policy name"),
        ("é" * 128, None, "256 bytes long"),
    ],
)
def test_names_influxdb_refuses_are_a_400_naming_them(
    db: str, rp: str | None, message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        check_target(db, rp)


def test_names_influxdb_accepts_pass() -> None:
    check_target("telegraf db-1,x=y", "autogen")
    check_target("é" * 127, None)


def test_an_error_quoting_undecodable_bytes_is_still_a_json_400() -> None:
    # Found by tests/hostile/test_fuzz.py: 'mem v=\xbd 1' was answered 500.
    answer = error_response(BadRequestError("unable to parse 'mem v=\udcbd 1'"), "v1")
    assert answer.status_code == 400
    assert b"\\\\udcbd" in answer.body
