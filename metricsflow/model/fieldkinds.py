"""Which fields are counters and which get quantile sketches: patterns ``measurement/field``.

A pattern is ``<measurement glob>/<field glob>`` (``*``, ``?``, ``[...]`` as in shell globs,
case-sensitive, split at the first ``/``), or a single ``<field glob>`` that applies in every
measurement. A setting is a comma-separated list of patterns; a field matches the list when it
matches any pattern. Counters win: a field that is a counter never gets a sketch (a histogram's
``*_bucket``/``*_count``/``*_sum`` are counters, whatever their name says about durations).

Prometheus remote write maps a metric to measurement = metric name, field ``value``
(gateway/remote_write.py), so Prometheus' naming conventions are measurement patterns.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field
from typing import Final

from metricsflow.errors import ConfigurationError

DEFAULT_COUNTER_PATTERNS: Final = (
    # Prometheus naming conventions (remote write: measurement = metric name)
    "*_total/*,*_count/*,*_sum/*,*_bucket/*,"
    # the same conventions in line protocol field names (e.g. Telegraf's prometheus v2 format)
    "*/*_total,*/*_count,*/*_sum,*/*_bucket,"
    # Telegraf's cumulative net and diskio fields
    "net/bytes_*,net/packets_*,net/err_*,net/drop_*,"
    "diskio/reads,diskio/writes,diskio/read_bytes,diskio/write_bytes,diskio/*_time"
)
DEFAULT_SKETCH_PATTERNS: Final = (
    "*latency*/*,*duration*/*,*response_time*/*,*/*latency*,*/*duration*,*/*response_time*"
)


@dataclass(frozen=True)
class FieldPattern:
    measurement: str
    field: str

    @classmethod
    def parse(cls, text: str) -> FieldPattern:
        text = text.strip()
        meas, sep, fld = text.partition("/")
        if not sep:
            meas, fld = "*", meas
        if not meas or not fld:
            raise ConfigurationError(
                f"field pattern {text!r}: expected <measurement glob>/<field glob> or <field glob>"
            )
        for glob in (meas, fld):
            if glob.count("[") != glob.count("]"):
                raise ConfigurationError(f"field pattern {text!r}: unbalanced [ ] in {glob!r}")
        return cls(meas, fld)

    def __str__(self) -> str:
        return f"{self.measurement}/{self.field}"


@dataclass(frozen=True)
class FieldSelector:
    """A list of patterns; ``matches(measurement, field)`` is cached per distinct pair."""

    patterns: tuple[FieldPattern, ...]

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        """Comma-separated patterns; empty means none."""
        return cls(tuple(FieldPattern.parse(p) for p in text.split(",") if p.strip()))

    def matches(self, measurement: str, field_key: str) -> bool:
        return _match(self, measurement, field_key)

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.patterns)


@functools.lru_cache(maxsize=1 << 16)
def _match(selector: FieldSelector, measurement: str, field_key: str) -> bool:
    return any(
        fnmatch.fnmatchcase(measurement, p.measurement) and fnmatch.fnmatchcase(field_key, p.field)
        for p in selector.patterns
    )


@dataclass(frozen=True)
class FieldKinds:
    """Counters get ``increase_``/``resets_``; sketched fields get ``sketch_``/``p50_``.."""

    counters: FieldSelector = field(
        default_factory=lambda: FieldSelector.parse(DEFAULT_COUNTER_PATTERNS)
    )
    sketches: FieldSelector = field(
        default_factory=lambda: FieldSelector.parse(DEFAULT_SKETCH_PATTERNS)
    )

    def is_counter(self, measurement: str, field_key: str) -> bool:
        return self.counters.matches(measurement, field_key)

    def has_sketch(self, measurement: str, field_key: str) -> bool:
        return self.sketches.matches(measurement, field_key) and not self.is_counter(
            measurement, field_key
        )
