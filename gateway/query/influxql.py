"""A small InfluxQL parser and renderer for the ``SELECT`` subset the query API rewrites.

It understands what Grafana's InfluxDB data source sends (after Grafana expanded its template
variables): ``SELECT <calls and expressions> [AS alias] FROM [db.][rp.]measurement|/regex/
[WHERE ...] [GROUP BY time(<d>[, <offset>]), tag, *, /regex/] [fill(...)] [ORDER BY time]
[LIMIT/OFFSET/SLIMIT/SOFFSET n] [tz('...')]``, with quoted identifiers (``"1m"``), string
literals, regexes (``=~ /^a$/``), durations (``6h``, ``1700000000000ms``, ``1h30m``), ``now()``
and type hints (``"host"::tag``). Anything else raises :class:`InfluxQLSyntaxError` (bad text)
or :class:`UnrewritableQueryError` (valid InfluxQL outside the subset: ``SHOW``, subqueries,
``INTO``); the router then sends the statement to InfluxDB unchanged.

:func:`render` turns an AST back into canonical InfluxQL; ``parse_select(render(s)) == s``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.query.base import InfluxQLSyntaxError, UnrewritableQueryError
from gateway.query.syntax import (  # noqa: F401 - re-exported
    BARE_IDENT,
    KEYWORDS,
    NS_PER_UNIT,
    BinaryExpr,
    BooleanLit,
    Call,
    Dimension,
    DurationLit,
    Expr,
    Field,
    Fill,
    FillKind,
    IntegerLit,
    Measurement,
    NumberLit,
    ParenExpr,
    RegexDimension,
    RegexLit,
    SelectStatement,
    StringLit,
    TagDimension,
    TimeDimension,
    VarRef,
    Wildcard,
    WildcardDimension,
    quote_ident,
    quote_string,
    render,
    render_dimension,
    render_duration,
    render_expr,
    render_fill,
    render_measurement,
    render_regex,
)

# --------------------------------------------------------------------------------------------
# Lexer (pull-based: the parser says whether a '/' starts a regex or is a division)
# --------------------------------------------------------------------------------------------

_UNITS_LONGEST_FIRST = ("ns", "ms", "u", "µ", "s", "m", "h", "d", "w")
_OPERATORS = ("=~", "!~", "!=", "<>", "<=", ">=", "::", "=", "<", ">", "+", "-", "*", "/", "%")

TokenKind = Literal[
    "IDENT",
    "QIDENT",
    "STRING",
    "INTEGER",
    "NUMBER",
    "DURATION",
    "REGEX",
    "OP",
    "LPAREN",
    "RPAREN",
    "COMMA",
    "DOT",
    "SEMI",
    "EOF",
]


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str
    pos: int
    value: object = None

    def is_keyword(self, word: str) -> bool:
        return self.kind == "IDENT" and self.text.upper() == word


def _read_quoted(text: str, pos: int, quote: str) -> tuple[str, int]:
    """Read a ``'...'`` or ``"..."`` starting at ``pos`` (the quote); return (value, end)."""
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            nxt = text[i + 1]
            if nxt == "n":
                out.append("\n")
            elif nxt in ("\\", "'", '"'):
                out.append(nxt)
            else:
                raise InfluxQLSyntaxError(f"bad escape \\{nxt}", i)
            i += 2
            continue
        if ch == quote:
            return "".join(out), i + 1
        if ch == "\n":
            break
        out.append(ch)
        i += 1
    raise InfluxQLSyntaxError("unterminated quoted text", pos)


def _is_digit(ch: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts '²' and other digits ``int`` refuses."""
    return "0" <= ch <= "9"


def _read_regex(text: str, pos: int) -> tuple[str, int]:
    out: list[str] = []
    i = pos + 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text) and text[i + 1] == "/":
            out.append("/")
            i += 2
            continue
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i : i + 2])
            i += 2
            continue
        if ch == "/":
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise InfluxQLSyntaxError("unterminated regex", pos)


class Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def _skip_space(self, comments: bool = True) -> None:
        text = self.text
        while self.pos < len(text):
            if text[self.pos].isspace():
                self.pos += 1
            elif not comments:
                break
            elif text.startswith("--", self.pos):
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end + 1
            elif text.startswith("/*", self.pos):  # a block comment, as InfluxDB's scanner
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    raise InfluxQLSyntaxError("unterminated comment", self.pos)
                self.pos = end + 2
            else:
                break

    def scan(self, regex: bool = False) -> Token:
        """The next token; a leading ``/`` is a regex when ``regex`` is true (then only white
        space is skipped before it, as InfluxDB's ``parseRegex`` does: ``=~ /*/`` is a regex,
        not a comment)."""
        self._skip_space(comments=not regex)
        text, start = self.text, self.pos
        if start >= len(text):
            return Token("EOF", "", start)
        ch = text[start]
        if regex and ch == "/":
            pattern, self.pos = _read_regex(text, start)
            return Token("REGEX", text[start : self.pos], start, pattern)
        if ch == '"':
            value, self.pos = _read_quoted(text, start, '"')
            return Token("QIDENT", text[start : self.pos], start, value)
        if ch == "'":
            value, self.pos = _read_quoted(text, start, "'")
            return Token("STRING", text[start : self.pos], start, value)
        if _is_digit(ch) or (ch == "." and start + 1 < len(text) and _is_digit(text[start + 1])):
            return self._scan_number(start)
        match = BARE_IDENT.match(text, start)
        if match:
            self.pos = match.end()
            return Token("IDENT", match.group(), start, match.group())
        simple: dict[str, TokenKind] = {
            "(": "LPAREN",
            ")": "RPAREN",
            ",": "COMMA",
            ".": "DOT",
            ";": "SEMI",
        }
        if ch in simple:
            self.pos = start + 1
            return Token(simple[ch], ch, start)
        for op in _OPERATORS:
            if text.startswith(op, start):
                self.pos = start + len(op)
                return Token("OP", op, start, op)
        if ch == "$":
            raise InfluxQLSyntaxError("unexpanded template variable", start)
        raise InfluxQLSyntaxError(f"unexpected character {ch!r}", start)

    def _scan_number(self, start: int) -> Token:
        text = self.text
        i = start
        while i < len(text) and _is_digit(text[i]):
            i += 1
        if i < len(text) and text[i] == ".":
            i += 1
            while i < len(text) and _is_digit(text[i]):
                i += 1
            self.pos = i
            return Token("NUMBER", text[start:i], start, float(text[start:i]))
        # Integer, or a duration such as 10s, 1700000000000ms, 1h30m.
        total = 0
        pos, digits_end, saw_unit = start, i, False
        while True:
            unit = next((u for u in _UNITS_LONGEST_FIRST if text.startswith(u, digits_end)), None)
            after = digits_end + len(unit or "")
            if unit is None or (
                after < len(text) and (text[after].isalpha() or text[after] == "_")
            ):
                break
            total += int(text[pos:digits_end]) * NS_PER_UNIT[unit]
            saw_unit, pos = True, after
            k = after
            while k < len(text) and _is_digit(text[k]):
                k += 1
            if k == after:
                break
            digits_end = k
        if saw_unit:
            if pos != digits_end and digits_end > pos:  # trailing digits without a unit: "1h30"
                raise InfluxQLSyntaxError("duration without unit", pos)
            self.pos = pos
            return Token("DURATION", text[start:pos], start, total)
        if i < len(text) and (text[i].isalpha() or text[i] == "_"):
            raise InfluxQLSyntaxError("invalid number", start)
        self.pos = i
        return Token("INTEGER", text[start:i], start, int(text[start:i]))


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

_PRECEDENCE: dict[str, int] = {
    "OR": 1,
    "AND": 2,
    "=": 4,
    "!=": 4,
    "<>": 4,
    "<": 4,
    "<=": 4,
    ">": 4,
    ">=": 4,
    "=~": 4,
    "!~": 4,
    "+": 5,
    "-": 5,
    "*": 6,
    "/": 6,
    "%": 6,
}
_FILL_WORDS = {"NULL": "null", "NONE": "none", "PREVIOUS": "previous", "LINEAR": "linear"}


