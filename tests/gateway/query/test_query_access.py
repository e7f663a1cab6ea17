"""``/query`` is no admin console: only read statements pass for ordinary clients, statements
that change InfluxDB need an admin token and a POST, regexes run in linear time, and malformed
text is a 4xx, never a 5xx. Against the real InfluxDB: each refused statement is checked to have
changed nothing there."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.query.access import StatementAccess, classify, split_and_classify
from gateway.query.base import InfluxQLSyntaxError
from metricsflow.infra.influxdb import InfluxDBServer

QueryClientFactory = Callable[..., httpx.AsyncClient]

pytestmark = pytest.mark.integration

ADMIN = "admin-secret"


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT mean(v) FROM m WHERE time > now() - 1h GROUP BY time(1m)",
        "select * from /cpu.*/",
        "SHOW DATABASES",
        "show tag values with key =~ /ho;st/",
        "EXPLAIN ANALYZE SELECT v FROM m",
        'SELECT "into" FROM m',
        "SELECT v FROM m WHERE s = 'INTO; DROP DATABASE x'",
        "SELECT v FROM m /* DROP DATABASE x; */",
    ],
)
def test_read_statements_are_read(statement: str) -> None:
    assert [a for _, a in split_and_classify(statement)] == [StatementAccess.READ]


@pytest.mark.parametrize(
    "statement",
    [
        "DROP DATABASE x",
        "drop measurement m",
        "CREATE USER \"u\" WITH PASSWORD 'p' WITH ALL PRIVILEGES",
        "DELETE FROM m",
        "SELECT * INTO other FROM m",
        "select mean(v) into x.y.z from m group by time(1m)",
        "ALTER RETENTION POLICY r ON d DURATION 1h",
        "GRANT ALL TO u",
        "KILL QUERY 1",
        "SET PASSWORD FOR u = 'x'",
        "/x/",
        "'SELECT'",
        "CREATE DATABASE x /* ; SELECT 1 */",
    ],
)
def test_everything_else_is_a_write(statement: str) -> None:
    assert StatementAccess.WRITE in [a for _, a in split_and_classify(statement)]


def test_a_write_hidden_after_a_read_is_found() -> None:
    judged = split_and_classify("SELECT v FROM m; DROP DATABASE x")
    assert [a for _, a in judged] == [StatementAccess.READ, StatementAccess.WRITE]
    assert classify("SELECT v FROM m; DROP DATABASE x") is StatementAccess.WRITE


@pytest.mark.parametrize("text", ["SELECT 'unterminated", "SELECT $var FROM m", "SELECT /* x"])
def test_text_the_lexer_cannot_read_is_refused(text: str) -> None:
    with pytest.raises(InfluxQLSyntaxError):
        split_and_classify(text)


def databases(influxdb_url: str) -> set[str]:
    body = httpx.get(f"{influxdb_url}/query", params={"q": "SHOW DATABASES"}).json()
    return {row[0] for row in body["results"][0]["series"][0].get("values", [])}


async def test_statements_that_change_influxdb_are_refused_without_admin_token(
    query_client_factory: QueryClientFactory,
    influx_database_factory: Callable[..., str],
    influxdb_server: InfluxDBServer,
) -> None:
    db = influx_database_factory()
    api = query_client_factory()
    drop = f'DROP DATABASE "{db}"'
    attempts = [
        api.get("/query", params={"q": drop}),
        api.post("/query", data={"q": drop}),
        api.post("/query", params={"q": f"SHOW DATABASES; {drop}"}),
        api.post("/query", data={"q": f'SELECT * INTO "{db}".."x" FROM "{db}".."m"'}),
        # Content type spelled in capitals: still a form body, still judged.
        api.post(
            "/query",
            content=f"q={drop}".encode(),
            headers={"Content-Type": "Application/X-WWW-Form-Urlencoded"},
        ),
    ]
    for response in await asyncio.gather(*attempts):
        assert response.status_code == 403, response.text
        assert "changes InfluxDB" in response.json()["error"]
        assert "GATEWAY_QUERY_ADMIN_TOKENS" in response.json()["error"]
    # Ambiguous requests that InfluxDB (Go) and we could read differently are refused or
    # rebuilt: a second q, a ';' separator in the query string, a multipart body.
    twice = await api.get("/query", params=[("q", "SHOW DATABASES"), ("q", drop)])
    assert twice.status_code == 400, twice.text
    semicolon = await api.get(f"/query?x=1;q={drop}")
    assert semicolon.status_code == 400, semicolon.text
    multipart = await api.post("/query", files={"q": ("q.txt", drop.encode())})
    assert multipart.status_code == 415, multipart.text
    assert db in databases(influxdb_server.url)


async def test_an_admin_token_allows_them_by_post_only(
    query_client_factory: QueryClientFactory,
    influx_database_factory: Callable[..., str],
    influxdb_server: InfluxDBServer,
) -> None:
    db = influx_database_factory()
    api = query_client_factory(query_admin_tokens=[ADMIN])
    drop = f'DROP DATABASE "{db}"'
    wrong = await api.post("/query", data={"q": drop}, headers={"Authorization": "Token nope"})
    assert wrong.status_code == 403
    assert "admin token" in wrong.json()["error"]
    by_get = await api.get("/query", params={"q": drop, "p": ADMIN})
    assert by_get.status_code == 405
    assert "POST" in by_get.json()["error"]
    assert db in databases(influxdb_server.url)
    ok = await api.post("/query", data={"q": drop}, headers={"Authorization": f"Token {ADMIN}"})
    assert ok.status_code == 200, ok.text
    assert db not in databases(influxdb_server.url)


async def test_a_catastrophic_regex_is_evaluated_in_linear_time(
    query_client_factory: QueryClientFactory,
    influx_database_factory: Callable[..., str],
    influxdb_server: InfluxDBServer,
) -> None:
    db = influx_database_factory()
    key = "a" * 40 + "!"
    now_s = time.time_ns() // 10**9
    async with httpx.AsyncClient() as direct:
        written = await direct.post(
            f"{influxdb_server.url}/write",
            params={"db": db, "precision": "s"},
            content=f"m,{key}=x v=1 {now_s - 600}".encode(),
        )
    written.raise_for_status()
    api = query_client_factory()
    # first() needs single-series groups, so the planner matches the regex against every tag
    # key: /(a+)+$/ against 'aaaa...a!' backtracks 2^40 times in a backtracking engine.
    q = "SELECT first(v) FROM m WHERE time > now() - 3h GROUP BY time(1h), /(a+)+$/"
    started = time.monotonic()
    response = await api.get("/query", params={"db": db, "q": q})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "q",
    [
        "SELECT mean(v) FROM m WHERE time > '2024-13-45T00:00:00Z' GROUP BY time(1h)",
        "SELECT mean(v) FROM m WHERE time > '99999-01-01' GROUP BY time(1h)",
        "SELECT mean(v) FROM m WHERE time > 99999999999999999999999999s GROUP BY time(1h)",
        "SELECT mean(v) FROM m WHERE " + "(" * 400 + "time > now()" + ")" * 400,
        "SELECT mean(v) FROM m WHERE " + " AND ".join(["time > now() - 1h"] * 5000),
        "SELECT mean(v) FROM m GROUP BY time(0s)",
        "SELECT mean(v) FROM m GROUP BY /(?=a)/",
        "SELECT",
        ";;;",
    ],
)
async def test_malformed_queries_are_never_a_server_error(
    q: str, query_client_factory: QueryClientFactory, influx_database_factory: Callable[..., str]
) -> None:
    db = influx_database_factory()
    response = await query_client_factory().post("/query", data={"db": db, "q": q})
    assert response.status_code < 500, response.text


_WORDS = st.sampled_from(
    [
        "SELECT",
        "SHOW",
        "FROM",
        "WHERE",
        "GROUP",
        "BY",
        "time",
        "now()",
        "INTO",
        "DROP",
        "mean(v)",
        "v",
        "m",
        ",",
        ";",
        "(",
        ")",
        "=",
        "=~",
        "/a/",
        "'x'",
        '"y"',
        "1h",
        "1",
        "AND",
        "OR",
        "-",
        "+",
        "*",
        "fill(none)",
        "LIMIT",
        "TAG",
        "KEYS",
        "DATABASES",
        "/*",
        "*/",
        "--",
    ]
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_WORDS | st.text(max_size=6), max_size=14))
def test_random_influxql_is_never_a_server_error_nor_an_unjudged_write(words: list[str]) -> None:
    q = " ".join(words)
    try:
        judged = split_and_classify(q)
    except InfluxQLSyntaxError:
        return
    for text, access in judged:
        first = text.split(None, 1)[0].upper() if text.split() else ""
        if first not in ("SELECT", "SHOW", "EXPLAIN"):
            assert access is StatementAccess.WRITE, text
