"""The Grafana provisioning: valid dashboard JSON, and every panel query works.

Grafana itself cannot run here (docs/grafana.md), so this checks what Grafana would do:
every dashboard follows the documented dashboard model; every InfluxQL query, with its
template variables expanded the way Grafana expands them, runs through the gateway's query
API against a real InfluxDB holding raw and tiered data, returns the series the panel expects,
from the tier the zoom level calls for, with the same values as the raw tier; every PromQL
expression parses (``promtool check rules``) and names only metrics our code registers.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from gateway.metrics import GatewayMetrics
from gateway.query.base import TIER_HEADER, QuerySettings
from gateway.query.router import create_query_router
from gateway.query.testing import MINUTE_NS, TieredDataset, write_tiered_dataset
from metricsflow.infra.influxdb import InfluxDBServer
from metricsflow.sources.base import SourceStats
from metricsflow.windows.operator import TierWindowMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = ROOT / "grafana" / "provisioning" / "datasources" / "metricsflow.yaml"
PROVIDERS = ROOT / "grafana" / "provisioning" / "dashboards" / "metricsflow.yaml"
PANEL_TYPES = {"timeseries", "table", "stat", "gauge", "bargauge", "text", "heatmap", "row"}
MAX_DATA_POINTS = 1000  # about the pixel width of a half-width panel on a 1920px screen
DATASOURCE_MIN_INTERVAL_MS = 10_000  # jsonData.timeInterval of the InfluxDB data source


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def datasource_uids() -> dict[str, str]:
    config = yaml.safe_load(DATASOURCES.read_text())
    return {ds["uid"]: ds["type"] for ds in config["datasources"]}


def panels_of(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


# --- the dashboard model --------------------------------------------------------------------


def dashboard_problems(dashboard: dict[str, Any], uids: dict[str, str]) -> list[str]:
    """Deviations from Grafana's dashboard JSON model (docs: "JSON model" of dashboards)."""
    problems: list[str] = []
    required: list[tuple[str, type]] = [
        ("uid", str),
        ("title", str),
        ("schemaVersion", int),
        ("panels", list),
        ("time", dict),
        ("templating", dict),
    ]
    for key, expected_type in required:
        if not isinstance(dashboard.get(key), expected_type):
            problems.append(f"{key} missing or not a {expected_type.__name__}")
    if problems:
        return problems
    if not 0 < len(dashboard["uid"]) <= 40 or not re.fullmatch(r"[A-Za-z0-9_-]+", dashboard["uid"]):
        problems.append("uid must be 1-40 characters of [A-Za-z0-9_-]")
    if dashboard["schemaVersion"] < 36:
        problems.append("schemaVersion older than 36 (datasource references by uid)")
    if "id" in dashboard and dashboard["id"] is not None:
        problems.append("provisioned dashboards must not carry a database id")
    ids: set[int] = set()
    cells: set[tuple[int, int]] = set()
    for panel in panels_of(dashboard):
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int) or panel["id"] in ids:
            problems.append(f"{name}: id missing or not unique")
        ids.add(panel.get("id", -1))
        if panel.get("type") not in PANEL_TYPES:
            problems.append(f"{name}: unknown type {panel.get('type')!r}")
        pos = panel.get("gridPos", {})
        if not all(isinstance(pos.get(k), int) for k in ("h", "w", "x", "y")):
            problems.append(f"{name}: gridPos needs integer h, w, x, y")
            continue
        if pos["w"] < 1 or pos["h"] < 1 or pos["x"] < 0 or pos["x"] + pos["w"] > 24:
            problems.append(f"{name}: gridPos outside the 24-column grid")
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                if (x, y) in cells:
                    problems.append(f"{name}: overlaps another panel at {(x, y)}")
                cells.add((x, y))
        if panel.get("type") in ("row", "text"):
            continue
        ds = panel.get("datasource")
        if not isinstance(ds, dict) or uids.get(str(ds.get("uid"))) != ds.get("type"):
            problems.append(f"{name}: datasource {ds!r} is not a provisioned data source")
        targets = panel.get("targets")
        if not isinstance(targets, list) or not targets:
            problems.append(f"{name}: no targets")
            continue
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids) or not all(ref_ids):
            problems.append(f"{name}: refIds missing or not unique")
        for t in targets:
            kind = (t.get("datasource") or ds or {}).get("type")
            if kind == "influxdb" and not (t.get("rawQuery") and isinstance(t.get("query"), str)):
                problems.append(f"{name}: InfluxDB targets must be raw InfluxQL queries")
            if kind == "prometheus" and not isinstance(t.get("expr"), str):
                problems.append(f"{name}: Prometheus targets need expr")
    for var in dashboard["templating"].get("list", []):
        if not var.get("name") or var.get("type") not in ("query", "custom", "interval", "adhoc"):
            problems.append(f"variable {var!r}: name and type required")
        if var.get("type") == "query" and uids.get(var.get("datasource", {}).get("uid")) is None:
            problems.append(f"variable {var.get('name')}: unknown datasource")
    return problems


