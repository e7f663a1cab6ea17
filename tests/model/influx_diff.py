"""Helpers of the differential tests: what a real InfluxDB stored, in a comparable form."""

from __future__ import annotations

import re
from typing import Any

import httpx

from metricsflow.errors import ParseError

PREFIX_RE = re.compile(r"L\d+_\d+_\d+_")
DELIBERATE = (
    'invalid field name: input field "time"',  # InfluxDB 1.x drops the field (or the point)
    "cannot be written back",  # ambiguous escaping
    "cannot be written to the downsampled tiers",
    "is outside the range the pipeline stores",  # 1677-09-21..1678 and 2262-01-01..04-11
)
"""Reasons of the refusals where InfluxDB 1.x would store something (docs/ingestion.md)."""


_CLIENT = httpx.Client(timeout=60)
"""One client for every query: ``httpx.post`` builds a client, and its TLS context (the CA
bundle parsed again), per call; hundreds of calls made that a noticeable part of a test."""


def influx(url: str, q: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": q, "epoch": "ns"}
    if db:
        params["db"] = db
    r = _CLIENT.post(f"{url}/query", data=params)
    r.raise_for_status()
    result: dict[str, Any] = r.json()["results"][0]
    assert "error" not in result, result
    return result


def stored(
    url: str,
    db: str,
    rp: str | None,
    window: tuple[int, int],
    skip: set[str],
    names: str = "/.*/",
) -> dict[str, Any]:
    """Series keys, field types and every row of ``db`` (RP ``rp``), comparable across
    databases: a time inside ``window`` (a line without timestamp got the receive time)
    becomes ``"now"``; measurements starting with a prefix in ``skip`` are left out."""

    def keep(name: str) -> bool:
        m = PREFIX_RE.match(name)
        return m is None or m.group(0) not in skip

    source = f'"{rp}".{names}' if rp else names
    series = influx(url, f"SHOW SERIES FROM {names}", db)
    keys = sorted(
        v[0] for s in series.get("series", []) for v in s["values"] if keep(v[0].split(",")[0])
    )
    fields = influx(url, f"SHOW FIELD KEYS FROM {names}", db)
    types = sorted(
        (s["name"], k, t)
        for s in fields.get("series", [])
        if keep(s["name"])
        for k, t in s["values"]
    )
    rows = []
    for s in influx(url, f"SELECT * FROM {source} GROUP BY *", db).get("series", []):
        if not keep(s["name"]):
            continue
        tags = tuple(sorted((k, v) for k, v in s.get("tags", {}).items() if v != ""))
        for values in s["values"]:
            t = values[0]
            if window[0] <= t <= window[1]:
                t = "now"
            cols = tuple(
                sorted(
                    (c, repr(v))
                    for c, v in zip(s["columns"][1:], values[1:], strict=True)
                    if v is not None
                )
            )
            rows.append((s["name"], tags, t, cols))
    return {"series": keys, "field_types": types, "rows": sorted(rows, key=repr)}


def comparable(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Leave out series and fields of measurements without any row on either side: a point
    InfluxDB drops (a type conflict, a ``time`` key) may still leave its series and field in
    the index, a side effect no writer can reproduce."""
    names = {r[0] for r in a["rows"]} | {r[0] for r in b["rows"]}
    for side in (a, b):
        side["series"] = [k for k in side["series"] if _name_of(k) in names]
        side["field_types"] = [f for f in side["field_types"] if f[0] in names]


def _name_of(key: str) -> str:
    """The measurement of a series key as SHOW SERIES prints it."""
    m = re.match(r"(?:[^,\\]|\\.)*", key)
    assert m is not None
    return m.group(0).replace("\\,", ",").replace("\\ ", " ")


def deliberate_prefixes(errors: list[ParseError]) -> set[str]:
    """Line prefixes of the refusals where InfluxDB would have stored something."""
    out = set()
    for e in errors:
        if any(d in e.reason for d in DELIBERATE):
            m = PREFIX_RE.match(e.text.lstrip(" \t\x00"))
            assert m is not None, e
            out.add(m.group(0))
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    comparable(a, b)
    out = []
    for part in ("series", "field_types", "rows"):
        only_a = [x for x in a[part] if x not in b[part]]
        only_b = [x for x in b[part] if x not in a[part]]
        out += [f"{part} only in InfluxDB: {x!r}" for x in only_a[:10]]
        out += [f"{part} only through us: {x!r}" for x in only_b[:10]]
    return out
