"""A counter and a latency field in the real InfluxDB: raw points, and 1m/1h tier rows in the
documented schema (docs/counters-and-percentiles.md) with the worker's own sketch encoder.

Three series (``host`` a, b, c) of measurement ``http``, a point every ~10 s for six hours:

- ``requests_total``: a counter with resets between window boundaries and *at* them (host
  ``a`` is sampled exactly on the 10 s grid, so some resets land on a window's first sample),
  and a 40-minute gap in host ``b``;
- ``latency``: lognormal values with a few zeros.

Tier rows carry ``count_ ... last_`` for both fields, ``increase_requests_total`` /
``resets_requests_total`` (plain loops below: a pair of consecutive samples belongs to the
window of the later one; a drop is a reset, counted from zero) and ``sketch_latency`` plus
``p50_ .. p99_latency`` (``metricsflow.windows.sketches``, the worker's encoder).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

import httpx
import numpy as np

from gateway.query.testing import MINUTE_NS, NS, create_tier_policies
from metricsflow.model.tiers import DEFAULT_TIERS, RAW_TIER
from metricsflow.windows import sketches

HOURS = 6
TIERS = tuple(t for t in DEFAULT_TIERS if t.name in (RAW_TIER, "1m", "1h"))
Sample = tuple[int, float]  # (ns, value)


@dataclass(frozen=True)
class CounterSketchDataset:
    database: str
    start_ns: int
    end_ns: int
    counter: dict[str, list[Sample]]  # host -> samples in time order
    latency: dict[str, list[Sample]]


def generate(seed: int, start_ns: int) -> tuple[dict[str, list[Sample]], dict[str, list[Sample]]]:
    rng = random.Random(seed)
    counter: dict[str, list[Sample]] = {}
    latency: dict[str, list[Sample]] = {}
    for host in ("a", "b", "c"):
        value = float(rng.randrange(0, 1000))
        c_samples: list[Sample] = []
        l_samples: list[Sample] = []
        for step in range(HOURS * 360):
            t = start_ns + step * 10 * NS
            if host != "a":
                t += rng.randrange(1, 9_000) * 1_000_000
            if host == "b" and 2 * 3600 * NS <= t - start_ns < 2 * 3600 * NS + 40 * MINUTE_NS:
                continue
            at_boundary = (t - start_ns) % MINUTE_NS == 0
            if rng.random() < 0.004 or (host == "a" and at_boundary and rng.random() < 0.05):
                value = float(rng.randrange(0, 5))  # a restart: the counter starts over
            else:
                value += rng.randrange(0, 20)
            c_samples.append((t, value))
            lat = 0.0 if rng.random() < 0.01 else round(rng.lognormvariate(-3.0, 1.0), 6)
            l_samples.append((t, lat))
        counter[host] = c_samples
        latency[host] = l_samples
    return counter, latency


def increases(samples: list[Sample], window_ns: int) -> dict[int, tuple[float, int]]:
    """window start -> (increase, resets): every pair belongs to the window of its later
    sample; the first sample contributes nothing."""
    out: dict[int, tuple[float, int]] = {}
    previous: float | None = None
    for t, v in samples:
        w = t - t % window_ns
        inc, resets = out.get(w, (0.0, 0))
        if previous is not None:
            if v >= previous:
                inc += v - previous
            else:
                inc += v
                resets += 1
        out[w] = (inc, resets)
        previous = v
    return out


def gauge_fields(name: str, values: list[float]) -> list[str]:
    total = 0.0
    for v in values:
        total += v
    return [
        f"count_{name}={len(values)}i",
        f"sum_{name}={total!r}",
        f"min_{name}={min(values)!r}",
        f"max_{name}={max(values)!r}",
        f"mean_{name}={total / len(values)!r}",
        f"first_{name}={values[0]!r}",
        f"last_{name}={values[-1]!r}",
    ]


def tier_lines(
    counter: dict[str, list[Sample]], latency: dict[str, list[Sample]], window_ns: int
) -> list[str]:
    lines: list[str] = []
    for host in sorted(counter):
        by_window_c: dict[int, list[float]] = defaultdict(list)
        by_window_l: dict[int, list[float]] = defaultdict(list)
        for t, v in counter[host]:
            by_window_c[t - t % window_ns].append(v)
        for t, v in latency[host]:
            by_window_l[t - t % window_ns].append(v)
        inc = increases(counter[host], window_ns)
        windows = sorted(by_window_c)
        group = np.repeat(np.arange(len(windows)), [len(by_window_l[w]) for w in windows])
        values = np.array([v for w in windows for v in by_window_l[w]])
        bins = sketches.from_values(group.astype(np.int64), values)
        _, encoded = sketches.encode(bins)
        _, pcts = sketches.percentiles(bins)
        for i, w in enumerate(windows):
            fields = gauge_fields("requests_total", by_window_c[w])
            fields += gauge_fields("latency", by_window_l[w])
            increase, resets = inc[w]
            fields += [f"increase_requests_total={increase!r}", f"resets_requests_total={resets}i"]
            fields.append(f'sketch_latency="{encoded[i]}"')
            fields += [
                f"p{p}_latency={float(q)!r}" for p, q in zip((50, 90, 95, 99), pcts[i], strict=True)
            ]
            lines.append(f"http,host={host} {','.join(fields)} {w}")
    return lines


def write_dataset(influxdb_url: str, database: str, end_ns: int) -> CounterSketchDataset:
    end = end_ns - end_ns % (3600 * NS)
    start = end - HOURS * 3600 * NS
    counter, latency = generate(15, start)
    raw = [
        f"http,host={host} requests_total={c!r},latency={lat!r} {t}"
        for host in sorted(counter)
        for (t, c), (_, lat) in zip(counter[host], latency[host], strict=True)
    ]
    with httpx.Client(base_url=influxdb_url, timeout=60) as client:
        client.post("/query", data={"q": f'CREATE DATABASE "{database}"'}).raise_for_status()
        create_tier_policies(client, database, TIERS)
        batches = [(RAW_TIER, raw)] + [
            (tier.name, tier_lines(counter, latency, tier.window_ns)) for tier in TIERS[1:]
        ]
        for rp, lines in batches:
            for i in range(0, len(lines), 5000):
                response = client.post(
                    "/write",
                    params={"db": database, "rp": rp},
                    content="\n".join(lines[i : i + 5000]),
                )
                assert response.status_code == 204, response.text
    return CounterSketchDataset(database, start, end, counter, latency)