def test_there_are_the_two_dashboards_and_the_provider_loads_their_folder() -> None:
    assert {load(p)["uid"] for p in DASHBOARDS} == {"metricsflow-explorer", "metricsflow-health"}
    providers = yaml.safe_load(PROVIDERS.read_text())["providers"]
    assert providers[0]["type"] == "file"
    assert providers[0]["options"]["path"].startswith("/var/lib/grafana/dashboards")


def test_the_influxdb_data_source_points_at_the_gateway_query_api() -> None:
    by_uid = {d["uid"]: d for d in yaml.safe_load(DATASOURCES.read_text())["datasources"]}
    influx = by_uid["metricsflow-influxdb"]
    assert influx["type"] == "influxdb"
    assert influx["jsonData"]["version"] == "InfluxQL"
    assert influx["url"] == "http://gateway:8186"
    assert by_uid["metricsflow-prometheus"]["type"] == "prometheus"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_dashboard_follows_the_grafana_dashboard_model(path: Path) -> None:
    assert dashboard_problems(load(path), datasource_uids()) == []


def test_the_model_checker_catches_broken_dashboards() -> None:
    broken = load(DASHBOARDS[0])
    broken["panels"][1]["id"] = broken["panels"][0]["id"]
    broken["panels"][1]["gridPos"] = dict(broken["panels"][0]["gridPos"])
    broken["panels"][2]["datasource"] = {"type": "influxdb", "uid": "nope"}
    broken["panels"][3]["targets"] = []
    problems = "\n".join(dashboard_problems(broken, datasource_uids()))
    for expected in ("not unique", "overlaps", "not a provisioned", "no targets"):
        assert expected in problems


# --- InfluxQL panels against the query API ---------------------------------------------------

# Grafana's roundInterval (public/app/core/utils/rangeutil.ts / kbn): (upper bound ms, interval)
_ROUND_INTERVAL = [
    (15, "10ms"),
    (35, "20ms"),
    (75, "50ms"),
    (150, "100ms"),
    (350, "200ms"),
    (750, "500ms"),
    (1500, "1s"),
    (3500, "2s"),
    (7500, "5s"),
    (12500, "10s"),
    (17500, "15s"),
    (25000, "20s"),
    (45000, "30s"),
    (90000, "1m"),
    (210000, "2m"),
    (450000, "5m"),
    (780000, "10m"),
    (1350000, "15m"),
    (2700000, "30m"),
    (5400000, "1h"),
    (9000000, "2h"),
    (16200000, "3h"),
    (24300000, "6h"),
    (64800000, "12h"),
    (129600000, "1d"),
    (604800000, "1d"),
    (1814400000, "1w"),
    (3628800000, "30d"),
]
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def grafana_interval(range_ms: int) -> str:
    """``$__interval`` as Grafana computes it: range / maxDataPoints, rounded, not below the
    data source's minimum interval."""
    raw = max(range_ms / MAX_DATA_POINTS, DATASOURCE_MIN_INTERVAL_MS)
    for bound, text in _ROUND_INTERVAL:
        if raw < bound:
            return text
    return "1y"