#: Deepest nesting of parentheses and calls the parser follows (InfluxDB itself has no such
#: limit; deeper text is not rewritten but proxied, and InfluxDB judges it).
MAX_EXPRESSION_DEPTH = 64


class Parser:
    def __init__(self, text: str) -> None:
        self.lexer = Lexer(text)
        self._peeked: tuple[Token, bool] | None = None
        self._depth = 0

    # -- token plumbing --
    def peek(self, regex: bool = False) -> Token:
        if self._peeked is not None and self._peeked[1] == regex:
            return self._peeked[0]
        if self._peeked is not None:
            self.lexer.pos = self._peeked[0].pos
        token = self.lexer.scan(regex)
        self._peeked = (token, regex)
        return token

    def next(self, regex: bool = False) -> Token:
        token = self.peek(regex)
        self._peeked = None
        return token

    def expect_keyword(self, word: str) -> Token:
        token = self.next()
        if not token.is_keyword(word):
            raise InfluxQLSyntaxError(f"expected {word}, found {token.text!r}", token.pos)
        return token

    def expect(self, kind: TokenKind) -> Token:
        token = self.next()
        if token.kind != kind:
            raise InfluxQLSyntaxError(f"expected {kind}, found {token.text!r}", token.pos)
        return token

    def accept_keyword(self, word: str) -> bool:
        if self.peek().is_keyword(word):
            self.next()
            return True
        return False

    def ident(self) -> str:
        token = self.next()
        if token.kind == "QIDENT":
            return str(token.value)
        if token.kind == "IDENT" and token.text.upper() not in KEYWORDS:
            return token.text
        raise InfluxQLSyntaxError(f"expected identifier, found {token.text!r}", token.pos)

    def integer(self) -> int:
        return int(str(self.expect("INTEGER").value))

    # -- statement --
    def select_statement(self) -> SelectStatement:
        first = self.peek()
        if first.kind == "IDENT" and first.text.upper() != "SELECT":
            raise UnrewritableQueryError(f"{first.text.upper()} statements are not rewritten")
        self.expect_keyword("SELECT")
        fields = [self.field()]
        while self.peek().kind == "COMMA":
            self.next()
            fields.append(self.field())
        if self.peek().is_keyword("INTO"):
            raise UnrewritableQueryError("SELECT ... INTO is not rewritten")
        self.expect_keyword("FROM")
        sources = [self.source()]
        while self.peek().kind == "COMMA":
            self.next()
            sources.append(self.source())
        condition = self.expr() if self.accept_keyword("WHERE") else None
        dimensions: list[Dimension] = []
        if self.accept_keyword("GROUP"):
            self.expect_keyword("BY")
            dimensions.append(self.dimension())
            while self.peek().kind == "COMMA":
                self.next()
                dimensions.append(self.dimension())
        fill = self.fill() if self.peek().is_keyword("FILL") else None
        order_desc: bool | None = None
        if self.accept_keyword("ORDER"):
            self.expect_keyword("BY")
            if self.ident().lower() != "time":
                raise InfluxQLSyntaxError("only ORDER BY time is supported", self.lexer.pos)
            order_desc = self.accept_keyword("DESC")
            if not order_desc:
                self.accept_keyword("ASC")
        limits: dict[str, int | None] = dict.fromkeys(("LIMIT", "OFFSET", "SLIMIT", "SOFFSET"))
        for word in limits:
            if self.accept_keyword(word):
                limits[word] = self.integer()
        tz: str | None = None
        if self.peek().is_keyword("TZ"):
            self.next()
            self.expect("LPAREN")
            tz = str(self.expect("STRING").value)
            self.expect("RPAREN")
        token = self.next()
        if token.kind not in ("EOF", "SEMI"):
            raise InfluxQLSyntaxError(f"unexpected {token.text!r}", token.pos)
        if token.kind == "SEMI" and self.next().kind != "EOF":
            raise InfluxQLSyntaxError("several statements: split them first", token.pos)
        return SelectStatement(
            fields=tuple(fields),
            sources=tuple(sources),
            condition=condition,
            dimensions=tuple(dimensions),
            fill=fill,
            order_desc=order_desc,
            limit=limits["LIMIT"],
            offset=limits["OFFSET"],
            slimit=limits["SLIMIT"],
            soffset=limits["SOFFSET"],
            tz=tz,
        )

    def field(self) -> Field:
        expr = self.expr()
        alias = self.ident() if self.accept_keyword("AS") else None
        return Field(expr, alias)

    def source(self) -> Measurement:
        if self.peek(regex=True).kind == "LPAREN":
            raise UnrewritableQueryError("subqueries are not rewritten")
        segments: list[str | None] = []
        while True:
            token = self.peek(regex=True)
            if token.kind == "REGEX":
                self.next(regex=True)
                if len(segments) > 2:
                    raise InfluxQLSyntaxError("too many name segments", token.pos)
                rp, db = _qualifiers(segments)
                return Measurement(regex=str(token.value), database=db, retention_policy=rp)
            if token.kind == "DOT":  # empty segment, as in db..measurement
                self.next(regex=True)
                segments.append(None)
                continue
            segments.append(self.ident())
            if self.peek().kind != "DOT":
                break
            self.next()
        if len(segments) > 3:
            raise InfluxQLSyntaxError("too many name segments", self.lexer.pos)
        name = segments[-1]
        rp, db = _qualifiers(segments[:-1])
        return Measurement(name=name, database=db, retention_policy=rp)

    def dimension(self) -> Dimension:
        token = self.peek(regex=True)
        if token.kind == "REGEX":
            self.next(regex=True)
            return RegexDimension(str(token.value))
        if token.kind == "OP" and token.text == "*":
            self.next(regex=True)
            return WildcardDimension()
        if token.kind == "IDENT" and token.text.lower() == "time":
            self.next()
            if self.peek().kind == "LPAREN":
                self.next()
                interval = self.expr()
                offset = None
                if self.peek().kind == "COMMA":
                    self.next()
                    offset = self.expr()
                self.expect("RPAREN")
                return TimeDimension(interval, offset)
            return TagDimension("time")
        return TagDimension(self.ident())

    def fill(self) -> Fill:
        self.expect_keyword("FILL")
        self.expect("LPAREN")
        token = self.next()
        result: Fill
        if token.kind == "IDENT" and token.text.upper() in _FILL_WORDS:
            kind: FillKind = _FILL_WORDS[token.text.upper()]  # type: ignore[assignment]
            result = Fill(kind)
        else:
            sign = 1
            if token.kind == "OP" and token.text == "-":
                sign = -1
                token = self.next()
            if token.kind == "INTEGER":
                result = Fill("value", sign * int(str(token.value)))
            elif token.kind == "NUMBER":
                result = Fill("value", sign * float(str(token.value)))
            else:
                raise InfluxQLSyntaxError(f"bad fill option {token.text!r}", token.pos)
        self.expect("RPAREN")
        return result

    # -- expressions --
    def expr(self, min_prec: int = 1) -> Expr:
        self._depth += 1
        try:
            if self._depth > MAX_EXPRESSION_DEPTH:
                raise InfluxQLSyntaxError(
                    f"expression nested deeper than {MAX_EXPRESSION_DEPTH}", self.lexer.pos
                )
            return self._binary(min_prec)
        finally:
            self._depth -= 1

    def _binary(self, min_prec: int) -> Expr:
        lhs = self.unary()
        while True:
            token = self.peek()
            op = token.text.upper() if token.kind == "IDENT" else token.text
            if token.kind not in ("OP", "IDENT") or op not in _PRECEDENCE:
                return lhs
            prec = _PRECEDENCE[op]
            if prec < min_prec:
                return lhs
            self.next()
            rhs = self.expr(prec + 1)
            lhs = BinaryExpr(op, lhs, rhs)

    def unary(self) -> Expr:
        token = self.peek(regex=True)
        if token.kind == "OP" and token.text in ("-", "+"):
            self.next(regex=True)
            operand = self.next()
            sign = -1 if token.text == "-" else 1
            if operand.kind == "INTEGER":
                return IntegerLit(sign * int(str(operand.value)))
            if operand.kind == "NUMBER":
                return NumberLit(sign * float(str(operand.value)))
            if operand.kind == "DURATION":
                return DurationLit(sign * int(str(operand.value)))
            raise InfluxQLSyntaxError("unary sign on a non-literal", operand.pos)
        return self.primary()

    def primary(self) -> Expr:
        token = self.next(regex=True)
        kind = token.kind
        if kind == "LPAREN":
            if self.peek().is_keyword("SELECT"):
                raise UnrewritableQueryError("subqueries are not rewritten")
            inner = self.expr()
            self.expect("RPAREN")
            return ParenExpr(inner)
        if kind == "STRING":
            return StringLit(str(token.value))
        if kind == "INTEGER":
            return IntegerLit(int(str(token.value)))
        if kind == "NUMBER":
            return NumberLit(float(str(token.value)))
        if kind == "DURATION":
            return DurationLit(int(str(token.value)))
        if kind == "REGEX":
            return RegexLit(str(token.value))
        if kind == "OP" and token.text == "*":
            return Wildcard()
        if kind == "IDENT" and token.text.upper() in ("TRUE", "FALSE"):
            return BooleanLit(token.text.upper() == "TRUE")
        if kind in ("IDENT", "QIDENT"):
            if kind == "IDENT" and token.text.upper() in KEYWORDS:
                raise InfluxQLSyntaxError(f"unexpected keyword {token.text!r}", token.pos)
            name = str(token.value)
            if kind == "IDENT" and self.peek().kind == "LPAREN":
                self.next()
                args: list[Expr] = []
                if self.peek(regex=True).kind != "RPAREN":
                    args.append(self.expr())
                    while self.peek().kind == "COMMA":
                        self.next()
                        args.append(self.expr())
                self.expect("RPAREN")
                return Call(name.lower(), tuple(args))
            if self.peek().kind == "OP" and self.peek().text == "::":
                self.next()
                hint = self.expect("IDENT").text.lower()
                return VarRef(name, hint)
            return VarRef(name)
        raise InfluxQLSyntaxError(f"unexpected {token.text or 'end of query'!r}", token.pos)


