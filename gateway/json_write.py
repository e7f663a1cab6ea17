"""``POST /api/v1/json``: points as JSON, for scripts.

Body: ``{"points": [...]}`` or a bare list of points::

    {"points": [
      {"measurement": "cpu",
       "tags": {"host": "a"},
       "fields": {"usage": 12.5, "cores": {"int": 8}, "seq": {"uint": 3},
                  "up": true, "state": "ok"},
       "time": 1700000000000000000}
    ]}

A JSON number is a *float* field (``1`` and ``1.0`` alike, so a field never changes type
between writes); ``{"int": n}`` is an integer, ``{"uint": n}`` an unsigned; ``true``/``false``
a boolean; a string a string. ``time`` is optional (the receive time), in the ``precision``
query parameter's unit (default ns). Errors name the point (1-based) and the JSON path; a
syntax error names the line and column of the body.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.base import BadRequestError
from metricsflow.model import SerializationError
from metricsflow.model.limits import time_limit_message
from metricsflow.model.lineprotocol import (
    Limits,
    format_point,
    series_key,
)
from metricsflow.model.point import INT64_MAX, INT64_MIN, FieldValue, Point, Unsigned


def _bad(n: int, path: str, message: str) -> BadRequestError:
    return BadRequestError(f"point {n} ({path}): {message}")


def _name(value: Any, n: int, path: str, limit: int) -> str:
    if not isinstance(value, str) or not value:
        raise _bad(n, path, "must be a non-empty string")
    if "\n" in value or "\r" in value:
        raise _bad(n, path, "must not contain a newline")
    if len(value) > limit:
        raise _bad(n, path, f"longer than {limit} characters")
    return value


def _field(value: Any, n: int, path: str) -> FieldValue:
    if isinstance(value, bool | str):
        return value  # a string may hold a newline (inside its quotes, as InfluxDB reads it)
    if isinstance(value, int | float):
        f = float(value)
        if f != f or f in (float("inf"), float("-inf")):
            raise _bad(n, path, "must be a finite number")
        return f
    if isinstance(value, dict) and len(value) == 1:
        ((kind, raw),) = value.items()
        if kind == "int" and isinstance(raw, int) and not isinstance(raw, bool):
            if not INT64_MIN <= raw <= INT64_MAX:
                raise _bad(n, path, "integer out of int64 range")
            return raw
        if kind == "uint" and isinstance(raw, int) and not isinstance(raw, bool):
            try:
                return Unsigned(raw)
            except ValueError:
                raise _bad(n, path, "unsigned out of uint64 range") from None
    raise _bad(n, path, 'must be a number, boolean, string, {"int": n} or {"uint": n}')


def parse_json_points(
    body: bytes, *, precision_factor: int, default_time_ns: int, limits: Limits
) -> tuple[list[str], list[str]]:
    """``(series_keys, canonical_lines)`` of a JSON body; :class:`BadRequestError` if invalid."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(
            f"line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}"
        ) from None
    items = doc.get("points") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise BadRequestError('body must be {"points": [...]} or a list of points')
    keys: list[str] = []
    lines: list[str] = []
    for n, item in enumerate(items, 1):
        p = f"points[{n - 1}]"
        if not isinstance(item, dict):
            raise _bad(n, p, "must be an object")
        unknown = set(item) - {"measurement", "tags", "fields", "time"}
        if unknown:
            raise _bad(n, p, f"unknown member(s) {sorted(unknown)}")
        meas = _name(item.get("measurement"), n, f"{p}.measurement", limits.max_key_length)
        tags_in = item.get("tags") or {}
        if not isinstance(tags_in, dict):
            raise _bad(n, f"{p}.tags", "must be an object")
        if len(tags_in) > limits.max_tags:
            raise _bad(n, f"{p}.tags", f"more than {limits.max_tags} tags")
        tags = {
            _name(k, n, f"{p}.tags", limits.max_key_length): _name(
                v, n, f"{p}.tags.{k}", limits.max_tag_value_length
            )
            for k, v in tags_in.items()
        }
        fields_in = item.get("fields")
        if not isinstance(fields_in, dict) or not fields_in:
            raise _bad(n, f"{p}.fields", "must be a non-empty object")
        if len(fields_in) > limits.max_fields:
            raise _bad(n, f"{p}.fields", f"more than {limits.max_fields} fields")
        fields = {
            _name(k, n, f"{p}.fields", limits.max_key_length): _field(v, n, f"{p}.fields.{k}")
            for k, v in fields_in.items()
        }
        for where, names in ((f"{p}.tags", tags), (f"{p}.fields", fields)):
            if "time" in names:
                raise _bad(
                    n,
                    f"{where}.time",
                    'the key "time" is refused: InfluxDB 1.x drops such a point or field',
                )
        raw_time = item.get("time")
        if raw_time is None:
            time_ns = default_time_ns
        elif isinstance(raw_time, int) and not isinstance(raw_time, bool):
            time_ns = raw_time * precision_factor
            if not limits.min_time_ns <= time_ns < limits.max_time_ns:
                raise _bad(
                    n,
                    f"{p}.time",
                    time_limit_message(time_ns, limits.min_time_ns, limits.max_time_ns),
                )
        else:
            raise _bad(n, f"{p}.time", "must be an integer")
        point = Point.make(meas, tags, fields, time_ns)
        try:
            line = format_point(point)
        except SerializationError as exc:
            raise _bad(n, p, str(exc)) from None
        if len(line) > limits.max_line_length:
            raise _bad(
                n,
                p,
                f"the point is {len(line)} characters of line protocol, more than the "
                f"{limits.max_line_length} allowed (GATEWAY_MAX_LINE_LENGTH)",
            )
        lines.append(line)
        keys.append(series_key(point.measurement, point.tags))
    return keys, lines
