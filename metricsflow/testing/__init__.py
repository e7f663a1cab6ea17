"""The test kit shipped to users: deterministic sources, collecting sinks, a manual clock.

- :class:`InMemorySource`: a partitioned, replayable source from lists of batches per key
  group, with :data:`END` and :data:`CRASH` markers; its positions are checkpointed.
- :class:`CollectingSink` / :class:`CollectedResults`: collects what a job emits, keeping the
  last version per (tier, key, window) the way InfluxDB overwrites.
- :class:`ManualClock`: a clock that moves only when told to.
"""

from metricsflow.testing.sinks import AggregateRow, CollectedResults, CollectingSink
from metricsflow.testing.sources import (
    CRASH,
    CRASH_DURING_CHECKPOINT,
    END,
    InMemorySource,
    Marker,
    SimulatedCrashError,
)
from metricsflow.time.base import ManualClock

__all__ = [
    "CRASH",
    "CRASH_DURING_CHECKPOINT",
    "END",
    "AggregateRow",
    "CollectedResults",
    "CollectingSink",
    "InMemorySource",
    "ManualClock",
    "Marker",
    "SimulatedCrashError",
]
