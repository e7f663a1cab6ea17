"""Tier rows of a real Prometheus' counters against Prometheus' own ``increase()``/``resets()``.

Run by the truth suite (test_truth_invariant.py, its ``fetch2000`` variant, on the same stack
and at the same time as its streams, so it costs the suite no stack of its own): a real
Prometheus scrapes itself every second and remote-writes everything to the gateway
(gateway, Kafka, worker, InfluxDB: tests/job/stack.py). Its counters (``*_total``) and its
histogram (``prometheus_http_request_duration_seconds_bucket``) are counters by the default
naming patterns, so their tier rows carry ``increase_value``/``resets_value``. The tier there
is 10 s (a 1 m tier needs minutes of scraping; the rule does not depend on the window). The
same check on the 1 m tier is the opt-in long test test_prometheus_1m.py (``make test-long``).

What differs from Prometheus, stated as code (docs/counters-and-percentiles.md):

* our ``increase_`` includes the pair across the window's start (previous sample -> first
  sample of the window); Prometheus' range ``[end - W, end]`` sees only the samples inside;
* Prometheus extrapolates the in-range increase towards the range's edges
  (``extrapolatedRate`` in promql/functions.go, :func:`extrapolate`); we do not, so
  consecutive windows add up to the exact total increase.

Prometheus also remote-writes its *metadata* every second here (``metadata_config``), and
scrapes a tiny exporter served by the test (:class:`TypedExporter`) whose two families only
metadata can classify: ``legacy_requests`` is a counter without the ``_total`` suffix, and
``queue_depth_total`` a gauge with a counter's name. :func:`check_declared_kinds` checks that
the first becomes a counter from its switch window on (matching Prometheus' ``increase()`` as
below) and the second stops being one (docs/counters-and-percentiles.md, "Types from
remote-write metadata").

So for every whole window of length W: ``increase(m[W])`` at the window's last millisecond ==
extrapolate(tier ``increase_value`` - boundary pair) and ``resets(m[W])`` == tier
``resets_value`` - the boundary pair's reset. The samples (and so the boundary pair) are
Prometheus' own, read back from its API: the same samples it remote-wrote.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from metricsflow.infra.process import free_port
from tests.gateway.test_prometheus_remote_write import PrometheusServer
from tests.job.stack import Stack, query

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


def tier_counters(stack: Stack, series: dict[str, str], tier: str) -> dict[int, tuple[float, int]]:
    """(window start ms) -> (increase_value, resets_value) of one series in ``tier``."""
    name = series["__name__"]
    where = " AND ".join(f"\"{k}\" = '{v}'" for k, v in series.items() if k != "__name__")
    rows = query(
        stack.influx.url,
        stack.db,
        f'SELECT increase_value, resets_value FROM "{tier}"."{name}" WHERE {where} GROUP BY *',
    )
    labels = {k: v for k, v in series.items() if k != "__name__"}
    out: dict[int, tuple[float, int]] = {}
    for r in rows:
        tags = {k: v for k, v in r.items() if k not in ("time", "increase_value", "resets_value")}
        if {k: v for k, v in tags.items() if v} == labels and r["increase_value"] is not None:
            out[r["time"] // 1_000_000] = (float(r["increase_value"]), int(r["resets_value"]))
    return out


class TypedExporter:
    """A ``/metrics`` endpoint in text format 0.0.4 with two families that only their
    ``# TYPE`` lines classify: ``legacy_requests`` (a counter, +1..+3 per scrape, reset to 0
    every 40 scrapes) and ``queue_depth_total`` (a gauge going up and down)."""

    def __init__(self) -> None:
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def render(self) -> str:
        self.scrapes += 1
        n = self.scrapes
        requests = sum(1 + i % 3 for i in range(n % 40))
        depth = (n * 7) % 11
        return (
            "# HELP legacy_requests Requests served (an old-style counter: no _total).\n"
            "# TYPE legacy_requests counter\n"
            f"legacy_requests {requests}\n"
            "# HELP queue_depth_total A gauge with a counter's name.\n"
            "# TYPE queue_depth_total gauge\n"
            f"queue_depth_total {depth}\n"
        )

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CounterPrometheus(PrometheusServer):
    """Keeps only the compared metrics (a few dozen series instead of ~700 a second), so that
    it does not load the truth suite's worker; scrapes a :class:`TypedExporter` too and sends
    its metadata every second."""

    exporter: TypedExporter | None = None

    def prepare(self) -> None:
        self.exporter = TypedExporter()
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
  - job_name: typed
    static_configs:
      - targets: ["{self.exporter.target}"]
remote_write:
  - url: "{self.remote_write_url}"
    queue_config:
      batch_send_deadline: 1s
      max_samples_per_send: 2000
    metadata_config:
      send: true
      send_interval: 1s
"""
        )

    def stop(self, timeout_s: float | None = None) -> bool:
        if self.exporter is not None:
            self.exporter.stop()
        return super().stop(timeout_s)


