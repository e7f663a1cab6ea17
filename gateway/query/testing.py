"""Test kit of the query API: a reproducible data set in a real InfluxDB, raw and tiered.

:func:`write_tiered_dataset` writes random points into the raw tier of a database, and the
downsampled tiers computed from them by :func:`reference_tiers`, a deliberately plain
reference implementation that shares no code with the worker or the rewriter. It creates the
retention policies of the binding layout first (one per tier, named like the tier, ``raw`` the
DEFAULT). Used by ``tests/gateway/query`` and ``tests/grafana``; also handy to try Grafana
against a gateway without running the pipeline.
"""

from __future__ import annotations

import base64
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from ddsketch import DDSketch
from ddsketch.pb.proto import DDSketchProto

from metricsflow.model.tiers import DEFAULT_TIERS, RAW_TIER, TierSpec

NS = 1_000_000_000
MINUTE_NS = 60 * NS
HOUR_NS = 60 * MINUTE_NS
DAY_NS = 24 * HOUR_NS


@dataclass(frozen=True, slots=True)
class RawPoint:
    measurement: str
    tags: tuple[tuple[str, str], ...]
    fields: tuple[tuple[str, float], ...]
    ts_ns: int


@dataclass(frozen=True, slots=True)
class TieredDataset:
    database: str
    start_ns: int  # first point (inclusive)
    end_ns: int  # after the last point
    points: tuple[RawPoint, ...]
    measurement: str
    fields: tuple[str, ...]
    tag_values: dict[str, tuple[str, ...]]