def regex_multi(values: list[str]) -> str:
    """A multi-value variable in a regex, as Grafana's InfluxDB data source renders it."""
    escaped = [re.sub(r"([\\^$*+?.()|{}\[\]/])", r"\\\1", v) for v in values]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def expand(query: str, variables: dict[str, str], start_ms: int, end_ms: int) -> str:
    interval = grafana_interval(end_ms - start_ms)
    out = query.replace("$timeFilter", f"time >= {start_ms}ms and time <= {end_ms}ms")
    out = out.replace("$__interval", interval)
    for name in sorted(variables, key=len, reverse=True):
        out = out.replace(f"${name}", variables[name])
    assert re.search(r"\$[A-Za-z_]", out) is None, out
    return out


VARIABLES = {
    "measurement": "cpu",
    "field": "usage",
    "counter": "requests",
    "latency": "latency",
    "tag": "host",
    "value": regex_multi(["a", "b"]),
}
#: Zoom levels: (range, the interval Grafana picks, the tier that must answer).
ZOOMS = [("6h", "20s", "raw"), ("2d", "2m", "1m"), ("90d", "2h", "1h"), ("1825d", "1d", "1d")]
#: What each explorer panel must return: (columns, tag keys of its series).
EXPLORER_EXPECTATIONS = {
    1: (["time", "mean"], {"host"}),
    2: (["time", "min", "max"], set()),
    3: (["time", "count"], {"host"}),
    4: (["time", "sum"], set()),
    5: (["time", "last", "first"], {"host", "region"}),
    6: (["time", "p50", "p99"], set()),
    7: (["time", "rate"], {"host"}),
}


@pytest.fixture(scope="module")
def explorer_dataset_factory(
    influxdb_server: InfluxDBServer,
) -> Iterator[Callable[[], TieredDataset]]:
    """``ds = explorer_dataset_factory()``: three days of points up to a few minutes ago in
    raw and tiers (with a counter and a sketched field), in a database of this module."""
    made: list[TieredDataset] = []

    def make() -> TieredDataset:
        if not made:
            db = f"grafana_{uuid.uuid4().hex[:10]}"
            httpx.post(f"{influxdb_server.url}/query", data={"q": f'CREATE DATABASE "{db}"'})
            end = time.time_ns() - 10 * MINUTE_NS
            made.append(
                write_tiered_dataset(
                    influxdb_server.url, db, end_ns=end, align_end_to=MINUTE_NS, counters=True
                )
            )
        return made[0]

    yield make
    for ds in made:
        httpx.post(f"{influxdb_server.url}/query", data={"q": f'DROP DATABASE "{ds.database}"'})


@pytest.fixture
async def gateway_client_factory(
    influxdb_server: InfluxDBServer,
) -> AsyncIterator[Callable[[], httpx.AsyncClient]]:
    """``client = gateway_client_factory()``: an httpx client of an app mounting the query API."""
    clients: list[httpx.AsyncClient] = []

    def make() -> httpx.AsyncClient:
        app = FastAPI()
        app.include_router(create_query_router(QuerySettings(influxdb_url=influxdb_server.url)))
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def explorer() -> dict[str, Any]:
    return load(ROOT / "grafana" / "dashboards" / "metrics-explorer.json")


async def test_the_explorer_variables_list_measurements_raw_fields_tags_and_values(
    explorer_dataset_factory: Callable[[], TieredDataset],
    gateway_client_factory: Callable[[], httpx.AsyncClient],
) -> None:
    ds = explorer_dataset_factory()
    api = gateway_client_factory()
    found: dict[str, set[str]] = {}
    for var in explorer()["templating"]["list"]:
        q = expand(var["query"], VARIABLES, 0, 1)
        response = await api.get("/query", params={"db": ds.database, "q": q})
        assert response.status_code == 200, response.text
        series = response.json()["results"][0].get("series", [])
        # Grafana takes the "value" column of SHOW TAG VALUES, the first column otherwise,
        # and keeps what the variable's regex matches (its first group when it has one).
        values = {
            str(row[s["columns"].index("value")] if "value" in s["columns"] else row[0])
            for s in series
            for row in s["values"]
        }
        found[var["name"]] = grafana_regex_filter(values, var.get("regex", ""))
    assert found == {
        "measurement": {"cpu"},
        "field": {"usage", "temp", "requests", "latency"},
        "counter": {"requests"},
        "latency": {"latency"},
        "tag": {"host", "region"},
        "value": {"a", "b", "c", "d"},
    }


