"""What the pipeline can store: the time range, and the database / retention-policy names.

Checked at the door (every gateway endpoint, 400 before anything is produced) and again where
records enter the worker (a record that breaks a limit is dead-lettered with its partition and
offset, never processed), so that data sent by any producer cannot stop the job.

**Time range** (``ENGINE_MIN_TIME_NS <= t < ENGINE_MAX_TIME_NS``): 1678-01-01T00:00:00Z up to,
excluding, 2262-01-01T00:00:00Z. InfluxDB itself stores ``[MinInt64 + 2, MaxInt64 - 1]`` ns
(1677-09-21T00:12:43.145224194Z .. 2262-04-11T23:47:16.854775806Z); the engine needs room
above a point for the end of its coarsest window (plus lateness), all in int64 nanoseconds, so
the range is ~100 days narrower at each end: tier windows up to 90 days always fit.

**Names** (databases and retention policies), as InfluxDB 1.6.7 refuses them in ``CREATE
DATABASE`` / ``CREATE RETENTION POLICY`` (checked against the real server): empty, ``.`` or
``..``, containing ``/`` or ``\\``, a character that is not printable (Go's
``unicode.IsPrint``, which equals Python's ``str.isprintable``: letters, marks, numbers,
punctuation, symbols and the ASCII space), or longer than 255 bytes in UTF-8
(``name too long``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

import numpy as np
import numpy.typing as npt

from metricsflow.errors import MetricsflowError

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _ns(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1) * 1_000


ENGINE_MIN_TIME_NS: Final = _ns(datetime(1678, 1, 1, tzinfo=UTC))
"""Smallest timestamp the pipeline accepts: 1678-01-01T00:00:00Z."""
ENGINE_MAX_TIME_NS: Final = _ns(datetime(2262, 1, 1, tzinfo=UTC))
"""First timestamp the pipeline refuses: 2262-01-01T00:00:00Z."""
MAX_NAME_BYTES: Final = 255
"""Longest database or retention-policy name InfluxDB creates (UTF-8 bytes)."""


class LimitError(MetricsflowError, ValueError):
    """A value the pipeline cannot store; the message names the value and the limit."""


class TimestampRangeError(LimitError):
    """A timestamp outside ``[ENGINE_MIN_TIME_NS, ENGINE_MAX_TIME_NS)``."""


class InvalidNameError(LimitError):
    """A database or retention-policy name InfluxDB refuses."""


def format_time_ns(time_ns: int) -> str:
    """RFC 3339 when representable, else the bare number."""
    try:
        moment = _EPOCH + timedelta(microseconds=time_ns // 1_000)
    except OverflowError:
        return f"{time_ns} ns"
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{time_ns % 1_000_000_000:09d}Z"


def time_limit_message(time_ns: int, min_time_ns: int, max_time_ns: int) -> str:
    """Why ``time_ns`` is refused, naming the value and the accepted range."""
    if (min_time_ns, max_time_ns) == (ENGINE_MIN_TIME_NS, ENGINE_MAX_TIME_NS):
        accepted = "the range the pipeline stores: "
    else:
        accepted = "the accepted range "
    return (
        f"timestamp {time_ns} ({format_time_ns(time_ns)}) is outside {accepted}"
        f"{format_time_ns(min_time_ns)} (inclusive) to {format_time_ns(max_time_ns)} (exclusive)"
    )


def time_range_message(time_ns: int) -> str:
    return time_limit_message(time_ns, ENGINE_MIN_TIME_NS, ENGINE_MAX_TIME_NS)


def check_time_ns(time_ns: int) -> None:
    """:class:`TimestampRangeError` unless ``time_ns`` is in the pipeline's range."""
    if not ENGINE_MIN_TIME_NS <= time_ns < ENGINE_MAX_TIME_NS:
        raise TimestampRangeError(time_range_message(time_ns))


def first_time_out_of_range(time_ns: npt.NDArray[np.int64]) -> int | None:
    """Index of the first timestamp outside the pipeline's range, or ``None`` (vectorized)."""
    if len(time_ns) == 0:
        return None
    bad = (time_ns < ENGINE_MIN_TIME_NS) | (time_ns >= ENGINE_MAX_TIME_NS)
    if not bad.any():
        return None
    return int(np.argmax(bad))


def name_problem(name: str) -> str | None:
    """Why InfluxDB would refuse ``name`` as a database or retention policy, or ``None``."""
    if name in ("", ".", ".."):
        return "is not a valid name"
    if "/" in name or "\\" in name:
        return "contains '/' or '\\'"
    if not name.isprintable():
        bad = next(ch for ch in name if not ch.isprintable())
        return f"contains the non-printable character {bad!r} (U+{ord(bad):04X})"
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long, more than the {MAX_NAME_BYTES} InfluxDB allows"
    return None


def check_name(name: str, what: str = "database") -> None:
    """:class:`InvalidNameError` naming ``what`` (``"database"``, ``"retention policy"``) and
    the value when InfluxDB would refuse ``name``."""
    problem = name_problem(name)
    if problem is not None:
        shown = name if len(name) <= 64 else name[:64] + "..."
        raise InvalidNameError(f"{what} name {shown!r} {problem}")


class KeySeparatorError(LimitError):
    """A series or field key holds NUL, the separator of the worker's window keys."""


def check_key(key: str) -> None:
    """:class:`KeySeparatorError` when a series or field key holds NUL, the separator of the
    worker's window keys (``runtime.records.window_key``): line protocol lets it through, but
    a key holding it cannot be split back and would fail the sink."""
    if "\x00" in key:
        shown = key if len(key) <= 64 else key[:64] + "..."
        raise KeySeparatorError(f"key {shown!r} contains NUL")


def check_record(db: str, time_ns: npt.NDArray[np.int64]) -> None:
    """What the worker checks of every record before processing it: its database name and
    the timestamps of its samples (:class:`LimitError` naming the first offence); its keys:
    :func:`check_key`."""
    check_name(db, "database")
    bad = first_time_out_of_range(time_ns)
    if bad is not None:
        raise TimestampRangeError(f"sample {bad + 1}: {time_range_message(int(time_ns[bad]))}")
