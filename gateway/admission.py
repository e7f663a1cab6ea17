"""Admission of a write request: what it may cost, reserved before it is parsed, and parsing
that never holds the event loop.

**Cost** (bytes of gateway memory a request holds until Kafka settles it), measured with
``tracemalloc`` on canonical line protocol: the parsed request keeps about 2x the line bytes
(a series key and a line per point) plus ~100 bytes of Python objects per point. So a request
costs :data:`COST_PER_BYTE` x its decompressed size plus :data:`COST_PER_LINE` x its lines
(a JSON body: :data:`JSON_COST_PER_BYTE` x its size, the decoded objects being larger than
the text). The cost is reserved against ``GATEWAY_MAX_INFLIGHT_BYTES`` *before* parsing
(429 when the budget is taken by other requests); a request that alone costs more than the
whole budget is refused with 413 (it could never be admitted). A 35 KB gzip body that
inflates to 4 million tiny lines costs ~600 MB: refused before any line is parsed.

**Parsing** of line protocol runs on the event loop in slices of :data:`SLICE_BYTES` (cut at
a line end, line numbers of errors shifted to the whole body), yielding between slices, so
``/ping`` and other requests wait for one slice at most. (A worker thread was measured worse:
on a loaded machine the loop waited up to 1.5 s for the interpreter lock the parsing thread
held.) JSON and remote write are decoded in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.base import BadRequestError, PayloadTooLargeError
from gateway.producer import KafkaWriter
from metricsflow.model import ParseError
from metricsflow.model.limits import LimitError, check_name
from metricsflow.model.lineprotocol import line_end_after

COST_PER_BYTE = 3
COST_PER_LINE = 128
JSON_COST_PER_BYTE = 12
SLICE_BYTES = 32 * 1024
"""Line protocol parsed between two turns of the event loop: a few milliseconds of CPU."""

LineParser = Callable[[bytes], tuple[list[str], list[str], list[ParseError]]]
"""``body -> (series_keys, canonical_lines, errors of the refused lines)``."""


def line_protocol_cost(body: bytes) -> int:
    return COST_PER_BYTE * len(body) + COST_PER_LINE * (body.count(b"\n") + 1)


def lines_cost(lines: list[str]) -> int:
    """The cost of parsed lines (remote write, whose lines are only known after decoding)."""
    return COST_PER_BYTE * sum(map(len, lines)) + COST_PER_LINE * len(lines)


class Reservation:
    """Bytes of the in-flight budget held by one request; :meth:`hand_over` passes them to
    :meth:`KafkaWriter.write`, which releases them when the records settle; otherwise
    :meth:`release` gives them back (a refused request)."""

    def __init__(self, writer: KafkaWriter, budget: int) -> None:
        self.writer = writer
        self.budget = budget
        self.held = 0

    def grow_to(self, cost: int, what: str) -> None:
        """Hold ``cost`` in total: 413 if that exceeds the whole budget, 429 if other
        requests hold too much of it now."""
        if cost > self.budget:
            raise PayloadTooLargeError(
                f"{what} would hold ~{cost} bytes of gateway memory, more than "
                f"GATEWAY_MAX_INFLIGHT_BYTES={self.budget}; split it into smaller requests"
            )
        if cost > self.held:
            self.writer.reserve(cost - self.held)
            self.held = cost

    def hand_over(self) -> int:
        held, self.held = self.held, 0
        return held

    def release(self) -> None:
        if self.held:
            self.writer.release(self.held)
            self.held = 0


def check_target(db: str, rp: str | None) -> None:
    """400 naming the parameter when InfluxDB would refuse the database or retention policy."""
    try:
        check_name(db, "database")
        if rp is not None:
            check_name(rp, "retention policy")
    except LimitError as exc:
        raise BadRequestError(str(exc)) from None


async def parse_line_protocol_in_slices(
    body: bytes, parse: LineParser
) -> tuple[list[str], list[str], list[ParseError]]:
    """``parse`` over ``body`` slice by slice, yielding to the event loop between slices; the
    line numbers of the errors are those of the whole body."""
    keys: list[str] = []
    lines: list[str] = []
    errors: list[ParseError] = []
    start = 0
    line_offset = 0
    size = len(body)
    while start < size:
        # cut at a line end as InfluxDB splits lines (not inside a quoted string field)
        end = line_end_after(body, start, start + SLICE_BYTES) if size - start > SLICE_BYTES else -1
        end = size if end < 0 else end + 1
        chunk = body[start:end]
        k, ln, errs = parse(chunk)
        keys.extend(k)
        lines.extend(ln)
        errors.extend(
            e
            if not line_offset
            else ParseError(e.reason, line=e.line + line_offset, column=e.column, text=e.text)
            for e in errs
        )
        line_offset += chunk.count(b"\n")
        start = end
        if start < size:
            await asyncio.sleep(0)  # let /ping and the other requests in
    return keys, lines, errors
