"""``GET|POST /query``: an InfluxDB v1 compatible, tier-aware query endpoint.

Grafana's built-in InfluxDB data source (InfluxQL) points at the gateway instead of InfluxDB.
Each statement of ``q`` is either

* rewritten onto the coarsest tier that answers it exactly (:mod:`gateway.query.rewrite`),
  executed against InfluxDB as a few ``fill(none)`` statements in one request, and merged by
  :mod:`gateway.query.results`; or
* proxied to InfluxDB unchanged (the raw tier): SHOW, raw SELECTs, other functions,
  subqueries, intervals no tier divides, and anything the parser does not understand.

``X-Metricsflow-Tier`` names the tier used for each statement, comma-separated in statement
order. When every statement goes to raw, the whole request is forwarded as it came (any
method, parameters, body, credentials) and InfluxDB's answer is returned untouched.

Include it in an app with ``app.include_router(create_query_router(QuerySettings()))``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import httpx
import orjson
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CollectorRegistry, Counter

from gateway.query.access import (
    StatementAccess,
    presented_token,
    split_and_classify,
    token_in,
)
from gateway.query.base import (
    TIER_HEADER,
    InfluxQLSyntaxError,
    QuerySettings,
    Series,
    UnrewritableQueryError,
    series_from_json,
)
from gateway.query.functions import (
    FunctionPart,
    build_function_parts,
    group_keys,
    merge_counter_parts,
    merge_percentile_parts,
    required_tier_fields,
)
from gateway.query.influxql import parse_select
from gateway.query.results import merge_parts, statement_result
from gateway.query.rewrite import (
    KIND_AGGREGATE,
    KIND_PERCENTILE,
    Analysis,
    QueryPart,
    analyze,
    build_parts,
    check_tag_keys,
    choose_tier,
)
from gateway.query.sketches import SketchDecodeError
from gateway.query.syntax import Measurement, render_measurement
from metricsflow.model import MetricsflowError
from metricsflow.model.tiers import RAW_TIER, TierSpec

logger = logging.getLogger(__name__)

#: Request headers forwarded to InfluxDB (credentials and content negotiation of the answer).
_FORWARD_REQUEST_HEADERS = ("authorization", "accept")
#: Response headers of InfluxDB returned to the client on a proxied request.
_FORWARD_RESPONSE_HEADERS = ("content-type", "x-influxdb-version", "x-influxdb-build", "request-id")
#: Parameters passed on to InfluxDB with the statements we build.
_PASS_PARAMS = ("db", "rp", "u", "p")
#: Parameters of a proxied request (bound ``params`` are not: the lexer refuses ``$name``).
_PROXY_PARAMS = ("q", "db", "rp", "u", "p", "epoch", "chunked", "chunk_size", "pretty")
_FORM = "application/x-www-form-urlencoded"


class QueryRequestError(MetricsflowError):
    """A ``/query`` request refused before anything reached InfluxDB; ``status`` is the HTTP
    status of the answer (400 malformed, 403 not allowed, 405 wrong method, 413 too large,
    415 unreadable body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class QueryRequest:
    """What the router reads from a ``/query`` request: the method, the parameters (URL and
    form body; ``q`` at most once), the headers passed on to InfluxDB, the presented token."""

    method: str
    params: dict[str, str]
    headers: dict[str, str]
    token: str | None


async def read_query_request(request: Request, max_bytes: int) -> QueryRequest:
    """Read a ``/query`` request: the body (at most ``max_bytes``, else 413), the form
    parameters of a ``POST``, and the URL's. A ``q`` given twice is refused (400): InfluxDB and
    we might not pick the same one."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise QueryRequestError(413, f"query body larger than {max_bytes} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise QueryRequestError(413, f"query body larger than {max_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    items = list(request.query_params.multi_items())
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if request.method == "POST" and body:
        if media_type == _FORM:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise QueryRequestError(400, f"form body is not UTF-8: {exc}") from None
            items = parse_qsl(text, keep_blank_values=True) + items
        elif media_type.startswith("multipart/"):
            raise QueryRequestError(
                415, "multipart bodies are not accepted: send q as a form field or parameter"
            )
    params: dict[str, str] = {}
    for key, value in items:
        if key == "q" and "q" in params:
            raise QueryRequestError(400, 'parameter "q" given more than once')
        params.setdefault(key, value)
    headers = {
        k.lower(): v for k, v in request.headers.items() if k.lower() in _FORWARD_REQUEST_HEADERS
    }
    token = presented_token(request.headers.get("authorization"), params.get("p"))
    return QueryRequest(request.method, params, headers, token)


def _excerpt(text: str, limit: int = 80) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _series_and_merge(analysis: Analysis, results: list[dict[str, Any]]) -> list[Series]:
    parts = [[series_from_json(s) for s in r.get("series", [])] for r in results]
    return merge_parts(analysis, parts)


class InfluxDBQueryError(MetricsflowError):
    """InfluxDB refused or failed one of our statements."""


@dataclass(frozen=True, slots=True)
class Plan:
    analysis: Analysis
    tier: str
    parts: list[QueryPart]
    #: percentile and counter statements (``analysis.kind``): their parts and output tag keys
    function_parts: tuple[FunctionPart, ...] = ()
    group_keys: tuple[str, ...] | None = None
    integer_fields: frozenset[str] = frozenset()


class QueryService:
    """Plans and runs the statements of one ``/query`` request against InfluxDB."""

    def __init__(self, settings: QuerySettings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.tiers = settings.tiers
        self.lag_ns = int(settings.query_tier_lag_s * 1_000_000_000)
        self._client: httpx.AsyncClient | None = None
        self.statements = (
            Counter(
                "gateway_query_statements",
                "InfluxQL statements answered by the query API, by tier.",
                ["tier"],
                registry=registry,
            )
            if registry is not None
            else None
        )

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.settings.influxdb_url.rstrip("/"),
                timeout=self.settings.influxdb_timeout_s,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- InfluxDB calls --
    async def influx_query(
        self, q: str, params: dict[str, str], headers: dict[str, str], epoch: str | None
    ) -> list[dict[str, Any]]:
        """Run ``q`` (one or more statements); the ``results`` list, raising on any error."""
        form = {k: params[k] for k in _PASS_PARAMS if params.get(k)}
        form["q"] = q
        if epoch:
            form["epoch"] = epoch
        auth = {k: v for k, v in headers.items() if k == "authorization"}
        response = await self.client.post("/query", data=form, headers=auth)
        try:
            # a large answer: decoded off the event loop (orjson: one short C call)
            body = await asyncio.to_thread(orjson.loads, response.content)
        except ValueError:
            raise InfluxDBQueryError(
                f"HTTP {response.status_code}: {response.text[:200]}"
            ) from None
        if response.status_code != 200 or "error" in body:
            raise InfluxDBQueryError(f"HTTP {response.status_code}: {body.get('error')}")
        results: list[dict[str, Any]] = body.get("results", [])
        for result in results:
            if "error" in result:
                raise InfluxDBQueryError(str(result["error"]))
            if result.get("partial"):
                # InfluxDB cut the answer (its max-row-limit): not enough to rewrite from.
                raise InfluxDBQueryError("InfluxDB returned a partial result")
        return results

    async def tag_keys(
        self, source: Measurement, params: dict[str, str], headers: dict[str, str]
    ) -> frozenset[str]:
        q = f"SHOW TAG KEYS FROM {render_measurement(source)}"
        results = await self.influx_query(q, params, headers, None)
        keys: set[str] = set()
        for result in results:
            for series in result.get("series", []):
                keys.update(str(row[0]) for row in series.get("values", []))
        return frozenset(keys)

    async def field_types(
        self, sources: list[Measurement], params: dict[str, str], headers: dict[str, str]
    ) -> list[dict[str, str]]:
        """``SHOW FIELD KEYS`` of each source: field key -> type (``float``, ``integer``...)."""
        q = "; ".join(f"SHOW FIELD KEYS FROM {render_measurement(s)}" for s in sources)
        results = await self.influx_query(q, params, headers, None)
        out: list[dict[str, str]] = []
        for result in results:
            types: dict[str, str] = {}
            for series in result.get("series", []):
                for row in series.get("values", []):
                    types[str(row[0])] = str(row[1]) if len(row) > 1 else ""
            out.append(types)
        return out

    # -- planning --
    async def plan(
        self, text: str, params: dict[str, str], headers: dict[str, str], now_ns: int
    ) -> Plan | None:
        """The plan for one statement, or ``None``: send it to the raw tier unchanged."""
        try:
            analysis = analyze(parse_select(text), now_ns, params.get("rp"), RAW_TIER)
            tier = choose_tier(analysis, self.tiers, now_ns, self.lag_ns)
            if tier is None:
                raise UnrewritableQueryError("no tier divides the interval and covers the range")
            try:
                keys = await self.tag_keys(analysis.source, params, headers)
            except (InfluxDBQueryError, httpx.HTTPError) as exc:
                raise UnrewritableQueryError(f"could not read the tag keys: {exc}") from exc
            check_tag_keys(analysis, keys)
            if analysis.kind != KIND_AGGREGATE:
                return await self._function_plan(analysis, tier, keys, params, headers, now_ns)
            parts = build_parts(analysis, tier, now_ns, self.lag_ns)
        except (UnrewritableQueryError, InfluxQLSyntaxError) as exc:
            logger.debug("query to raw tier reason=%s statement=%r", exc, text)
            return None
        except (ValueError, ArithmeticError, RecursionError) as exc:
            # Text our subset parser accepted but cannot plan (an impossible date, a number
            # beyond any time range, an expression too deep): InfluxDB judges it, as any
            # statement we do not rewrite. Never a 500.
            logger.info("query to raw tier reason=%r statement=%.200r", exc, text)
            return None
        logger.debug("query to tier=%s statement=%r parts=%d", tier.name, text, len(parts))
        return Plan(analysis, tier.name, parts)

    async def _function_plan(
        self,
        analysis: Analysis,
        tier: TierSpec,
        tag_keys: frozenset[str],
        params: dict[str, str],
        headers: dict[str, str],
        now_ns: int,
    ) -> Plan:
        """A percentile or counter plan, once the tier holds the fields it reads."""
        src = analysis.source
        tier_source = Measurement(name=src.name, database=src.database, retention_policy=tier.name)
        try:
            tier_types, raw_types = await self.field_types([tier_source, src], params, headers)
        except (InfluxDBQueryError, httpx.HTTPError, ValueError) as exc:
            raise UnrewritableQueryError(f"could not read the field keys: {exc}") from exc
        missing = required_tier_fields(analysis) - set(tier_types)
        if missing:
            raise UnrewritableQueryError(f"tier {tier.name!r} has no field {sorted(missing)}")
        parts = build_function_parts(analysis, tier, now_ns, self.lag_ns, self.tiers)
        if analysis.kind == KIND_PERCENTILE:
            rows = await self.rows_to_read(parts, params, headers)
            limit = self.settings.query_max_percentile_rows
            if rows > limit:
                raise UnrewritableQueryError(
                    f"percentile() would read {rows} rows into the gateway, more than "
                    f"GATEWAY_QUERY_MAX_PERCENTILE_ROWS={limit}"
                )
        elif not await self.increases_complete(parts, params, headers):
            raise UnrewritableQueryError(
                "some tier windows in the range have no increase_ (written before the field "
                "was declared a counter by remote-write metadata)"
            )
        keys = group_keys(analysis, tag_keys)
        logger.debug("query to tier=%s kind=%s parts=%d", tier.name, analysis.kind, len(parts))
        # InfluxDB answers a percentile of an integer field with one of its integers.
        integers = frozenset(f for _, f in analysis.components if raw_types.get(f) == "integer")
        return Plan(analysis, tier.name, [], tuple(parts), keys, integers)

    async def increases_complete(
        self, parts: list[FunctionPart], params: dict[str, str], headers: dict[str, str]
    ) -> bool:
        """Whether every tier window a counter plan sums has its ``increase_`` (a counter that
        remote-write metadata declared has none in the windows written before the switch:
        docs/counters-and-percentiles.md)."""
        texts = [p.count_influxql for p in parts if p.count_influxql]
        if not texts:
            return True
        try:
            results = await self.influx_query("; ".join(texts), params, headers, "ns")
        except (InfluxDBQueryError, httpx.HTTPError) as exc:
            raise UnrewritableQueryError(f"could not count the tier's increases: {exc}") from exc
        for result in results:
            for series in result.get("series", []):
                columns = series.get("columns", [])
                for row in series.get("values", []):
                    found = dict(zip(columns, row, strict=False))
                    for name, with_increase in found.items():
                        if name.endswith("_i") and with_increase != found.get(name[:-2] + "_n"):
                            return False
        return True

    async def rows_to_read(
        self, parts: list[FunctionPart], params: dict[str, str], headers: dict[str, str]
    ) -> int:
        """How many values the parts of a percentile plan would return (InfluxDB counts)."""
        q = "; ".join(p.count_influxql for p in parts)
        try:
            results = await self.influx_query(q, params, headers, "ns")
        except (InfluxDBQueryError, httpx.HTTPError) as exc:
            raise UnrewritableQueryError(f"could not count the rows to read: {exc}") from exc
        total = 0
        for result in results:
            for series in result.get("series", []):
                for row in series.get("values", []):
                    total += sum(int(v) for v in row[1:] if isinstance(v, int | float))
        return total

    async def run_plan(
        self, plan: Plan, params: dict[str, str], headers: dict[str, str]
    ) -> list[Series]:
        texts = [p.influxql for p in plan.function_parts] or [p.influxql for p in plan.parts]
        results = await self.influx_query("; ".join(texts), params, headers, "ns")
        if not plan.function_parts:
            # tens of thousands of rows are merged in Python: off the event loop
            return await asyncio.to_thread(_series_and_merge, plan.analysis, results)
        parts = [[series_from_json(s) for s in r.get("series", [])] for r in results]
        # Decoding and merging sketches is CPU work: off the event loop.
        if plan.analysis.kind == KIND_PERCENTILE:
            return await asyncio.to_thread(
                merge_percentile_parts,
                plan.analysis,
                plan.function_parts,
                parts,
                plan.group_keys,
                plan.integer_fields,
            )
        return await asyncio.to_thread(
            merge_counter_parts, plan.analysis, plan.function_parts, parts, plan.group_keys
        )

    def count(self, tier: str) -> None:
        if self.statements is not None:
            self.statements.labels(tier=tier).inc()

    # -- request handling --
    async def proxy(self, request: QueryRequest) -> Response:
        """Send the request's statements to InfluxDB as they are (a POST built from the
        parameters we read and judged, never the client's raw request)."""
        form = {k: v for k, v in request.params.items() if k in _PROXY_PARAMS}
        try:
            upstream = await self.client.post("/query", data=form, headers=request.headers)
        except httpx.HTTPError as exc:
            return JSONResponse({"error": f"influxdb unreachable: {exc}"}, status_code=502)
        out_headers = {
            k: v for k, v in upstream.headers.items() if k.lower() in _FORWARD_RESPONSE_HEADERS
        }
        return Response(upstream.content, status_code=upstream.status_code, headers=out_headers)

    async def handle(self, http_request: Request) -> Response:
        try:
            request = await read_query_request(http_request, self.settings.query_max_bytes)
            statements = self.authorize(request)
        except QueryRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        params = request.params
        headers = request.headers
        plans: list[Plan | None] = []
        if self.settings.query_rewrite and params.get("chunked", "") not in ("true", "1"):
            now_ns = time.time_ns()
            plans = [await self.plan(s, params, headers, now_ns) for s in statements]
        if not any(plans):
            for _ in statements:
                self.count(RAW_TIER)
            response = await self.proxy(request)
            response.headers[TIER_HEADER] = ",".join([RAW_TIER] * max(1, len(statements)))
            return response
        epoch = params.get("epoch") or None
        results: list[dict[str, Any]] = []
        tiers: list[str] = []
        for i, (text, plan) in enumerate(zip(statements, plans, strict=True)):
            result: dict[str, Any] | None = None
            if plan is not None:
                try:
                    series = await self.run_plan(plan, params, headers)
                    result = await asyncio.to_thread(statement_result, i, series, epoch)
                    tiers.append(plan.tier)
                except (InfluxDBQueryError, httpx.HTTPError, SketchDecodeError) as exc:
                    logger.warning("tier query failed, answering from raw error=%s", exc)
                except (ValueError, TypeError, ArithmeticError) as exc:
                    # An answer of a shape we did not expect (a field of another type in some
                    # shard, ...): InfluxDB answers the statement itself. Never a 500.
                    logger.warning("tier answer not mergeable, answering from raw error=%r", exc)
            if result is None:
                result = await self.raw_statement(i, text, params, headers, epoch)
                tiers.append(RAW_TIER)
            self.count(tiers[-1])
            results.append(result)
        content = await asyncio.to_thread(orjson.dumps, {"results": results})  # off the loop
        return Response(
            content, media_type="application/json", headers={TIER_HEADER: ",".join(tiers)}
        )

    def authorize(self, request: QueryRequest) -> list[str]:
        """The statements of the request, once each is allowed to this client (see
        :mod:`gateway.query.access`); :class:`QueryRequestError` otherwise."""
        q = request.params.get("q", "").strip()
        if not q:
            raise QueryRequestError(400, 'missing required parameter "q"')
        try:
            judged = split_and_classify(q)
        except InfluxQLSyntaxError as exc:
            raise QueryRequestError(400, f"error parsing query: {exc}") from None
        writes = [(i, s) for i, (s, access) in enumerate(judged) if access is StatementAccess.WRITE]
        if writes:
            i, text = writes[0]
            what = f"statement {i + 1} ({_excerpt(text)}) changes InfluxDB"
            admin_tokens = self.settings.query_admin_tokens
            if not admin_tokens:
                raise QueryRequestError(
                    403,
                    f"{what}; such statements are disabled here (set GATEWAY_QUERY_ADMIN_TOKENS "
                    "to allow them to admins)",
                )
            if not token_in(request.token, admin_tokens):
                raise QueryRequestError(403, f"{what}: it needs an admin token")
            if request.method != "POST":
                raise QueryRequestError(405, f"{what}: send it with POST, not {request.method}")
            logger.warning("admin statement via /query statement=%r", _excerpt(text))
        return [s for s, _ in judged]

    async def raw_statement(
        self,
        statement_id: int,
        text: str,
        params: dict[str, str],
        headers: dict[str, str],
        epoch: str | None,
    ) -> dict[str, Any]:
        try:
            results = await self.influx_query(text, params, headers, epoch)
        except (InfluxDBQueryError, httpx.HTTPError) as exc:
            return {"statement_id": statement_id, "error": str(exc)}
        result = dict(results[0]) if results else {}
        result["statement_id"] = statement_id
        return result


def create_query_router(
    settings: QuerySettings | None = None, registry: CollectorRegistry | None = None
) -> APIRouter:
    """The ``/query`` routes; pass the app's Prometheus ``registry`` to count statements per
    tier (``gateway_query_statements_total{tier}``)."""
    service = QueryService(settings or QuerySettings(), registry)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # Build the InfluxDB client (and its SSL context, ~0.1-0.4 s of CPU) at startup, not
        # on the event loop of the first query while other requests wait.
        _ = service.client
        try:
            yield
        finally:
            await service.aclose()

    router = APIRouter(lifespan=lifespan)

    @router.api_route("/query", methods=["GET", "POST"], include_in_schema=False)
    async def query(request: Request) -> Response:
        return await service.handle(request)

    return router
