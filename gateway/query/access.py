"""Who may run which InfluxQL statement through ``/query``, and safe evaluation of its regexes.

The query API sits in front of InfluxDB, which (in the default setup) has no authentication of
its own; everything the gateway forwards runs with full rights. So the gateway decides:

* **read statements** (``SELECT`` without ``INTO``, ``SHOW``, ``EXPLAIN [ANALYZE] SELECT``) pass
  for every client the gateway's own authentication lets in;
* **every other statement** (``CREATE``, ``DROP``, ``DELETE``, ``ALTER``, ``GRANT``,
  ``REVOKE``, ``KILL``, ``SET PASSWORD``, ``SELECT ... INTO``, anything unknown) changes
  InfluxDB: it needs an admin token (``GATEWAY_QUERY_ADMIN_TOKENS``) and a ``POST``, as
  InfluxDB itself requires.

Statements are classified from their tokens (:class:`gateway.query.influxql.Lexer`, which
splits statements, strings, quoted identifiers, regexes and comments as InfluxDB does). A text
the lexer cannot read is refused (400) rather than passed on unjudged, and the router forwards
exactly the text it classified (never the client's raw request), so what InfluxDB runs is what
was judged here.

Regexes in queries are evaluated with RE2 (``google-re2``): linear time in the input,
whatever the pattern, and the syntax of Go's ``regexp`` that InfluxDB uses.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hmac
from collections.abc import Sequence

import re2

from gateway.query.base import InfluxQLSyntaxError
from gateway.query.influxql import Lexer, Token, split_statements

#: Most statements in one ``q``.
MAX_STATEMENTS = 100

_READ_FIRST_WORDS = frozenset({"SELECT", "SHOW", "EXPLAIN"})


class StatementAccess(enum.Enum):
    """What a statement does to InfluxDB."""

    READ = "read"
    WRITE = "write"


def statement_tokens(text: str) -> list[Token]:
    """The tokens of ``text`` (one or more statements); :class:`InfluxQLSyntaxError` when the
    text cannot be tokenized. A ``/`` starts a regex where an operand is expected, as in
    InfluxDB's parser."""
    lexer = Lexer(text)
    tokens: list[Token] = []
    previous: Token | None = None
    while True:
        regex = (
            previous is None
            or previous.kind in ("OP", "LPAREN", "COMMA", "SEMI")
            or (previous.kind == "IDENT" and previous.text.upper() in ("FROM", "BY"))
        )
        token = lexer.scan(regex=regex)
        if token.kind == "EOF":
            return tokens
        tokens.append(token)
        previous = token


def classify(statement: str) -> StatementAccess:
    """READ for ``SELECT`` without ``INTO``, ``SHOW`` and ``EXPLAIN``; WRITE for the rest."""
    tokens = statement_tokens(statement)
    if not tokens or tokens[0].kind != "IDENT":
        return StatementAccess.WRITE
    if tokens[0].text.upper() not in _READ_FIRST_WORDS:
        return StatementAccess.WRITE
    if any(t.kind == "SEMI" for t in tokens):
        return StatementAccess.WRITE  # several statements: classify them one by one
    if any(t.kind == "IDENT" and t.text.upper() == "INTO" for t in tokens):
        return StatementAccess.WRITE
    return StatementAccess.READ


def split_and_classify(q: str) -> list[tuple[str, StatementAccess]]:
    """The statements of ``q`` with what each does; :class:`InfluxQLSyntaxError` when ``q``
    cannot be tokenized or has more than :data:`MAX_STATEMENTS` statements."""
    statement_tokens(q)  # raises on text the lexer cannot read: never judged, never forwarded
    statements = split_statements(q)
    if len(statements) > MAX_STATEMENTS:
        raise InfluxQLSyntaxError(f"more than {MAX_STATEMENTS} statements", 0)
    return [(s, classify(s)) for s in statements]


def presented_token(authorization: str | None, password: str | None) -> str | None:
    """The token a request presents: ``Authorization: Token|Bearer <t>``, the password of
    ``Authorization: Basic``, or the ``p`` parameter."""
    if authorization:
        scheme, _, credential = authorization.partition(" ")
        scheme = scheme.lower()
        if scheme in ("token", "bearer"):
            return credential.strip()
        if scheme == "basic":
            try:
                return base64.b64decode(credential.strip()).decode("utf-8").partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return None
    return password


def token_in(token: str | None, tokens: Sequence[str]) -> bool:
    """Whether ``token`` is one of ``tokens``, compared in constant time."""
    if token is None:
        return False
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
#: Memory budget of one compiled pattern (RE2 fails to compile beyond it, it never blows up).
_RE2_OPTIONS.max_mem = 8 << 20


class UnsafeRegexError(InfluxQLSyntaxError):
    """A query regex RE2 cannot compile (lookarounds, backreferences, or too big)."""


def regex_search(pattern: str, text: str) -> bool:
    """``re.search`` semantics in linear time (RE2, the syntax of InfluxDB's Go regexps)."""
    try:
        compiled = re2.compile(pattern, _RE2_OPTIONS)
    except re2.error as exc:
        raise UnsafeRegexError(f"invalid regex /{pattern}/: {exc}", 0) from None
    return compiled.search(text) is not None
