"""SQL statement normalization: fold a statement to the *shape* that N+1 detection compares.

Two executions have the same shape when they differ only in values: literals, numbers, bind
parameters of any paramstyle (PEP 249: ``?``, ``%s``, ``%(name)s``, ``:name``, ``:1``, and
PostgreSQL's ``$1``), the length of an ``IN (...)`` list or of a multi-row ``VALUES`` list,
comments, whitespace, keyword case and identifier quoting. Names are never folded, so
statements on different tables or columns never share a shape (the rule Sentry's N+1 detector
uses for "same query, different parameters").

Choices where SQL dialects disagree:

- Unquoted words are lowercased (SQL folds them); a quoted identifier keeps its case but loses
  its quotes (``"users"`` == ``users``, ``"Users"`` != ``users``, as PostgreSQL sees them).
- ``[name]`` (SQL Server / SQLite) is left alone, since ``arr[1]`` is array indexing in PostgreSQL.
- The shape is for grouping and for humans: it is not meant to be executed.

:func:`normalize` is a pure function with a bounded cache: an application issues a few hundred
distinct statements, so after warm-up a lookup is a dict hit.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["fold_lists", "normalize", "tokens"]

# One alternation, tried left to right at each position (the order matters: a comment or a
# string literal must be recognised before anything inside it is).
_TOKEN_RE = re.compile(
    r"""
      (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>[EeNnXxBb]?'(?:[^']|'')*(?:'|\Z))
    | (?P<dollar>\$(?P<tag>[A-Za-z_]\w*)?\$.*?\$(?(tag)(?P=tag))\$)
    | (?P<dquoted>"(?P<dq>(?:[^"]|"")*)")
    | (?P<bquoted>`(?P<bq>[^`]*)`)
    | (?P<param>\?\d*|%s|%\([^)]*\)s|\$\d+|(?<!:):(?:[A-Za-z_]\w*|\d+))
    | (?P<number>0[xX][0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<word>[A-Za-z_\u0080-\uffff][\w$\u0080-\uffff]*)
    | (?P<op>::|<>|!=|<=|>=|\|\||[=<>+\-*/%])
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokens(statement: str) -> list[str]:
    """The statement as shape tokens: every value is ``?``, words are lowercased."""
    out: list[str] = []
    for match in _TOKEN_RE.finditer(statement):
        kind = match.lastgroup
        if kind == "word":
            out.append(match.group().lower())
        elif kind in ("string", "dollar", "param", "number"):
            out.append("?")
        elif kind == "dquoted":
            out.append(match.group("dq").replace('""', '"'))
        elif kind == "bquoted":
            out.append(match.group("bq"))
        elif kind in ("op", "other"):
            out.append(match.group())
        # comments and whitespace only separate tokens
    return out


def _join(parts: list[str]) -> str:
    # One canonical spacing: tokens separated by one space, except none inside parentheses,
    # before ``,``/``;``, around ``.``/``::``, or between a word and its ``(`` (``count(*)``,
    # ``in(?)``), so ``a,b`` and ``a , b`` give the same text.
    out: list[str] = []
    prev = ""
    for part in parts:
        glued = (
            not out
            or part in _NO_SPACE_BEFORE
            or prev in _NO_SPACE_AFTER
            or (part == "(" and (prev[-1:].isalnum() or prev[-1:] == "_"))
        )
        if not glued:
            out.append(" ")
        out.append(part)
        prev = part
    return "".join(out).rstrip(";")


_NO_SPACE_BEFORE = frozenset({",", ")", ";", ".", "::"})
_NO_SPACE_AFTER = frozenset({"(", ".", "::"})


_SIGNED_RE = re.compile(r"([=<>(,]) ?- ?\?")
_IN_LIST_RE = re.compile(r"(?<![\w.])in\(\?(?:, \?)*\)")
_ROW_RE = re.compile(r"(\((?:\?, )*\?\))(?:, \1)+")


def fold_lists(shape: str) -> str:
    """Fold ``IN (?, ?, ?)`` to ``IN (?)`` and ``VALUES (?, ?), (?, ?)`` to one row.

    SQLAlchemy renders an ``in_()`` with N values as N bind parameters, so without this every
    batch size would be its own shape. Signed numbers (``= -?``) fold to ``?`` too.
    """
    shape = _SIGNED_RE.sub(lambda m: m.group(1) + ("?" if m.group(1) == "(" else " ?"), shape)
    shape = _IN_LIST_RE.sub("in(?)", shape)
    return _ROW_RE.sub(r"\1", shape)


_CACHEABLE = 8192  # longer statements (bulk literals) are normalized each time, not kept


@lru_cache(maxsize=4096)
def _normalize_cached(statement: str) -> str:
    return fold_lists(_join(tokens(statement)))


def normalize(statement: str) -> str:
    """The shape of ``statement``: equal for executions that differ only in values."""
    if len(statement) <= _CACHEABLE:
        return _normalize_cached(statement)
    return fold_lists(_join(tokens(statement)))
