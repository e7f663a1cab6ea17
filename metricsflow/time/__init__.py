"""Time below the runtime: clocks, integer nanoseconds since the epoch (durations such as
``"1h"`` are parsed by :mod:`metricsflow.model.durations`, shared with the gateway).

Watermarks (an operator) live above the runtime, in :mod:`metricsflow.windows.watermarks`.
"""

from metricsflow.model.durations import parse_duration_ns
from metricsflow.time.base import Clock, ManualClock, SystemClock

__all__ = [
    "Clock",
    "ManualClock",
    "SystemClock",
    "parse_duration_ns",
]