def _escape_key(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _line(
    measurement: str, tags: Sequence[tuple[str, str]], fields: Sequence[tuple[str, str]], ts: int
) -> str:
    tag_text = "".join(f",{_escape_key(k)}={_escape_key(v)}" for k, v in tags)
    field_text = ",".join(f"{_escape_key(k)}={v}" for k, v in fields)
    return f"{_escape_key(measurement)}{tag_text} {field_text} {ts}"


#: Fields of :func:`generate_points` (``counters=True``) that get counter and sketch tier fields.
COUNTER_FIELDS: tuple[str, ...] = ("requests",)
SKETCH_FIELDS: tuple[str, ...] = ("latency",)


def _increases(
    points: Sequence[RawPoint], window_ns: int, counters: Sequence[str]
) -> dict[tuple[str, tuple[tuple[str, str], ...], int, str], tuple[float, int]]:
    """(measurement, tags, window, field) -> (increase, resets): each pair of consecutive
    samples of a series belongs to the window of the later one; a drop is a reset, counted
    from zero (docs/counters-and-percentiles.md)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...], int, str], tuple[float, int]] = {}
    previous: dict[tuple[str, tuple[tuple[str, str], ...], str], float] = {}
    for p in sorted(points, key=lambda p: (p.measurement, p.tags, p.ts_ns)):
        window = p.ts_ns - p.ts_ns % window_ns
        for key, value in p.fields:
            if key not in counters:
                continue
            inc, resets = out.get((p.measurement, p.tags, window, key), (0.0, 0))
            before = previous.get((p.measurement, p.tags, key))
            if before is not None:
                inc, resets = (
                    (inc + value - before, resets) if value >= before else (inc + value, resets + 1)
                )
            out[(p.measurement, p.tags, window, key)] = (inc, resets)
            previous[(p.measurement, p.tags, key)] = value
    return out


def _sketch(values: Sequence[float]) -> str:
    """A base64 DDSketch (1 %) written by DataDog's own package (dense stores)."""
    sketch = DDSketch(0.01)
    for v in values:
        sketch.add(v)
    proto = DDSketchProto.to_proto(sketch)  # type: ignore[no-untyped-call]
    return base64.b64encode(proto.SerializeToString()).decode()


def reference_tiers(
    points: Sequence[RawPoint],
    window_ns: int,
    counters: Sequence[str] = (),
    sketched: Sequence[str] = (),
) -> list[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], int]]:
    """Tier points (measurement, tags, line-protocol fields, window start) for one window size:
    per series and window, ``count_f`` (integer) and ``sum_f``, ``min_f``, ``max_f``,
    ``mean_f``, ``first_f``, ``last_f`` (floats), computed point by point in time order;
    ``increase_f``/``resets_f`` for the ``counters``, ``sketch_f`` for the ``sketched``."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...], int], list[RawPoint]] = defaultdict(list)
    for p in points:
        groups[(p.measurement, p.tags, p.ts_ns - p.ts_ns % window_ns)].append(p)
    increases = _increases(points, window_ns, counters) if counters else {}
    out = []
    for (measurement, tags, start), members in sorted(groups.items()):
        members.sort(key=lambda p: p.ts_ns)
        values: dict[str, list[float]] = defaultdict(list)
        for p in members:
            for key, value in p.fields:
                values[key].append(value)
        fields: list[tuple[str, str]] = []
        for key in sorted(values):
            vs = values[key]
            total = 0.0
            for v in vs:
                total += v
            fields += [
                (f"count_{key}", f"{len(vs)}i"),
                (f"sum_{key}", repr(total)),
                (f"min_{key}", repr(min(vs))),
                (f"max_{key}", repr(max(vs))),
                (f"mean_{key}", repr(total / len(vs))),
                (f"first_{key}", repr(vs[0])),
                (f"last_{key}", repr(vs[-1])),
            ]
            if key in counters:
                inc, resets = increases[(measurement, tags, start, key)]
                fields += [(f"increase_{key}", repr(inc)), (f"resets_{key}", f"{resets}i")]
            if key in sketched:
                fields.append((f"sketch_{key}", f'"{_sketch(vs)}"'))
        out.append((measurement, tags, tuple(fields), start))
    return out


def _query(client: httpx.Client, q: str, db: str | None = None) -> None:
    data = {"q": q} | ({"db": db} if db else {})
    response = client.post("/query", data=data)
    response.raise_for_status()
    if "error" in response.text:
        raise RuntimeError(f"{q}: {response.text}")


def _write(client: httpx.Client, db: str, rp: str, lines: list[str]) -> None:
    for i in range(0, len(lines), 5000):
        response = client.post(
            "/write", params={"db": db, "rp": rp}, content="\n".join(lines[i : i + 5000])
        )
        if response.status_code != 204:
            raise RuntimeError(f"write rp={rp}: {response.status_code} {response.text}")


def create_tier_policies(
    client: httpx.Client, db: str, tiers: Sequence[TierSpec] = DEFAULT_TIERS
) -> None:
    for tier in tiers:
        default = " DEFAULT" if tier.name == RAW_TIER else ""
        _query(
            client,
            f'CREATE RETENTION POLICY "{tier.name}" ON "{db}" DURATION {tier.retention} '
            f"REPLICATION 1{default}",
        )


def generate_points(
    seed: int, start_ns: int, days: int, measurement: str = "cpu", counters: bool = False
) -> tuple[list[RawPoint], dict[str, tuple[str, ...]]]:
    """Four series (host a-d, region eu/us), two float fields, a point every ~2 minutes with
    random jitter; a 5-hour gap in every series, and host ``d`` stops half way (so fills and
    series that appear in only part of a range are exercised). ``counters``: also a counter
    ``requests`` (no resets) and a lognormal ``latency``, drawn from a second generator."""
    rng = random.Random(seed)
    extra = random.Random(seed + 1)
    hosts = ("a", "b", "c", "d")
    regions = {"a": "eu", "b": "eu", "c": "us", "d": "us"}
    end_ns = start_ns + days * DAY_NS
    gap = (start_ns + DAY_NS + 3 * HOUR_NS, start_ns + DAY_NS + 8 * HOUR_NS)
    points: list[RawPoint] = []
    for host in hosts:
        stop = start_ns + days * DAY_NS // 2 if host == "d" else end_ns
        span_s = (stop - start_ns) // NS
        seconds = sorted(rng.sample(range(span_s), span_s // 120))
        level = rng.uniform(10, 90)
        requests = float(extra.randrange(0, 1_000_000))
        for s in seconds:
            ts = start_ns + s * NS + rng.randrange(0, 1000) * 1_000_000
            if gap[0] <= ts < gap[1]:
                continue
            level = min(100.0, max(0.0, level + rng.gauss(0, 3)))
            fields: tuple[tuple[str, float], ...] = (
                ("usage", round(level, 3)),
                ("temp", round(rng.uniform(20, 80), 2)),
            )
            if counters:
                requests += extra.randrange(0, 50)
                latency = round(extra.lognormvariate(-2.0, 0.3), 6)
                fields += (("requests", requests), ("latency", latency))
            tags = (("host", host), ("region", regions[host]))
            points.append(RawPoint(measurement, tags, fields, ts))
    return points, {"host": hosts, "region": ("eu", "us")}


def write_tiered_dataset(
    influxdb_url: str,
    database: str,
    *,
    seed: int = 7,
    days: int = 3,
    end_ns: int,
    align_end_to: int = DAY_NS,
    tiers: Sequence[TierSpec] = DEFAULT_TIERS,
    counters: bool = False,
) -> TieredDataset:
    """Create the tier retention policies in ``database`` (which must exist), write ``days``
    of random points ending at ``end_ns`` (rounded down to ``align_end_to``) into raw, and the
    reference tiers into their policies (``counters``: with a counter and a sketched field,
    see :func:`generate_points`)."""
    end = end_ns - end_ns % align_end_to
    start = end - days * DAY_NS
    points, tag_values = generate_points(seed, start, days, counters=counters)
    extra = (COUNTER_FIELDS, SKETCH_FIELDS) if counters else ((), ())
    with httpx.Client(base_url=influxdb_url, timeout=60) as client:
        create_tier_policies(client, database, tiers)
        raw_lines = [
            _line(p.measurement, p.tags, [(k, repr(v)) for k, v in p.fields], p.ts_ns)
            for p in points
        ]
        _write(client, database, RAW_TIER, raw_lines)
        for tier in tiers:
            if tier.name == RAW_TIER:
                continue
            rows = reference_tiers(points, tier.window_ns, *extra)
            lines = [_line(*row[:3], row[3]) for row in rows]
            _write(client, database, tier.name, lines)
    return TieredDataset(
        database=database,
        start_ns=start,
        end_ns=end,
        points=tuple(points),
        measurement="cpu",
        fields=("usage", "temp", *extra[0], *extra[1]),
        tag_values=tag_values,
    )
