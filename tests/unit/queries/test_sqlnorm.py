"""The statement normalizer: values of every kind fold to one shape; names never do."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from asgi_perf.queries._sqlnorm import fold_lists, normalize, tokens

SAME_SHAPE = [
    # literals and numbers
    (
        "SELECT * FROM users WHERE name = 'bob' AND age > 42",
        "select * from users where name = 'it''s' and age > 3.5e2",
    ),
    ("SELECT * FROM t WHERE x = -5", "select * from t where x = 7"),
    ("SELECT * FROM t WHERE b = X'00ff'", "SELECT * FROM t WHERE b = E'\\n'"),
    ("SELECT * FROM t WHERE h = 0xFF", "SELECT * FROM t WHERE h = 12"),
    # bind parameters of every paramstyle
    ("SELECT * FROM t WHERE id = ?", "SELECT * FROM t WHERE id = %s"),
    ("SELECT * FROM t WHERE id = $1", "SELECT * FROM t WHERE id = :id"),
    ("SELECT * FROM t WHERE id = %(id_1)s", "SELECT * FROM t WHERE id = :1"),
    # IN lists of any length, literal or bound
    ("SELECT * FROM t WHERE id IN (1, 2, 3)", "SELECT * FROM t WHERE id IN (?)"),
    ("SELECT * FROM t WHERE id IN (?, ?, ?, ?)", "select * from t where id in (%s,%s)"),
    (
        "SELECT * FROM t WHERE (a, b) IN ((1, 2), (3, 4))",
        "SELECT * FROM t WHERE (a, b) IN ((5, 6))",
    ),
    # multi-row VALUES
    ("INSERT INTO t (a, b) VALUES (1, 'x'), (2, 'y')", "INSERT INTO t (a, b) VALUES (?, ?)"),
    # comments and whitespace
    (
        "SELECT a, b FROM t -- trailing\n WHERE x = 1",
        "/* lead */ SELECT a,b\n\tFROM   t WHERE x=2;",
    ),
    ("SELECT count(*) FROM t", "SELECT COUNT (*)  FROM t"),
    # quoted identifiers
    ('SELECT "users"."id" FROM "users"', "SELECT users.id FROM users"),
    ("SELECT `users`.`id` FROM `users`", "SELECT users.id FROM users"),
    # PostgreSQL casts and dollar quoting
    ("SELECT $1::int, $$a 'b' c$$", "SELECT $2::INT, $tag$x$$y$tag$"),
]

DIFFERENT_SHAPE = [
    ("SELECT * FROM users WHERE id = ?", "SELECT * FROM accounts WHERE id = ?"),
    ("SELECT * FROM books WHERE author_id = ?", "SELECT * FROM books WHERE editor_id = ?"),
    ("SELECT * FROM t1 WHERE id = 1", "SELECT * FROM t2 WHERE id = 1"),
    ('SELECT * FROM "Users"', "SELECT * FROM users"),  # quoted keeps case (PostgreSQL)
    ("SELECT a FROM t WHERE x = ?", "SELECT a FROM t WHERE x IS NULL"),
    ("SELECT * FROM t WHERE id IN (1, 2)", "SELECT * FROM t WHERE id = 1"),
    ("SELECT min(x) FROM t", "SELECT max(x) FROM t"),
    ("SELECT 'users' FROM t", "SELECT users FROM t"),  # a literal is not a name
]


@pytest.mark.parametrize(("a", "b"), SAME_SHAPE)
def test_values_fold_to_one_shape(a: str, b: str) -> None:
    assert normalize(a) == normalize(b)


@pytest.mark.parametrize(("a", "b"), DIFFERENT_SHAPE)
def test_names_never_fold(a: str, b: str) -> None:
    assert normalize(a) != normalize(b)


@pytest.mark.parametrize(
    ("statement", "shape"),
    [
        ("SELECT * FROM t WHERE id IN (1, 2, 3)", "select * from t where id in(?)"),
        (
            "SELECT books.id, books.title FROM books WHERE ? = books.author_id",
            "select books.id, books.title from books where ? = books.author_id",
        ),
        ("INSERT INTO t (a) VALUES (1), (2), (3);", "insert into t(a) values(?)"),
        ("select 'a -- not a comment' from t", "select ? from t"),
        ("select '/* not */' from t /* is */", "select ? from t"),
        ("SELECT x FROM t WHERE y = 'unterminated", "select x from t where y = ?"),
        ("SELECT a - 1 FROM t", "select a - ? from t"),
        ('SELECT "a""b" FROM t', 'select a"b from t'),
        ("SELECT col2, t1.c_3 FROM t1", "select col2, t1.c_3 from t1"),
    ],
)
def test_shape_text(statement: str, shape: str) -> None:
    assert normalize(statement) == shape


def test_tokens_and_fold_lists_are_pure() -> None:
    assert tokens("SELECT 1, 'x' -- c") == ["select", "?", ",", "?"]
    assert fold_lists("x in(?, ?, ?) and y = -?") == "x in(?) and y = ?"


def test_long_statements_are_normalized_without_caching() -> None:
    rows = ", ".join(f"({i}, 'v{i}')" for i in range(2000))
    assert normalize(f"INSERT INTO t (a, b) VALUES {rows}") == "insert into t(a, b) values(?, ?)"


values = st.one_of(
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20),
)


def sql_literal(value: object) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    return repr(value)


@given(st.lists(values, min_size=1, max_size=30), values)
def test_any_literals_and_list_lengths_share_a_shape(items: list[object], value: object) -> None:
    listed = ", ".join(sql_literal(v) for v in items)
    statement = f"SELECT * FROM t WHERE a = {sql_literal(value)} AND b IN ({listed}) -- x"
    assert normalize(statement) == "select * from t where a = ? and b in(?)"


names = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)


@given(names, names)
def test_different_tables_never_share_a_shape(a: str, b: str) -> None:
    assume(a != b)
    assert normalize(f"SELECT * FROM {a} WHERE id = 1") != normalize(
        f'SELECT * FROM "{b}" WHERE id = 2'
    )
