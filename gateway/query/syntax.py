"""The InfluxQL syntax tree of the ``SELECT`` subset, and its canonical rendering.

:mod:`gateway.query.influxql` parses text into these nodes; :func:`render` turns them back into
InfluxQL, so that ``parse_select(render(stmt)) == stmt``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

NS_PER_UNIT: dict[str, int] = {
    "ns": 1,
    "u": 1_000,
    "µ": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
    "w": 604_800_000_000_000,
}
BARE_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
KEYWORDS: frozenset[str] = frozenset(
    """
    ALL ALTER ANALYZE ANY AS ASC BEGIN BY CARDINALITY CREATE CONTINUOUS DATABASE DATABASES
    DEFAULT DELETE DESC DESTINATIONS DIAGNOSTICS DISTINCT DROP DURATION END EVERY EXACT
    EXPLAIN FIELD FOR FROM GRANT GRANTS GROUP GROUPS IN INF INSERT INTO KEY KEYS KILL LIMIT
    MEASUREMENT MEASUREMENTS NAME OFFSET ON ORDER PASSWORD POLICY POLICIES PRIVILEGES
    QUERIES QUERY READ REPLICATION RESAMPLE RETENTION REVOKE SELECT SERIES SET SHARD SHARDS
    SLIMIT SOFFSET STATS SUBSCRIPTION SUBSCRIPTIONS TAG TO USER USERS VALUES WHERE WITH
    WRITE AND OR TRUE FALSE
    """.split()  # noqa: SIM905
)

# --------------------------------------------------------------------------------------------
# AST
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VarRef:
    name: str
    type_hint: str | None = None  # "tag" | "field" | ...


@dataclass(frozen=True, slots=True)
class StringLit:
    value: str


@dataclass(frozen=True, slots=True)
class IntegerLit:
    value: int


@dataclass(frozen=True, slots=True)
class NumberLit:
    value: float


@dataclass(frozen=True, slots=True)
class DurationLit:
    ns: int


@dataclass(frozen=True, slots=True)
class RegexLit:
    pattern: str


@dataclass(frozen=True, slots=True)
class BooleanLit:
    value: bool


@dataclass(frozen=True, slots=True)
class Wildcard:
    pass


@dataclass(frozen=True, slots=True)
class Call:
    name: str  # lower-case
    args: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class BinaryExpr:
    op: str
    lhs: Expr
    rhs: Expr


@dataclass(frozen=True, slots=True)
class ParenExpr:
    expr: Expr


Expr = (
    VarRef
    | StringLit
    | IntegerLit
    | NumberLit
    | DurationLit
    | RegexLit
    | BooleanLit
    | Wildcard
    | Call
    | BinaryExpr
    | ParenExpr
)


@dataclass(frozen=True, slots=True)
class Field:
    expr: Expr
    alias: str | None = None


@dataclass(frozen=True, slots=True)
class Measurement:
    name: str | None = None
    regex: str | None = None
    database: str | None = None
    retention_policy: str | None = None


@dataclass(frozen=True, slots=True)
class TimeDimension:
    interval: Expr
    offset: Expr | None = None


@dataclass(frozen=True, slots=True)
class TagDimension:
    name: str


@dataclass(frozen=True, slots=True)
class WildcardDimension:
    pass


@dataclass(frozen=True, slots=True)
class RegexDimension:
    pattern: str


Dimension = TimeDimension | TagDimension | WildcardDimension | RegexDimension

FillKind = Literal["null", "none", "previous", "linear", "value"]


@dataclass(frozen=True, slots=True)
class Fill:
    kind: FillKind
    value: int | float | None = None


@dataclass(frozen=True, slots=True)
class SelectStatement:
    fields: tuple[Field, ...]
    sources: tuple[Measurement, ...]
    condition: Expr | None = None
    dimensions: tuple[Dimension, ...] = ()
    fill: Fill | None = None
    order_desc: bool | None = None
    limit: int | None = None
    offset: int | None = None
    slimit: int | None = None
    soffset: int | None = None
    tz: str | None = None


# --------------------------------------------------------------------------------------------
# Renderer
# --------------------------------------------------------------------------------------------


def quote_ident(name: str) -> str:
    if BARE_IDENT.fullmatch(name) and name.upper() not in KEYWORDS:
        return name
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


def regex_is_expressible(pattern: str) -> bool:
    """Whether InfluxQL's ``/.../`` syntax can carry ``pattern``: not when it ends in an
    unpaired backslash, which would escape the closing slash (and is no valid regex anyway)."""
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    return trailing % 2 == 0


def render_regex(pattern: str) -> str:
    if not regex_is_expressible(pattern):
        raise ValueError(f"regex {pattern!r} ends in an unpaired backslash: not expressible")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        out.append("\\/" if pattern[i] == "/" else pattern[i])
        i += 1
    return "/" + "".join(out) + "/"


def render_duration(ns: int) -> str:
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    magnitude = abs(ns)
    for unit in ("w", "d", "h", "m", "s", "ms", "u", "ns"):
        if magnitude % NS_PER_UNIT[unit] == 0:
            return f"{sign}{magnitude // NS_PER_UNIT[unit]}{unit}"
    raise AssertionError("unreachable")


def _render_number(value: float) -> str:
    """Shortest round-tripping decimal, positional (InfluxQL has no exponent notation)."""
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"number {value!r} has no InfluxQL literal")
    text = format(Decimal(repr(float(value))), "f")
    return text if "." in text else text + ".0"


def render_expr(expr: Expr) -> str:
    match expr:
        case VarRef(name, hint):
            return quote_ident(name) + (f"::{hint}" if hint else "")
        case StringLit(value):
            return quote_string(value)
        case IntegerLit(value):
            return str(value)
        case NumberLit(value):
            return _render_number(value)
        case DurationLit(ns):
            return render_duration(ns)
        case RegexLit(pattern):
            return render_regex(pattern)
        case BooleanLit(value):
            return "true" if value else "false"
        case Wildcard():
            return "*"
        case Call(name, args):
            return f"{name}({', '.join(render_expr(a) for a in args)})"
        case BinaryExpr(op, lhs, rhs):
            return f"{render_expr(lhs)} {op} {render_expr(rhs)}"
        case ParenExpr(inner):
            return f"({render_expr(inner)})"
    raise TypeError(f"not an expression: {expr!r}")


def render_measurement(m: Measurement) -> str:
    last = render_regex(m.regex) if m.regex is not None else quote_ident(m.name or "")
    if m.database is not None:
        rp = quote_ident(m.retention_policy) if m.retention_policy is not None else ""
        return f"{quote_ident(m.database)}.{rp}.{last}"
    if m.retention_policy is not None:
        return f"{quote_ident(m.retention_policy)}.{last}"
    return last


def render_dimension(d: Dimension) -> str:
    match d:
        case TimeDimension(interval, offset):
            inner = render_expr(interval)
            return (
                f"time({inner}, {render_expr(offset)})" if offset is not None else f"time({inner})"
            )
        case TagDimension(name):
            return quote_ident(name)
        case WildcardDimension():
            return "*"
        case RegexDimension(pattern):
            return render_regex(pattern)
    raise TypeError(f"not a dimension: {d!r}")


def render_fill(fill: Fill) -> str:
    if fill.kind == "value":
        value = fill.value
        return f"fill({value if isinstance(value, int) else _render_number(float(value or 0))})"
    return f"fill({fill.kind})"


def render(stmt: SelectStatement) -> str:
    """Canonical InfluxQL text of ``stmt``."""
    fields = ", ".join(
        render_expr(f.expr) + (f" AS {quote_ident(f.alias)}" if f.alias is not None else "")
        for f in stmt.fields
    )
    parts = [f"SELECT {fields} FROM {', '.join(render_measurement(s) for s in stmt.sources)}"]
    if stmt.condition is not None:
        parts.append(f"WHERE {render_expr(stmt.condition)}")
    if stmt.dimensions:
        parts.append("GROUP BY " + ", ".join(render_dimension(d) for d in stmt.dimensions))
    if stmt.fill is not None:
        parts.append(render_fill(stmt.fill))
    if stmt.order_desc is not None:
        parts.append("ORDER BY time DESC" if stmt.order_desc else "ORDER BY time ASC")
    for word, value in (
        ("LIMIT", stmt.limit),
        ("OFFSET", stmt.offset),
        ("SLIMIT", stmt.slimit),
        ("SOFFSET", stmt.soffset),
    ):
        if value is not None:
            parts.append(f"{word} {value}")
    if stmt.tz is not None:
        parts.append(f"tz({quote_string(stmt.tz)})")
    return " ".join(parts)
