"""The JSON endpoint's parser (a pure function): reserved keys and string fields."""

from __future__ import annotations

import orjson
import pytest

from gateway.base import BadRequestError
from gateway.json_write import parse_json_points
from metricsflow.model.lineprotocol import DEFAULT_LIMITS, parse


def parse_json(points: list[dict[str, object]]) -> tuple[list[str], list[str]]:
    return parse_json_points(
        orjson.dumps(points), precision_factor=1, default_time_ns=5, limits=DEFAULT_LIMITS
    )


@pytest.mark.parametrize("member", ["tags", "fields"])
def test_a_time_key_is_refused_naming_the_point_and_path(member: str) -> None:
    point: dict[str, object] = {"measurement": "m", "fields": {"v": 1}}
    point[member] = {**point.get(member, {}), "time": "x"}  # type: ignore[dict-item]
    with pytest.raises(BadRequestError) as info:
        parse_json([{"measurement": "ok", "fields": {"v": 1}}, point])
    assert str(info.value).startswith(f'point 2 (points[1].{member}.time): the key "time"')


def test_a_string_field_may_hold_a_newline() -> None:
    keys, lines = parse_json([{"measurement": "m", "fields": {"s": "two\nlines"}, "time": 7}])
    assert keys == ["m"]
    (point,) = parse("\n".join(lines))
    assert point.fields == (("s", "two\nlines"),)
