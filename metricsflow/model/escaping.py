"""Line-protocol escaping and unescaping, exactly as InfluxDB 1.x reads names back.

InfluxDB's scanner treats a separator (space, comma, and ``=`` in tags) as *escaped* when
the character just before it is a backslash, whatever precedes that backslash. What a name
*is* comes from a second step that removes the backslash of some pairs, left to right:

* measurement and field key (``escape.Unescape``): ``\\,`` ``\\"`` ``\\ `` ``\\=``;
* tag key and tag value (``unescapeTag``): ``\\,`` ``\\ `` ``\\=``;
* string field value (``unescapeStringField``): ``\\\\`` and ``\\"``.

Any other backslash is kept literally. The escapers below are the inverses: for every name
InfluxDB can read from a line, ``unescape(escape(name)) == name`` and the escaped form is
scanned back to the same boundaries. A name ending in a backslash has no such form (the
separator after it would count as escaped): :class:`~metricsflow.errors.SerializationError`.

The *series key* is measurement plus tags sorted by their escaped key, the form InfluxDB
shows in ``SHOW SERIES`` (``cpu,host=a,region=eu``). This module has no dependency inside
:mod:`metricsflow.model` so that both :mod:`~metricsflow.model.point` and
:mod:`~metricsflow.model.lineprotocol` can use it.
"""

from __future__ import annotations

import re
from typing import Final

from metricsflow.errors import SerializationError

_NAME_UNESCAPE_RE: Final = re.compile(r'\\([, ="])')
_TAG_UNESCAPE_RE: Final = re.compile(r"\\([, =])")
_STRING_UNESCAPE_RE: Final = re.compile(r'\\([\\"])')
# Escape ``,`` and space always; ``=`` and ``"`` only where a backslash precedes them (a
# backslash there would otherwise be taken as their escape and dropped).
_MEAS_ESCAPE_RE: Final = re.compile(r'[, ]|(?<=\\)[="]')
_TAG_ESCAPE_RE: Final = re.compile(r"[, =]")
_FIELD_KEY_ESCAPE_RE: Final = re.compile(r'[, =]|(?<=\\)"')
_STRING_ESCAPE: Final = str.maketrans({'"': '\\"', "\\": "\\\\"})


def _escape_one(m: re.Match[str]) -> str:
    return "\\" + m.group(0)


def unescape_name(raw: str) -> str:
    """A measurement or field key as InfluxDB reads it (``\\,`` ``\\"`` ``\\ `` ``\\=``)."""
    return _NAME_UNESCAPE_RE.sub(r"\1", raw) if "\\" in raw else raw


def unescape_tag(raw: str) -> str:
    """A tag key or value as InfluxDB reads it (``\\,`` ``\\ `` ``\\=``)."""
    return _TAG_UNESCAPE_RE.sub(r"\1", raw) if "\\" in raw else raw


def unescape_string(raw: str) -> str:
    """The inside of a quoted string field value (``\\\\`` and ``\\"``)."""
    return _STRING_UNESCAPE_RE.sub(r"\1", raw) if "\\" in raw else raw


def _check_no_trailing_backslash(name: str, what: str) -> None:
    if name.endswith("\\"):
        raise SerializationError(
            f"line protocol cannot represent a {what} ending in a backslash: {name!r}"
        )


def escape_measurement(name: str) -> str:
    """The measurement as it is written in a line (round-trips through InfluxDB)."""
    _check_no_trailing_backslash(name, "measurement")
    if name[:1] in ("#", "\t", "\x00", ""):
        # a line starting with '#' is a comment; leading tabs and NULs are skipped
        raise SerializationError(f"line protocol cannot represent the measurement {name!r}")
    return _MEAS_ESCAPE_RE.sub(_escape_one, name)


def escape_tag(name: str) -> str:
    """A tag key or tag value as it is written in a line."""
    _check_no_trailing_backslash(name, "tag key or value")
    return _TAG_ESCAPE_RE.sub(_escape_one, name)


def escape_field_key(name: str) -> str:
    """A field key as it is written in a line."""
    _check_no_trailing_backslash(name, "field key")
    return _FIELD_KEY_ESCAPE_RE.sub(_escape_one, name)


def escape_string(value: str) -> str:
    """A string field value with its quotes: ``"a \\"b\\""``."""
    return f'"{value.translate(_STRING_ESCAPE)}"'


def series_key(measurement: str, tags: tuple[tuple[str, str], ...]) -> str:
    """``cpu,host=a,region=eu``: measurement plus tags sorted by escaped key, escaped."""
    pairs = sorted((escape_tag(k), escape_tag(v)) for k, v in tags)
    return escape_measurement(measurement) + "".join(f",{k}={v}" for k, v in pairs)