def grafana_regex_filter(values: set[str], regex: str) -> set[str]:
    """A query variable's ``regex`` (``/pattern/``): the values it matches, or their first
    capture group when it has one, as Grafana's variable support does."""
    if not regex:
        return values
    pattern = re.compile(regex[1:-1])
    out: set[str] = set()
    for value in values:
        match = pattern.search(value)
        if match:
            out.add(match.group(1) if match.groups() else value)
    return out


@pytest.mark.parametrize(("zoom", "interval", "tier"), ZOOMS)
async def test_every_explorer_panel_returns_its_series_from_the_tier_of_the_zoom_level(
    zoom: str,
    interval: str,
    tier: str,
    explorer_dataset_factory: Callable[[], TieredDataset],
    gateway_client_factory: Callable[[], httpx.AsyncClient],
    influxdb_server: InfluxDBServer,
) -> None:
    ds = explorer_dataset_factory()
    api = gateway_client_factory()
    end_ms = time.time_ns() // 1_000_000
    start_ms = end_ms - int(zoom[:-1]) * (3_600_000 if zoom.endswith("h") else 86_400_000)
    assert grafana_interval(end_ms - start_ms) == interval
    for panel in explorer()["panels"]:
        columns, tag_keys = EXPLORER_EXPECTATIONS[panel["id"]]
        for target in panel["targets"]:
            q = expand(target["query"], VARIABLES, start_ms, end_ms)
            params = {"db": ds.database, "q": q, "epoch": "ms"}
            got = await api.get("/query", params=params)
            async with httpx.AsyncClient(timeout=60) as direct:
                want = (await direct.get(f"{influxdb_server.url}/query", params=params)).json()
            assert got.status_code == 200, got.text
            assert got.headers[TIER_HEADER] == tier, q
            series = got.json()["results"][0].get("series", [])
            assert series, f"panel {panel['title']!r} returned nothing: {q}"
            assert all(s["columns"] == columns for s in series)
            assert all(set((s.get("tags") or {}).keys()) == tag_keys for s in series)
            if "host" in tag_keys:
                assert {s["tags"]["host"] for s in series} == {"a", "b"}
            want_series = want["results"][0].get("series", [])
            if tier == "raw" or panel["id"] not in (6, 7):
                assert_same_values(series, want_series)
            elif panel["id"] == 6:  # merged sketches: within their 1 % relative accuracy
                assert_same_values(series, want_series, rel=0.01)
            else:  # a rate from increase_: InfluxDB's difference per second (no resets here)
                diff_q = q.replace(
                    'non_negative_derivative(last("requests"), 1s)', 'difference(last("requests"))'
                )
                async with httpx.AsyncClient(timeout=60) as direct:
                    diffs = await direct.get(
                        f"{influxdb_server.url}/query", params=params | {"q": diff_q}
                    )
                seconds = GRAFANA_INTERVAL_S[interval]
                per_second = [
                    s
                    | {
                        "columns": ["time", "rate"],
                        "values": [[t, d / seconds] for t, d in s["values"]],
                    }
                    for s in diffs.json()["results"][0]["series"]
                ]
                assert_same_values(series, per_second)


GRAFANA_INTERVAL_S = {"20s": 20, "2m": 120, "2h": 7200, "1d": 86400}


def assert_same_values(
    got: list[dict[str, Any]], want: list[dict[str, Any]], rel: float = 1e-9
) -> None:
    assert [(s.get("tags"), s["columns"]) for s in got] == [
        (s.get("tags"), s["columns"]) for s in want
    ]
    for g, w in zip(got, want, strict=True):
        assert [r[0] for r in g["values"]] == [r[0] for r in w["values"]]
        for g_row, w_row in zip(g["values"], w["values"], strict=True):
            for gv, wv in zip(g_row[1:], w_row[1:], strict=True):
                assert gv == (wv if wv is None else pytest.approx(wv, rel=rel, abs=1e-9))


