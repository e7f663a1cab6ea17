"""Event time: clocks and per-key-group watermarks."""

from metricsflow.time.base import Clock, ManualClock, SystemClock
from metricsflow.time.watermarks import (
    MAX_WATERMARK_NS,
    WatermarkAssigner,
    WatermarkGenerator,
    WatermarkGeneratorState,
    WatermarkStrategy,
)

__all__ = [
    "MAX_WATERMARK_NS",
    "Clock",
    "ManualClock",
    "SystemClock",
    "WatermarkAssigner",
    "WatermarkGenerator",
    "WatermarkGeneratorState",
    "WatermarkStrategy",
]