def start_prometheus(stack: Stack, data_dir: Path) -> PrometheusServer:
    """A Prometheus scraping itself every second, remote-writing to the stack's gateway."""
    prom = CounterPrometheus(
        data_dir, free_port(), f"{stack.gateway.url}/api/v1/write?db={stack.db}"
    )
    prom.start()
    return prom


def wait_for_windows(
    client: httpx.Client, window_ms: int, windows: int, settle_ms: int, timeout_s: float
) -> None:
    """Until Prometheus' own samples cover ``windows`` whole windows after its first sample
    (so with a sample before each) and ``settle_ms`` more (so the worker closed them)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = client.get("/api/v1/query", params={"query": f"{SERIES[0]}[1h]"}).json()
        result = got["data"]["result"]
        if result:
            values = result[0]["values"]
            first, last = round(float(values[0][0]) * 1000), round(float(values[-1][0]) * 1000)
            if last >= (first // window_ms + 1 + windows) * window_ms + settle_ms:
                return
        assert time.monotonic() < deadline, f"Prometheus has too few samples: {got}"
        time.sleep(1)


def assert_prometheus_agrees(
    client: httpx.Client,
    selector: str,
    window_ms: int,
    end: int,
    inside: list[tuple[int, float]],
    before: float,
    ours: tuple[float, int],
    where: object,
) -> None:
    """Prometheus' ``increase()``/``resets()`` of ``selector`` over ``[end - W, end]`` equal
    our window's ``(increase_, resets_)`` without the boundary pair (``before`` -> the first
    sample ``inside``), extrapolated as Prometheus does (module docstring)."""
    increase, resets = ours
    first = inside[0][1]
    boundary = first - before if first >= before else first
    q = {"time": f"{end / 1000:.3f}"}
    width = f"{window_ms // 1000}s"
    answers = [
        client.get("/api/v1/query", params={**q, "query": f"{fn}({selector}[{width}])"}).json()
        for fn in ("increase", "resets")
    ]
    prom_inc, prom_res = (float(a["data"]["result"][0]["value"][1]) for a in answers)
    # ours minus the boundary pair is the in-range increase Prometheus starts from
    expected = extrapolate(increase - boundary, inside, end - window_ms, end)
    assert prom_inc == pytest.approx(expected, rel=1e-9, abs=1e-12), where
    assert int(prom_res) == resets - int(first < before), where


def check_against_prometheus(
    stack: Stack,
    prom: PrometheusServer,
    *,
    tier: str = "10s",
    window_ms: int = 10_000,
    windows: int | None = 4,
    settle_ms: int = 10_000,
    min_checked: int = 8,
    lookback: str = "5m",
) -> int:
    """Compare the whole ``window_ms`` windows of ``tier`` of :data:`SERIES` (see the module
    docstring): the first ``windows`` of them, or every one that ended ``settle_ms`` before
    Prometheus' last sample when ``windows`` is None (then at least two are waited for);
    returns how many (series, window) pairs were compared."""
    client = httpx.Client(base_url=prom.url, timeout=10)
    wait_for_windows(client, window_ms, windows or 2, settle_ms, 120 + 4 * window_ms / 1000)
    checked = 0
    for selector in SERIES:
        found = client.get("/api/v1/query", params={"query": f"{selector}[{lookback}]"}).json()
        series = found["data"]["result"][0]  # the first of its series (e.g. one per type)
        labels = series["metric"]
        exact = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
        samples = [(round(float(t) * 1000), float(v)) for t, v in series["values"]]
        first_full = (samples[0][0] // window_ms + 1) * window_ms
        ours: dict[int, tuple[float, int]] = {}
        wait_until = time.monotonic() + 30
        stop = samples[-1][0] - settle_ms - window_ms + 1  # windows the worker has closed
        if windows is not None:  # e.g. the first four: long closed when the truth suite gets here
            stop = min(stop, first_full + windows * window_ms)
        starts = range(first_full, stop, window_ms)
        while not all(s in ours for s in starts) and time.monotonic() < wait_until:
            ours = tier_counters(stack, labels, tier)
            time.sleep(1)
        for start in starts:
            end = start + window_ms - 1  # Prometheus' range [end - W, end]
            inside = [s for s in samples if end - window_ms <= s[0] <= end]
            mine = [s for s in samples if start <= s[0] < start + window_ms]
            if inside != mine or len(inside) < 2:
                continue  # a sample exactly 1 ms before the window: ranges differ
            before = [s for s in samples if s[0] < start][-1][1]
            assert start in ours, (selector, start, sorted(ours))
            assert_prometheus_agrees(
                client, exact, window_ms, end, inside, before, ours[start], (selector, start)
            )
            checked += 1
    assert checked >= min_checked, f"too few windows compared: {checked}"
    return checked


def check_declared_kinds(
    stack: Stack, prom: PrometheusServer, *, tier: str = "10s", window_ms: int = 10_000
) -> int:
    """Kinds from Prometheus' metadata (module docstring): ``legacy_requests``' tier rows carry
    ``increase_value`` from some window on and in every window after it, each matching
    Prometheus' own ``increase()``/``resets()`` (extrapolation as in
    :func:`check_against_prometheus`); ``queue_depth_total``'s rows after that window carry
    none. Returns how many windows were compared with Prometheus."""
    client = httpx.Client(base_url=prom.url, timeout=10)
    deadline = time.monotonic() + 90
    labels: dict[str, str] = {}
    while True:
        found = client.get("/api/v1/query", params={"query": "legacy_requests[5m]"}).json()
        result = found["data"]["result"]
        if result:
            labels = result[0]["metric"]
            samples = [(round(float(t) * 1000), float(v)) for t, v in result[0]["values"]]
            ours = tier_counters(stack, labels, tier)
            if len(ours) >= 4:
                break
        assert time.monotonic() < deadline, f"no increase_value for legacy_requests: {found}"
        time.sleep(1)
    switch = min(ours)
    starts = range(switch, samples[-1][0] - 2 * window_ms, window_ms)
    exact = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
    compared = 0
    for start in starts:
        end = start + window_ms - 1
        inside = [s for s in samples if end - window_ms <= s[0] <= end]
        mine = [s for s in samples if start <= s[0] < start + window_ms]
        if not mine:
            continue
        assert start in ours, ("a window after the switch without increase_", start, sorted(ours))
        if inside != mine or len(inside) < 2 or not [s for s in samples if s[0] < start]:
            continue
        before = [s for s in samples if s[0] < start][-1][1]
        assert_prometheus_agrees(
            client, exact, window_ms, end, inside, before, ours[start], ("legacy", start)
        )
        compared += 1
    assert compared >= 2, f"too few legacy_requests windows compared: {compared}"
    # its own partition's switch may come a window or two apart (another watermark)
    after = (switch + 3 * window_ms) * 1_000_000
    rows = query(
        stack.influx.url,
        stack.db,
        f'SELECT count_value, increase_value FROM "{tier}"."queue_depth_total" '
        f"WHERE time >= {after} GROUP BY *",
    )
    assert rows, "no queue_depth_total rows after the switch"
    assert all(r["increase_value"] is None for r in rows), rows[:3]
    return compared