def test_the_interval_table_follows_grafana() -> None:
    assert grafana_interval(6 * 3_600_000) == "20s"
    assert grafana_interval(3_600_000) == "10s"  # the data source's minimum interval
    assert grafana_interval(7 * 86_400_000) == "10m"
    assert regex_multi(["a.b", "c"]) == r"(a\.b|c)"


# --- PromQL panels --------------------------------------------------------------------------


def prometheus_expressions() -> list[tuple[str, str]]:
    out = []
    for path in DASHBOARDS:
        for panel in panels_of(load(path)):
            for t in panel.get("targets", []):
                if "expr" in t:
                    out.append((f"{path.stem}: {panel['title']} {t['refId']}", t["expr"]))
    return out


def promql_for_promtool(expr: str) -> str:
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
    )


_PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords, label
    names (inside ``{}`` or ``by (...)``), strings, durations or numbers."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        if match.start() > 0 and (
            text[match.start() - 1].isdigit() or text[match.start() - 1] == "."
        ):
            continue
        names.add(word)
    return names


def exposed_names(registry: CollectorRegistry) -> set[str]:
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def worker_metric_names() -> set[str]:
    """What a worker's ``/metrics`` exposes: its collector over a runner with zero counters and
    one completed checkpoint (the collector only reads these attributes)."""
    from metricsflow.worker.metrics import WorkerCollector

    checkpoint = SimpleNamespace(
        status="completed", duration_ns=1, state_size=1, written_bytes=1, alignment_duration_ns=0
    )

    def no_task(_kg: int) -> Any:
        raise KeyError(_kg)

    runner = SimpleNamespace(
        source=SimpleNamespace(
            stats=SourceStats(),  # the real one: a new counter cannot be missed here
            lag=lambda: {0: 0},
        ),
        sink=SimpleNamespace(
            pending_requests=0,
            stats=SimpleNamespace(
                points_written=0,
                requests=0,
                retries=0,
                blocked=False,
                dead_letter_points={},
                hard_limit_waits=0,
                beyond_retention_points={},
                fenced_points=0,
                unconfirmed_writes=0,
            ),
        ),
        isolation_restarts=0,
        late=SimpleNamespace(points=0),
        recovery=SimpleNamespace(refused={}),
        metrics=SimpleNamespace(
            watermarks=SimpleNamespace(future_points=0),
            tiers={"1m": TierWindowMetrics()},
        ),
        corrections=SimpleNamespace(backlog=0, stats=SimpleNamespace(queries=0, failures=0)),
        job=SimpleNamespace(
            key_groups=[0], source_task=no_task, coordinator=SimpleNamespace(history=[checkpoint])
        ),
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(runner))  # type: ignore[arg-type]
    return exposed_names(registry)


def test_every_promql_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = shutil.which("promtool") or "/usr/bin/promtool"
    if not Path(promtool).exists():
        pytest.fail("promtool is missing: apt-get install prometheus")
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"panel_expr_{i}", "expr": promql_for_promtool(expr)}
                    for i, (_, expr) in enumerate(prometheus_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rules["groups"][0]["rules"]) >= 12


def test_every_metric_a_panel_names_is_registered_by_the_gateway_or_the_worker() -> None:
    registered = exposed_names(GatewayMetrics().registry) | worker_metric_names()
    used = {
        (where, name) for where, expr in prometheus_expressions() for name in metric_names(expr)
    }
    assert used
    assert sorted((w, n) for w, n in used if n not in registered) == []


def test_metric_names_are_read_from_promql_like_prometheus_would() -> None:
    expr = 'histogram_quantile(0.99, sum by (le) (rate(x_bucket{job="a b"}[5m]))) / on (i) y'
    assert metric_names(expr) == {"x_bucket", "y"}
