"""Compiled statement shapes: identifiers quoted from the catalog, values only as params."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog, TableInfo
from gateway.query.compiler import CompiledStatement, compile_query
from gateway.query.contract import parse_query
from gateway.query.values import column_type
from tests.support.example_catalog import CATALOG, PUBLIC, SERVER


def compile_(obj: dict[str, Any], principal: Principal = SERVER) -> CompiledStatement:
    return compile_query(parse_query(obj), CATALOG, principal)


def text(st: CompiledStatement) -> str:
    return st.text


def test_select_shape() -> None:
    st = compile_(
        {
            "operation": "select",
            "table": "todos",
            "columns": ["title", "id"],
            "filters": [
                {"column": "done", "op": "eq", "value": False},
                {"column": "id", "op": "in", "value": [1, 2]},
            ],
            "sorts": [{"column": "created_at", "direction": "desc"}],
            "limit": 10,
            "offset": 20,
        }
    )
    sql = text(st)
    bound = st.max_response_bytes
    assert st.params == [bound, False, [1, 2], 10, 20]
    assert sql.count("%s") == 5
    assert '"p_aaaaaaaaaaaa"."todos"' in sql
    assert '"x"."done" = %s::boolean AND "x"."id" = ANY(%s::bigint[])' in sql
    assert '"x"."created_at" DESC NULLS LAST' in sql
    assert 'SELECT "x"."title" AS "c0", "x"."id" AS "c1", "x"."created_at" AS "k0"' in sql
    assert '(SELECT "r"."c0" AS "title", "r"."c1" AS "id") AS v' in sql
    assert 'json_agg(to_json(v.*) ORDER BY "r"."k0" DESC NULLS LAST)' in sql
    assert "octet_length(" in sql and "gateway.answer_bytes" not in sql
    in_batch = compile_query(
        parse_query({"operation": "select", "table": "todos"}), CATALOG, SERVER, in_batch=True
    )
    assert "set_config('gateway.answer_bytes'" in text(in_batch)
    assert st.operation == "select" and st.table == "todos" and st.max_rows is None


def test_values_converted_per_type() -> None:
    st = compile_(
        {
            "operation": "insert",
            "table": "todos",
            "data": {
                "title": "t",
                "ext_id": "12345678-1234-5678-1234-567812345678",
                "created_at": "2024-01-01T00:00:00",
                "due": "2024-01-02",
                "price": "1.25",
                "priority": "42",
                "meta": {"a": 1},
                "tags": ["a", None],
                "ratio": 2,
            },
        }
    )
    p = st.params
    assert p[0] == "t" and isinstance(p[1], uuid.UUID)
    assert p[2] == dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    assert p[3] == dt.date(2024, 1, 2) and p[4] == Decimal("1.25") and p[5] == 42
    assert p[6] == '{"a":1}' and p[7] == ["a", None] and p[8] == 2.0  # jsonb bound as text
    sql = text(st)
    for cast in (
        "::text",
        "::uuid",
        "::timestamptz",
        "::date",
        "::numeric",
        "::integer",
        "::jsonb",
        "::text[]",
        "::double precision",
    ):
        assert f"%s{cast}" in sql


def test_bounded_mutation_shape_and_param_order() -> None:
    st = compile_(
        {
            "operation": "update",
            "table": "todos",
            "set": {"title": "new"},
            "filters": [{"column": "priority", "op": "gt", "value": 3}],
        },
        PUBLIC,
    )
    sql = text(st)
    # WHERE (in the CTE) comes before SET in the text, so its parameter comes first.
    assert sql.index('"x"."priority" > %s') < sql.index('SET "title" = %s')
    assert st.params == [3, "new", 50, st.max_response_bytes, 50]
    assert st.max_rows == 50 and "FOR UPDATE" in sql
    unbounded = compile_(
        {
            "operation": "update",
            "table": "todos",
            "set": {"title": "new"},
            "filters": [{"column": "priority", "op": "gt", "value": 3}],
        }
    )
    assert unbounded.max_rows is None
    assert unbounded.params == ["new", 3, unbounded.max_response_bytes]
    assert "FOR UPDATE" not in text(unbounded)


@pytest.mark.parametrize(
    ("flt", "code"),
    [
        ({"column": "priority", "op": "like", "value": "1%"}, "INVALID_FILTER"),
        ({"column": "tags", "op": "ilike", "value": "a"}, "INVALID_FILTER"),
        ({"column": "title", "op": "contains", "value": ["a"]}, "INVALID_FILTER"),
        ({"column": "meta", "op": "overlaps", "value": ["a"]}, "INVALID_FILTER"),
        ({"column": "tags", "op": "in", "value": [["a"]]}, "INVALID_FILTER"),
        ({"column": "title", "op": "is", "value": True}, "INVALID_FILTER"),
        ({"column": "id", "op": "in", "value": ["x"]}, "INVALID_VALUE"),
        ({"column": "tags", "op": "contains", "value": "a"}, "INVALID_VALUE"),
        ({"column": "done", "op": "eq", "value": 0}, "INVALID_VALUE"),
    ],
)
def test_filter_refusals(flt: dict[str, Any], code: str) -> None:
    with pytest.raises(GatewayError) as info:
        compile_({"operation": "select", "table": "todos", "filters": [flt]})
    assert info.value.code == code
    assert "query.filters[0]" in info.value.message


def test_type_aliases() -> None:
    assert column_type(ColumnInfo("a", "int4")).cast.as_string(None) == "integer"  # type: ignore[union-attr]
    assert column_type(ColumnInfo("a", "timestamp with time zone[]")).is_array  # type: ignore[union-attr]
    assert column_type(ColumnInfo("a", "money")) is None
    assert column_type(ColumnInfo("a", "text; drop")) is None


def test_unsupported_type_refuses_values_but_still_selects() -> None:
    odd = TableInfo(
        "odd", (ColumnInfo("id", "bigint", is_primary_key=True), ColumnInfo("m", "money"))
    )
    cat = ProjectCatalog("p", "s", {"odd": odd})
    compile_query(parse_query({"operation": "select", "table": "odd"}), cat, SERVER)
    with pytest.raises(GatewayError) as info:
        compile_query(
            parse_query({"operation": "insert", "table": "odd", "data": {"m": 1}}), cat, SERVER
        )
    assert info.value.status == 400


def test_catalog_names_are_quoted_identifiers() -> None:
    weird = TableInfo('we"ird', (ColumnInfo('c"ol', "text"),))
    cat = ProjectCatalog("p", 'sch"ema', {'we"ird': weird})
    st = compile_query(parse_query({"operation": "select", "table": 'we"ird'}), cat, SERVER)
    sql = text(st)
    assert '"sch""ema"."we""ird"' in sql and '"x"."c""ol"' in sql
