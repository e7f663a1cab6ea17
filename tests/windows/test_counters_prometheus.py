"""The counter kernel against a real Prometheus' own ``increase()`` and ``resets()``.

Prometheus scrapes itself every second; its counters' raw samples are read back from its API
and given to ``counters.window_increases`` with 10 s windows. What differs, stated as code:

* our ``increase_`` includes the pair across the window's start (previous sample -> first
  sample of the window); Prometheus' range sees only the samples inside it;
* Prometheus extrapolates the in-range increase towards the range's edges
  (``extrapolatedRate`` in promql/functions.go, written out in ``prometheus_increase`` below);
  we do not, so consecutive windows add up to the exact total increase.

So: ``increase(m[10s])`` at the window's last millisecond == extrapolate(our ``increase_`` minus
the boundary pair), and ``resets(m[10s])`` == our ``resets_`` minus the boundary pair's reset.
The tier rows themselves are not compared yet: the counter fields are not wired into them.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from metricsflow.infra.process import free_port
from metricsflow.windows import counters
from tests.gateway.test_prometheus_remote_write import PrometheusServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WINDOW_MS = 10_000
SERIES = ("prometheus_tsdb_head_samples_appended_total", "process_cpu_seconds_total")


def extrapolate(raw: float, samples: list[tuple[int, float]], start_ms: int, end_ms: int) -> float:
    """Prometheus 2.x ``increase()`` from the in-range increase ``raw`` (resets already added)
    and the in-range samples: ``extrapolatedRate`` (promql/functions.go) for a counter."""
    (t0, v0), (t1, _) = samples[0], samples[-1]
    to_start = (t0 - start_ms) / 1000
    to_end = (end_ms - t1) / 1000
    sampled = (t1 - t0) / 1000
    average = sampled / (len(samples) - 1)
    if raw > 0 and v0 >= 0:
        to_start = min(to_start, sampled * (v0 / raw))
    threshold = average * 1.1
    interval = sampled
    interval += to_start if to_start < threshold else average / 2
    interval += to_end if to_end < threshold else average / 2
    return raw * (interval / sampled)


def test_increase_and_resets_match_prometheus_within_its_extrapolation(tmp_path: Path) -> None:
    prom = PrometheusServer(tmp_path / "prometheus", free_port(), "http://127.0.0.1:9/none")
    prom.start()
    try:
        client = httpx.Client(base_url=prom.url, timeout=10)
        deadline = time.monotonic() + 120
        while True:  # wait for ~45 scrapes: 4 whole 10 s windows with a sample before each
            got = client.get("/api/v1/query", params={"query": f"{SERIES[0]}[2m]"}).json()
            result = got["data"]["result"]
            if result and len(result[0]["values"]) >= 45:
                break
            assert time.monotonic() < deadline, f"Prometheus has too few samples: {got}"
            time.sleep(1)
        checked = 0
        for name in SERIES:
            found = client.get("/api/v1/query", params={"query": f"{name}[5m]"}).json()
            series = found["data"]["result"][0]  # the first of its series (e.g. one per type)
            selector = "{" + ",".join(f'{k}="{v}"' for k, v in series["metric"].items()) + "}"
            samples = [(round(float(t) * 1000), float(v)) for t, v in series["values"]]
            t = np.array([s[0] for s in samples], dtype=np.int64)
            v = np.array([s[1] for s in samples])
            res = counters.window_increases(np.zeros(t.shape[0], np.int32), t, v, WINDOW_MS)
            ours = {
                int(s): (float(i), int(r))
                for s, i, r in zip(res.start_ns, res.increase, res.resets, strict=True)
            }
            first_full = (int(t[0]) // WINDOW_MS + 1) * WINDOW_MS
            for start in range(first_full, int(t[-1]) - WINDOW_MS + 1, WINDOW_MS):
                end = start + WINDOW_MS - 1  # Prometheus' range [end - 10 s, end]
                inside = [s for s in samples if end - WINDOW_MS <= s[0] <= end]
                mine = [s for s in samples if start <= s[0] < start + WINDOW_MS]
                if inside != mine or len(inside) < 2:
                    continue  # a sample exactly 1 ms before the window: ranges differ
                before = [s for s in samples if s[0] < start][-1][1]
                first = inside[0][1]
                boundary = first - before if first >= before else first
                boundary_reset = int(first < before)
                increase, resets = ours[start]
                q = {"time": f"{end / 1000:.3f}"}
                prom_inc = client.get(
                    "/api/v1/query", params={**q, "query": f"increase({selector}[10s])"}
                ).json()["data"]["result"]
                prom_res = client.get(
                    "/api/v1/query", params={**q, "query": f"resets({selector}[10s])"}
                ).json()["data"]["result"]
                # ours minus the boundary pair is the in-range increase Prometheus starts from
                expected = extrapolate(increase - boundary, inside, end - WINDOW_MS, end)
                got = float(prom_inc[0]["value"][1])
                assert got == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, start)
                assert int(float(prom_res[0]["value"][1])) == resets - boundary_reset
                checked += 1
        assert checked >= 4, "too few windows compared"
    finally:
        prom.stop()
