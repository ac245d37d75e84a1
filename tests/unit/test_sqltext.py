"""The compiler's driver-free SQL composition renders exactly what psycopg.sql renders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql as pg

from gateway.query import sqltext as sql

NAMES = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"]), min_size=1)


@given(NAMES, NAMES)
def test_identifiers_quote_like_psycopg(schema: str, table: str) -> None:
    ours = sql.Identifier(schema, table).as_string()
    assert ours == pg.Identifier(schema, table).as_string(None)


@pytest.mark.parametrize("value", ["plain", "it's", "back\\slash", "both '\\' ", "", 0, 42, -7])
def test_literals_render_constants(value: str | int) -> None:
    rendered = sql.Literal(value).as_string()
    if isinstance(value, int):
        assert rendered == str(value)
    elif "\\" in value:
        assert rendered.startswith("E'") and rendered.count("\\") == 2 * value.count("\\")
    else:
        assert rendered == pg.Literal(value).as_string(None)


def test_format_join_and_add_compose_like_psycopg() -> None:
    def build(m):  # type: ignore[no-untyped-def]
        cols = m.SQL(", ").join([m.Identifier("x", "a"), m.Identifier("x", 'we"ird')])
        head = m.SQL("SELECT {cols} FROM {} AS x WHERE {} = %s").format(
            m.Identifier("p_1", "t"), m.Identifier("x", "id"), cols=cols
        )
        return head + m.SQL(" LIMIT {0}").format(m.SQL("10"))

    assert build(sql).as_string() == build(pg).as_string(None)


def test_format_takes_composables_only() -> None:
    with pytest.raises(TypeError):
        sql.SQL("SELECT {}").format("1; DROP TABLE x")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        sql.Literal(1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        sql.Identifier("a\x00b")
