"""Tiers: the downsampling resolutions, and how their results are named in InfluxDB.

A tier is a tumbling event-time window size aligned to the epoch, ``[start, start + size)``,
with its own retention. ``raw`` is the tier of the points themselves. Each coarser tier is
computed from the partial aggregates of the next finer one, in state (docs/windows.md).

InfluxDB layout (docs/influxdb-layout.md): the database is the one the write named; inside it one
retention policy per tier, named like the tier (``raw`` is the database's DEFAULT policy);
measurement and tags are kept; a tier point's timestamp is its window start; its fields are
named the way InfluxDB's continuous queries name them: ``<aggregate>_<field>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metricsflow.errors import ConfigurationError
from metricsflow.model.durations import parse_duration_ns

#: Aggregates written for every numeric field of a tier point, in this order.
AGGREGATES: tuple[str, ...] = ("count", "sum", "min", "max", "mean", "first", "last")

RAW_TIER = "raw"


def tier_field_name(aggregate: str, field_key: str) -> str:
    """InfluxDB continuous-query naming: ``mean(*)`` over field ``v`` yields ``mean_v``."""
    return f"{aggregate}_{field_key}"


@dataclass(frozen=True, slots=True)
class TierSpec:
    """One tier: ``name`` is also its retention policy name; ``retention`` is an InfluxDB
    duration (``"30d"``, ``"INF"``)."""

    name: str
    window: str
    retention: str

    @property
    def window_ns(self) -> int:
        return 0 if self.name == RAW_TIER else parse_duration_ns(self.window)

    @property
    def retention_ns(self) -> int:
        return parse_duration_ns(self.retention)


DEFAULT_TIERS: tuple[TierSpec, ...] = (
    TierSpec(RAW_TIER, "0s", "7d"),
    TierSpec("1m", "1m", "30d"),
    TierSpec("1h", "1h", "365d"),
    TierSpec("1d", "1d", "INF"),
)


def validate_tiers(tiers: Sequence[TierSpec]) -> tuple[TierSpec, ...]:
    """Check a tier cascade: ``raw`` first, then strictly growing windows, each a multiple of
    the one before (so a coarse window is a union of whole fine windows)."""
    if not tiers or tiers[0].name != RAW_TIER:
        raise ConfigurationError(f"the first tier must be {RAW_TIER!r}, got {list(tiers)!r}")
    names = [t.name for t in tiers]
    if len(set(names)) != len(names):
        raise ConfigurationError(f"tier names must be unique, got {names!r}")
    previous = 0
    for tier in tiers[1:]:
        size = tier.window_ns
        if previous and (size <= previous or size % previous):
            raise ConfigurationError(
                f"tier {tier.name!r} window {tier.window!r} must be a larger multiple of the "
                f"previous tier's window ({previous} ns)"
            )
        tier.retention_ns  # noqa: B018 - validates the retention text
        previous = size
    return tuple(tiers)
