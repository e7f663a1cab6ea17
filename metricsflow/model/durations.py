"""Durations as people write them (``"90s"``, ``"1h"``, ``"30d"``), in integer nanoseconds."""

from __future__ import annotations

import re

from metricsflow.errors import ConfigurationError

NS_PER_SECOND = 1_000_000_000
_UNITS_NS = {
    "s": NS_PER_SECOND,
    "m": 60 * NS_PER_SECOND,
    "h": 3600 * NS_PER_SECOND,
    "d": 86400 * NS_PER_SECOND,
    "w": 7 * 86400 * NS_PER_SECOND,
}
_DURATION = re.compile(r"^(\d+)([smhdw])$")


def parse_duration_ns(text: str) -> int:
    """``"90s"``, ``"1m"``, ``"1h"``, ``"1d"``, ``"2w"`` -> nanoseconds; ``"INF"`` -> 0."""
    if text.upper() == "INF":
        return 0
    match = _DURATION.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ConfigurationError(
            f"invalid duration {text!r}: expected a positive integer and a unit s/m/h/d/w, "
            "e.g. '1m', '1h', '30d', or 'INF'"
        )
    return int(match.group(1)) * _UNITS_NS[match.group(2)]
