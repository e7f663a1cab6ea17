"""The point: measurement, tag set, fields, timestamp (integer nanoseconds).

Field values follow InfluxDB's five types. Python's ``int`` is InfluxDB's *integer*
(int64); an *unsigned* (uint64) value is an :class:`Unsigned`, a tiny ``int`` subclass, so
``Unsigned(5) == 5`` but the type survives a round trip through line protocol (``5u``).
``bool`` is checked before ``int`` everywhere (``True`` is an ``int`` in Python).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from metricsflow.model.escaping import series_key

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1
UINT64_MAX: Final = 2**64 - 1


class Unsigned(int):
    """An InfluxDB unsigned (uint64) field value; ``repr`` is ``Unsigned(5)``."""

    __slots__ = ()

    def __new__(cls, value: int) -> Unsigned:
        if not 0 <= value <= UINT64_MAX:
            raise ValueError(f"unsigned value out of range [0, 2**64-1]: {value}")
        return super().__new__(cls, value)

    def __repr__(self) -> str:
        return f"Unsigned({int(self)})"


FieldValue = float | int | Unsigned | bool | str
"""A field value: float, integer (``int``), unsigned (:class:`Unsigned`), boolean, string."""

Tags = tuple[tuple[str, str], ...]
Fields = tuple[tuple[str, FieldValue], ...]


@dataclass(frozen=True, slots=True)
class Point:
    """One point. ``tags`` are sorted by key; ``fields`` are sorted by key (use :meth:`make`)."""

    measurement: str
    tags: Tags
    fields: Fields
    time_ns: int

    @classmethod
    def make(
        cls,
        measurement: str,
        tags: dict[str, str] | Tags | None,
        fields: dict[str, FieldValue] | Fields,
        time_ns: int,
    ) -> Point:
        """Build a point, sorting tags and fields by key (a later duplicate field key wins)."""
        tag_items = tags.items() if isinstance(tags, dict) else (tags or ())
        field_items = fields.items() if isinstance(fields, dict) else fields
        return cls(
            measurement,
            tuple(sorted(dict(tag_items).items())),
            tuple(sorted(dict(field_items).items())),
            time_ns,
        )

    @property
    def series_key(self) -> str:
        """Measurement and tags sorted by escaped key, escaped as line protocol escapes them."""
        return series_key(self.measurement, self.tags)


def field_type(value: FieldValue) -> str:
    """InfluxDB's name of a value's type: float, integer, unsigned, boolean or string."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Unsigned):
        return "unsigned"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"
