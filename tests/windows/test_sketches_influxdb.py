"""The sketch's percentiles against the real InfluxDB's ``PERCENTILE(f, N)`` over raw points,
for fine windows and for a coarse window made by merging the fine sketches."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np
import pytest

from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.windows import sketches

pytestmark = pytest.mark.integration

FINE_NS = 10 * 10**9
COARSE_NS = 60 * 10**9
T0 = 1_700_000_040 * 10**9  # a 1m boundary
PCTS = sketches.PERCENTILES


def influx_percentiles(url: str, db: str, window: str) -> dict[int, list[float]]:
    select = ", ".join(f"percentile(v, {p})" for p in PCTS)
    q = (
        f"SELECT {select} FROM m WHERE time >= {T0} AND time < {T0 + COARSE_NS} "
        f"GROUP BY time({window})"
    )
    resp = httpx.post(f"{url}/query", data={"db": db, "q": q, "epoch": "ns"}, timeout=30)
    resp.raise_for_status()
    series = resp.json()["results"][0]["series"][0]
    return {
        int(row[0]): [float(x) for x in row[1:]] for row in series["values"] if row[1] is not None
    }


def test_percentiles_within_accuracy_of_influxdb(
    influxdb_server: InfluxDBServer, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    rng = np.random.default_rng(15)
    n = 3000
    ts = T0 + np.sort(rng.choice(COARSE_NS // 10**6, size=n, replace=False)) * 10**6
    values = np.round(rng.lognormal(-3.0, 1.5, size=n), 9)  # latencies in seconds
    values[rng.random(n) < 0.05] = 0.0
    body = "\n".join(f"m v={v!r} {t}" for v, t in zip(values.tolist(), ts.tolist(), strict=True))
    resp = httpx.post(f"{influxdb_server.url}/write", params={"db": db}, content=body, timeout=30)
    assert resp.status_code == 204, resp.text

    fine_group = (ts - T0) // FINE_NS
    fine = sketches.from_values(fine_group.astype(np.int64), values)
    expected = influx_percentiles(influxdb_server.url, db, "10s")
    assert len(expected) == COARSE_NS // FINE_NS
    gid, got = sketches.percentiles(fine, PCTS)
    # the fine sketches go through their string form, as they would through a tier row
    gid_enc, text = sketches.encode(fine)
    coarse = sketches.merge(
        [sketches.decode(text, gid_enc)], regroup=np.zeros(gid.shape[0], dtype=np.int64)
    )
    _, got_coarse = sketches.percentiles(coarse, PCTS)
    expected_coarse = influx_percentiles(influxdb_server.url, db, "1m")

    tol = sketches.RELATIVE_ACCURACY * (1 + 1e-9)
    for i, g in enumerate(gid.tolist()):
        exact = expected[T0 + g * FINE_NS]
        for j in range(len(PCTS)):
            assert abs(got[i, j] - exact[j]) <= tol * abs(exact[j]), (g, PCTS[j])
    for j in range(len(PCTS)):
        exact_c = expected_coarse[T0][j]
        assert abs(got_coarse[0, j] - exact_c) <= tol * abs(exact_c), PCTS[j]
