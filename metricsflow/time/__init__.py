"""Time below the runtime: clocks and durations, integer nanoseconds since the epoch.

Watermarks (an operator) live above the runtime, in :mod:`metricsflow.windows.watermarks`.
"""

from metricsflow.time.base import Clock, ManualClock, SystemClock
from metricsflow.time.durations import parse_duration_ns

__all__ = [
    "Clock",
    "ManualClock",
    "SystemClock",
    "parse_duration_ns",
]