def _qualifiers(prefix: list[str | None]) -> tuple[str | None, str | None]:
    """(retention policy, database) from the segments before the measurement."""
    if len(prefix) == 0:
        return None, None
    if len(prefix) == 1:
        return prefix[0], None
    return prefix[1], prefix[0]


def parse_select(text: str) -> SelectStatement:
    """Parse one statement of the supported ``SELECT`` subset."""
    return Parser(text).select_statement()


def split_statements(text: str) -> list[str]:
    """Split a ``q`` on the ``;`` that separate statements (not those inside quotes or regexes);
    empty statements are dropped."""
    lexer = Lexer(text)
    parts: list[str] = []
    start = 0
    previous: Token | None = None
    while True:
        regex = (
            previous is None
            or previous.kind in ("OP", "LPAREN", "COMMA")
            or (previous.kind == "IDENT" and previous.text.upper() in ("FROM", "BY"))
        )
        try:
            token = lexer.scan(regex=regex)
        except InfluxQLSyntaxError:
            # Not ours to judge: InfluxDB reports the error for the whole text.
            return [text.strip()] if text.strip() else []
        if token.kind in ("SEMI", "EOF"):
            chunk = text[start : token.pos].strip()
            if chunk:
                parts.append(chunk)
            if token.kind == "EOF":
                return parts
            start = token.pos + 1
        previous = token
