"""Tier rows of a real Prometheus' counters against Prometheus' own ``increase()``/``resets()``.

Run by the truth suite (test_truth_invariant.py, its ``fetch2000`` variant, on the same stack
and at the same time as its streams, so it costs the suite no stack of its own): a real
Prometheus scrapes itself every second and remote-writes everything to the gateway
(gateway, Kafka, worker, InfluxDB: tests/job/stack.py). Its counters (``*_total``) and its
histogram (``prometheus_http_request_duration_seconds_bucket``) are counters by the default
naming patterns, so their tier rows carry ``increase_value``/``resets_value``. The tier here
is 10 s (a 1 m tier would need minutes of scraping; the rule does not depend on the window).

What differs from Prometheus, stated as code (docs/counters-and-percentiles.md):

* our ``increase_`` includes the pair across the window's start (previous sample -> first
  sample of the window); Prometheus' range ``[end - 10s, end]`` sees only the samples inside;
* Prometheus extrapolates the in-range increase towards the range's edges
  (``extrapolatedRate`` in promql/functions.go, :func:`extrapolate`); we do not, so
  consecutive windows add up to the exact total increase.

So for every whole window: ``increase(m[10s])`` at the window's last millisecond ==
extrapolate(tier ``increase_value`` - boundary pair) and ``resets(m[10s])`` == tier
``resets_value`` - the boundary pair's reset. The samples (and so the boundary pair) are
Prometheus' own, read back from its API: the same samples it remote-wrote.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from metricsflow.infra.process import free_port
from tests.gateway.test_prometheus_remote_write import PrometheusServer
from tests.job.stack import Stack, query

WINDOW_MS = 10_000
SERIES = (
    "prometheus_tsdb_head_samples_appended_total",
    "process_cpu_seconds_total",
    'prometheus_http_request_duration_seconds_bucket{handler="/metrics",le="+Inf"}',
    'prometheus_http_request_duration_seconds_bucket{handler="/metrics",le="0.1"}',
)


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


def tier_counters(stack: Stack, series: dict[str, str]) -> dict[int, tuple[float, int]]:
    """(window start ms) -> (increase_value, resets_value) of one series in the 10s tier."""
    name = series["__name__"]
    where = " AND ".join(f"\"{k}\" = '{v}'" for k, v in series.items() if k != "__name__")
    rows = query(
        stack.influx.url,
        stack.db,
        f'SELECT increase_value, resets_value FROM "10s"."{name}" WHERE {where} GROUP BY *',
    )
    labels = {k: v for k, v in series.items() if k != "__name__"}
    out: dict[int, tuple[float, int]] = {}
    for r in rows:
        tags = {k: v for k, v in r.items() if k not in ("time", "increase_value", "resets_value")}
        if {k: v for k, v in tags.items() if v} == labels and r["increase_value"] is not None:
            out[r["time"] // 1_000_000] = (float(r["increase_value"]), int(r["resets_value"]))
    return out


class CounterPrometheus(PrometheusServer):
    """Keeps only the compared metrics (a few dozen series instead of ~700 a second), so that
    it does not load the truth suite's worker."""

    def prepare(self) -> None:
        keep = "|".join(sorted({s.split("{")[0] for s in SERIES}))
        (self.data_dir / "prometheus.yml").write_text(
            f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: self
    static_configs:
      - targets: ["127.0.0.1:{self.port}"]
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: "{keep}"
        action: keep
remote_write:
  - url: "{self.remote_write_url}"
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 2000
"""
        )


def start_prometheus(stack: Stack, data_dir: Path) -> PrometheusServer:
    """A Prometheus scraping itself every second, remote-writing to the stack's gateway."""
    prom = CounterPrometheus(
        data_dir, free_port(), f"{stack.gateway.url}/api/v1/write?db={stack.db}"
    )
    prom.start()
    return prom


def check_against_prometheus(stack: Stack, prom: PrometheusServer) -> int:
    """Compare every whole 10 s window of :data:`SERIES` (see the module docstring); returns
    how many windows were compared."""
    client = httpx.Client(base_url=prom.url, timeout=10)
    deadline = time.monotonic() + 120
    while True:  # ~45 scrapes: 4 whole 10 s windows with a sample before each
        got = client.get("/api/v1/query", params={"query": f"{SERIES[0]}[2m]"}).json()
        result = got["data"]["result"]
        if result and len(result[0]["values"]) >= 45:
            break
        assert time.monotonic() < deadline, f"Prometheus has too few samples: {got}"
        time.sleep(1)
    checked = 0
    for selector in SERIES:
        found = client.get("/api/v1/query", params={"query": f"{selector}[5m]"}).json()
        series = found["data"]["result"][0]  # the first of its series (e.g. one per type)
        labels = series["metric"]
        exact = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        samples = [(round(float(t) * 1000), float(v)) for t, v in series["values"]]
        first_full = (samples[0][0] // WINDOW_MS + 1) * WINDOW_MS
        last_end = samples[-1][0] - WINDOW_MS  # windows the worker has surely closed
        ours: dict[int, tuple[float, int]] = {}
        wait_until = time.monotonic() + 30
        # the first four whole windows: long closed when the truth suite gets here
        starts = range(
            first_full, min(last_end - WINDOW_MS + 1, first_full + 4 * WINDOW_MS), WINDOW_MS
        )
        while not all(s in ours for s in starts) and time.monotonic() < wait_until:
            ours = tier_counters(stack, labels)
            time.sleep(1)
        for start in starts:
            end = start + WINDOW_MS - 1  # Prometheus' range [end - 10 s, end]
            inside = [s for s in samples if end - WINDOW_MS <= s[0] <= end]
            mine = [s for s in samples if start <= s[0] < start + WINDOW_MS]
            if inside != mine or len(inside) < 2:
                continue  # a sample exactly 1 ms before the window: ranges differ
            before = [s for s in samples if s[0] < start][-1][1]
            first = inside[0][1]
            boundary = first - before if first >= before else first
            boundary_reset = int(first < before)
            assert start in ours, (selector, start, sorted(ours))
            increase, resets = ours[start]
            q = {"time": f"{end / 1000:.3f}"}
            prom_inc = client.get(
                "/api/v1/query", params={**q, "query": f"increase({exact}[10s])"}
            ).json()["data"]["result"]
            prom_res = client.get(
                "/api/v1/query", params={**q, "query": f"resets({exact}[10s])"}
            ).json()["data"]["result"]
            # ours minus the boundary pair is the in-range increase Prometheus starts from
            expected = extrapolate(increase - boundary, inside, end - WINDOW_MS, end)
            got_inc = float(prom_inc[0]["value"][1])
            assert got_inc == pytest.approx(expected, rel=1e-9, abs=1e-12), (selector, start)
            assert int(float(prom_res[0]["value"][1])) == resets - boundary_reset
            checked += 1
    assert checked >= 8, "too few windows compared"
    return checked
