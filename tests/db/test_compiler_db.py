"""Compiled statements against a real PostgreSQL: operators, conversions, safety rails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from gateway.errors import GatewayError
from gateway.metadata.catalog import Principal
from gateway.query.compiler import compile_query
from gateway.query.contract import parse_batch_body, parse_query
from gateway.query.executor import StatementResult, run_transaction
from tests.support.example_catalog import CATALOG, PUBLIC, ROLE, SCHEMA, SERVER

SEED = f"""
TRUNCATE {SCHEMA}.comments, {SCHEMA}.todos, {SCHEMA}.notes, {SCHEMA}.tricky RESTART IDENTITY;
INSERT INTO {SCHEMA}.todos
  (title, done, tags, meta, owner_email, internal_note, created_at, ext_id, price, due,
   priority, rank, ratio, scores)
VALUES
  ('alpha', false, '{{a,b}}', '{{"k": 1, "n": {{"x": 1}}}}', 'a@x.io', 'n1',
   '2024-01-01T00:00:00Z', '00000000-0000-0000-0000-000000000001', 10.50, '2024-02-01',
   1, 1, 0.5, '{{1,2}}'),
  ('beta', true, '{{b,c}}', '{{"k": 2}}', 'b@x.io', 'n2',
   '2024-01-02T00:00:00Z', '00000000-0000-0000-0000-000000000002', 0, NULL,
   2, 2, 1.5, '{{2,3}}'),
  ('Gamma', NULL, NULL, NULL, NULL, NULL,
   '2024-01-03T00:00:00Z', NULL, NULL, '2024-03-01', NULL, NULL, NULL, NULL),
  ('delta', false, '{{}}', '[1, 2]', 'd@x.io', NULL,
   '2024-01-04T00:00:00Z', NULL, 99.99, '2024-01-15', 4, 4, NULL, '{{}}'),
  ('eps%ilon', true, '{{d}}', '{{"k": 1}}', NULL, NULL,
   '2024-01-05T00:00:00Z', NULL, 5, NULL, 5, 5, NULL, NULL);
INSERT INTO {SCHEMA}.notes VALUES ('one', 1), ('two', 2), ('three', 3);
"""


class DB:
    """Sync helpers around one autocommit connection and its own event loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.conn: psycopg.AsyncConnection[Any] = self.loop.run_until_complete(
            psycopg.AsyncConnection.connect(url, autocommit=True)
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.conn.close())
        self.loop.close()

    def sql(self, text: str, params: Any = None) -> list[tuple[Any, ...]]:
        async def go() -> list[tuple[Any, ...]]:
            cur = await self.conn.execute(text, params)
            return await cur.fetchall() if cur.description else []

        return self.loop.run_until_complete(go())

    def run_many(
        self, queries: list[dict[str, Any]], principal: Principal = SERVER, timeout_ms: int = 5000
    ) -> list[StatementResult]:
        statements = [
            compile_query(q, CATALOG, principal) for q in parse_batch_body({"queries": queries})
        ]
        return self.loop.run_until_complete(
            run_transaction(
                self.conn, statements, role=ROLE, statement_timeout_ms=timeout_ms, batch=True
            )
        )

    def run(
        self, query: dict[str, Any], principal: Principal = SERVER, timeout_ms: int = 5000
    ) -> StatementResult:
        statement = compile_query(parse_query(query), CATALOG, principal)
        [result] = self.loop.run_until_complete(
            run_transaction(self.conn, [statement], role=ROLE, statement_timeout_ms=timeout_ms)
        )
        assert self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        return result

    def rows(self, query: dict[str, Any], principal: Principal = SERVER) -> list[dict[str, Any]]:
        result = self.run(query, principal)
        assert result.data_json is not None
        data = json.loads(result.data_json)
        assert len(data) == result.count
        return data

    def fails(
        self, query: dict[str, Any], code: str, principal: Principal = SERVER
    ) -> GatewayError:
        with pytest.raises(GatewayError) as info:
            self.run(query, principal)
        assert info.value.code == code, info.value
        assert self.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        return info.value

    def titles(self, filters: list[dict[str, Any]], **extra: Any) -> list[str]:
        q = {"operation": "select", "table": "todos", "columns": ["title"], "filters": filters}
        q.setdefault("sorts", [{"column": "id"}])
        q.update(extra)
        return [r["title"] for r in self.rows(q)]


@pytest.fixture
def db(project_db: str) -> Iterator[DB]:
    d = DB(project_db)
    d.sql(SEED)
    try:
        yield d
    finally:
        d.close()


def sel(**kw: Any) -> dict[str, Any]:
    return {"operation": "select", "table": "todos", **kw}


# --- select and operators -------------------------------------------------------------


def test_select_columns_in_requested_order(db: DB) -> None:
    rows = db.rows(sel(columns=["title", "id"], sorts=[{"column": "id"}], limit=2))
    assert rows == [{"title": "alpha", "id": 1}, {"title": "beta", "id": 2}]
    result = db.run(sel(columns=["title", "id"], limit=1))
    assert list(json.loads(result.data_json or "")[0]) == ["title", "id"]


def test_select_star_expands_to_readable_columns(db: DB) -> None:
    server_cols = list(db.rows(sel(limit=1))[0])
    assert "internal_note" not in server_cols and "owner_email" in server_cols
    public_cols = list(db.rows(sel(columns=["*"], limit=1), PUBLIC)[0])
    assert "owner_email" not in public_cols and "internal_note" not in public_cols
    assert public_cols[0] == "id"


def test_select_empty_result_is_empty_array(db: DB) -> None:
    result = db.run(sel(filters=[{"column": "title", "op": "eq", "value": "nope"}]))
    assert result.data_json == "[]" and result.count == 0


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ({"column": "title", "op": "eq", "value": "beta"}, ["beta"]),
        (
            {"column": "title", "op": "neq", "value": "beta"},
            ["alpha", "Gamma", "delta", "eps%ilon"],
        ),
        ({"column": "priority", "op": "gt", "value": 2}, ["delta", "eps%ilon"]),
        ({"column": "priority", "op": "gte", "value": 2}, ["beta", "delta", "eps%ilon"]),
        ({"column": "priority", "op": "lt", "value": 2}, ["alpha"]),
        ({"column": "priority", "op": "lte", "value": "2"}, ["alpha", "beta"]),
        ({"column": "title", "op": "like", "value": "%a"}, ["alpha", "beta", "Gamma", "delta"]),
        ({"column": "title", "op": "like", "value": "g%"}, []),
        ({"column": "title", "op": "ilike", "value": "g%"}, ["Gamma"]),
        ({"column": "title", "op": "like", "value": "eps\\%%"}, ["eps%ilon"]),
        ({"column": "id", "op": "in", "value": [2, 4, 99]}, ["beta", "delta"]),
        ({"column": "id", "op": "in", "value": []}, []),
        ({"column": "title", "op": "in", "value": ["alpha", "x"]}, ["alpha"]),
        ({"column": "done", "op": "is", "value": None}, ["Gamma"]),
        ({"column": "done", "op": "is", "value": True}, ["beta", "eps%ilon"]),
        ({"column": "done", "op": "is", "value": False}, ["alpha", "delta"]),
        ({"column": "tags", "op": "is", "value": None}, ["Gamma"]),
        ({"column": "tags", "op": "contains", "value": ["b"]}, ["alpha", "beta"]),
        (
            {"column": "tags", "op": "containedBy", "value": ["a", "b", "d"]},
            ["alpha", "delta", "eps%ilon"],
        ),
        ({"column": "tags", "op": "overlaps", "value": ["a", "c"]}, ["alpha", "beta"]),
        ({"column": "scores", "op": "contains", "value": [2]}, ["alpha", "beta"]),
        ({"column": "meta", "op": "contains", "value": {"k": 1}}, ["alpha", "eps%ilon"]),
        ({"column": "meta", "op": "contains", "value": {"n": {"x": 1}}}, ["alpha"]),
        ({"column": "meta", "op": "containedBy", "value": {"k": 2, "z": 0}}, ["beta"]),
        ({"column": "meta", "op": "eq", "value": [1, 2]}, ["delta"]),
        ({"column": "tags", "op": "eq", "value": []}, ["delta"]),
        (
            {"column": "ext_id", "op": "eq", "value": "00000000-0000-0000-0000-000000000002"},
            ["beta"],
        ),
        (
            {"column": "created_at", "op": "gt", "value": "2024-01-03T00:00:00Z"},
            ["delta", "eps%ilon"],
        ),
        ({"column": "created_at", "op": "lt", "value": "2024-01-02T01:00:00+02:00"}, ["alpha"]),
        ({"column": "due", "op": "gte", "value": "2024-02-01"}, ["alpha", "Gamma"]),
        ({"column": "price", "op": "gt", "value": "10.4"}, ["alpha", "delta"]),
        ({"column": "price", "op": "eq", "value": 10.5}, ["alpha"]),
        ({"column": "ratio", "op": "gt", "value": 1}, ["beta"]),
        ({"column": "rank", "op": "eq", "value": 4}, ["delta"]),
    ],
)
def test_filter_operators(db: DB, flt: dict[str, Any], expected: list[str]) -> None:
    assert db.titles([flt]) == expected


def test_filters_combine_with_and(db: DB) -> None:
    flts = [
        {"column": "done", "op": "eq", "value": False},
        {"column": "priority", "op": "gt", "value": 1},
    ]
    assert db.titles(flts) == ["delta"]


def test_sorts_nulls_last_by_default_and_nulls_first(db: DB) -> None:
    def order(s: dict[str, Any]) -> list[str]:
        return db.titles([], sorts=[s, {"column": "id"}])

    assert order({"column": "priority"}) == ["alpha", "beta", "delta", "eps%ilon", "Gamma"]
    assert order({"column": "priority", "direction": "desc"}) == [
        "eps%ilon",
        "delta",
        "beta",
        "alpha",
        "Gamma",
    ]
    assert order({"column": "priority", "nullsFirst": True}) == [
        "Gamma",
        "alpha",
        "beta",
        "delta",
        "eps%ilon",
    ]
    assert order({"column": "priority", "direction": "desc", "nullsFirst": True})[0] == "Gamma"
    # Sorting by a column that is not selected still orders the JSON array.
    rows = db.rows(sel(columns=["id"], sorts=[{"column": "created_at", "direction": "desc"}]))
    assert [r["id"] for r in rows] == [5, 4, 3, 2, 1]


def test_multi_column_sort(db: DB) -> None:
    sorts = [{"column": "done", "direction": "desc"}, {"column": "title", "direction": "desc"}]
    assert db.titles([], sorts=sorts) == ["eps%ilon", "beta", "delta", "alpha", "Gamma"]


def test_limit_and_offset(db: DB) -> None:
    assert db.titles([], limit=2) == ["alpha", "beta"]
    assert db.titles([], limit=2, offset=2) == ["Gamma", "delta"]
    assert db.titles([], limit=2, offset=4) == ["eps%ilon"]
    assert db.titles([], limit=0) == []
    assert db.titles([], offset=100000) == []
    assert len(db.titles([], limit=1000)) == 5


def test_select_with_timestamps_is_utc_text(db: DB) -> None:
    [row] = db.rows(sel(columns=["created_at", "due", "price"], limit=1, sorts=[{"column": "id"}]))
    assert row == {"created_at": "2024-01-01T00:00:00+00:00", "due": "2024-02-01", "price": 10.50}


# --- insert ---------------------------------------------------------------------------


def test_insert_single_returns_readable_columns(db: DB) -> None:
    result = db.run(
        {
            "operation": "insert",
            "table": "todos",
            "data": {
                "title": "new",
                "tags": ["x", None],
                "meta": {"deep": [1, {"a": None}], "s": "é\u2028"},
                "ext_id": "12345678-1234-5678-1234-567812345678",
                "created_at": "2024-05-01T12:00:00+02:00",
                "due": "2024-05-02",
                "price": "12345678901234567890.123456789",
                "priority": -(2**31),
                "rank": 32767,
                "ratio": 1e300,
                "scores": [1, None, 3],
                "owner_email": "o@x.io",
            },
        }
    )
    assert result.count == 1
    [row] = json.loads(result.data_json or "")
    assert row["id"] == 6 and row["title"] == "new" and row["done"] is False
    assert row["tags"] == ["x", None]
    assert row["meta"] == {"deep": [1, {"a": None}], "s": "é\u2028"}
    assert row["created_at"] == "2024-05-01T10:00:00+00:00"
    assert row["price"] == 12345678901234567890.123456789
    assert row["scores"] == [1, None, 3]
    assert "internal_note" not in row and row["owner_email"] == "o@x.io"


def test_insert_public_key_writes_sensitive_but_does_not_read_it(db: DB) -> None:
    result = db.run(
        {"operation": "insert", "table": "todos", "data": {"title": "p", "owner_email": "e"}},
        PUBLIC,
    )
    [row] = json.loads(result.data_json or "")
    assert "owner_email" not in row
    assert db.sql(f"SELECT owner_email FROM {SCHEMA}.todos WHERE id = %s", [row["id"]]) == [("e",)]


def test_bulk_insert_and_returning(db: DB) -> None:
    result = db.run(
        {
            "operation": "insert",
            "table": "todos",
            "data": [{"title": f"t{i}", "priority": i} for i in range(50)],
            "returning": ["priority", "title"],
        }
    )
    rows = json.loads(result.data_json or "")
    assert result.count == 50
    assert rows[0] == {"priority": 0, "title": "t0"} and rows[49]["title"] == "t49"
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos") == [(55,)]


def test_insert_default_values(db: DB) -> None:
    result = db.run({"operation": "insert", "table": "notes", "data": {}})
    assert result.count == 1 and json.loads(result.data_json or "") == [{"body": None, "n": None}]


def test_insert_without_read_scope_returns_no_data(db: DB) -> None:
    writer = Principal("server", frozenset({"write"}))
    result = db.run({"operation": "insert", "table": "notes", "data": {"body": "w"}}, writer)
    assert result.data_json is None and result.count == 1
    with pytest.raises(GatewayError) as info:
        db.run(
            {"operation": "insert", "table": "notes", "data": {"body": "w"}, "returning": ["n"]},
            writer,
        )
    assert info.value.code == "INSUFFICIENT_SCOPES"


def test_insert_unique_violation_is_409(db: DB) -> None:
    err = db.fails(
        {
            "operation": "insert",
            "table": "todos",
            "data": {"title": "dup", "ext_id": "00000000-0000-0000-0000-000000000001"},
        },
        "UNIQUE_VIOLATION",
    )
    assert err.status == 409
    assert "duplicate" not in err.message and "ext_id" not in err.message
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos") == [(5,)]


def test_not_null_check_and_foreign_key_violations(db: DB) -> None:
    err = db.fails(
        {"operation": "insert", "table": "todos", "data": {"done": True}}, "NOT_NULL_VIOLATION"
    )
    assert err.status == 400 and err.details == {"column": "title"}
    err = db.fails(
        {"operation": "insert", "table": "todos", "data": {"title": "x", "price": -1}},
        "CHECK_VIOLATION",
    )
    assert err.status == 400
    err = db.fails(
        {"operation": "insert", "table": "comments", "data": {"todo_id": 999}},
        "FOREIGN_KEY_VIOLATION",
    )
    assert err.status == 409


# --- update and delete ----------------------------------------------------------------


def test_update_returns_changed_rows(db: DB) -> None:
    result = db.run(
        {
            "operation": "update",
            "table": "todos",
            "set": {"done": True, "tags": ["z"], "meta": None},
            "filters": [{"column": "id", "op": "in", "value": [1, 4]}],
            "returning": ["id", "done", "tags", "meta"],
        }
    )
    rows = sorted(json.loads(result.data_json or ""), key=lambda r: r["id"])
    assert result.count == 2 and result.matched == 2
    assert rows == [
        {"id": 1, "done": True, "tags": ["z"], "meta": None},
        {"id": 4, "done": True, "tags": ["z"], "meta": None},
    ]


def test_delete(db: DB) -> None:
    result = db.run(
        {
            "operation": "delete",
            "table": "todos",
            "filters": [{"column": "done", "op": "is", "value": True}],
            "returning": ["id"],
        }
    )
    assert result.count == 2
    assert sorted(r["id"] for r in json.loads(result.data_json or "")) == [2, 5]
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos") == [(3,)]


@pytest.mark.parametrize("operation", ["update", "delete"])
def test_filterless_mutation_refused(db: DB, operation: str) -> None:
    q: dict[str, Any] = {"operation": operation, "table": "todos", "filters": []}
    if operation == "update":
        q["set"] = {"done": True}
    db.fails(q, "FILTERLESS_MUTATION")
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos WHERE done IS TRUE") == [(2,)]


@pytest.mark.parametrize("operation", ["update", "delete"])
@pytest.mark.parametrize("table", ["todos", "notes"])  # notes has no primary key (ctid)
def test_max_rows_exceeded_changes_nothing(db: DB, operation: str, table: str) -> None:
    col = "id" if table == "todos" else "n"
    q: dict[str, Any] = {
        "operation": operation,
        "table": table,
        "filters": [{"column": col, "op": "lte", "value": 3}],
        "maxRows": 2,
    }
    if operation == "update":
        q["set"] = {col: 100} if table == "notes" else {"title": "changed"}
    before = db.sql(f"SELECT * FROM {SCHEMA}.{table} ORDER BY 1")
    err = db.fails(q, "ROW_LIMIT_EXCEEDED")
    assert err.status == 400
    assert err.details == {"maxRows": 2, "matchedRows": 3}
    assert db.sql(f"SELECT * FROM {SCHEMA}.{table} ORDER BY 1") == before
    q["maxRows"] = 3
    result = db.run(q)
    assert result.count == 3 and result.matched == 3
    assert db.sql(f"SELECT * FROM {SCHEMA}.{table} ORDER BY 1") != before


def test_public_keys_default_to_50_rows(db: DB) -> None:
    db.run({"operation": "insert", "table": "notes", "data": [{"n": 7}] * 60})
    q = {
        "operation": "update",
        "table": "notes",
        "set": {"body": "x"},
        "filters": [{"column": "n", "op": "eq", "value": 7}],
    }
    err = db.fails(q, "ROW_LIMIT_EXCEEDED", PUBLIC)
    assert err.details == {"maxRows": 50, "matchedRows": 60}
    assert db.run(q, SERVER).count == 60  # server keys are unbounded unless they ask


# --- invalid values never reach PostgreSQL as errors -----------------------------------


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("ext_id", "not-a-uuid"),
        ("ext_id", 12),
        ("created_at", "yesterday"),
        ("created_at", "2024-13-01T00:00:00Z"),
        ("due", "2024-02-30"),
        ("priority", 2**31),
        ("priority", "12abc"),
        ("priority", True),
        ("priority", 1.5),
        ("rank", 40000),
        ("price", "1e5000000"),
        ("price", "NaN"),
        ("price", True),
        ("done", "true"),
        ("done", 1),
        ("title", 5),
        ("title", "nul\x00byte"),
        ("tags", "a"),
        ("tags", [["nested"]]),
        ("scores", [1, "x"]),
        ("ratio", "1.0"),
        ("meta", {"k": "nul\x00"}),
    ],
)
def test_invalid_values_are_400(db: DB, column: str, value: Any) -> None:
    err = db.fails(
        {"operation": "insert", "table": "todos", "data": {"title": "x", column: value}},
        "INVALID_VALUE",
    )
    assert err.status == 400 and column in err.message
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos") == [(5,)]


def test_bigint_overflow_in_filter(db: DB) -> None:
    err = db.fails(sel(filters=[{"column": "id", "op": "eq", "value": 2**63}]), "INVALID_VALUE")
    assert "query.filters[0].value" in err.message
    db.fails(sel(filters=[{"column": "id", "op": "in", "value": [1, 2**64]}]), "INVALID_VALUE")


def test_like_with_trailing_escape_maps_to_invalid_value(db: DB) -> None:
    db.fails(sel(filters=[{"column": "title", "op": "like", "value": "a\\"}]), "INVALID_VALUE")


# --- identifiers from the request never reach SQL -------------------------------------


@pytest.mark.parametrize(
    "table",
    [
        "todos; drop table x",
        '"todos"',
        "public.todos",
        f"{SCHEMA}.todos",
        "..",
        "TODOS",
        "t\u043edos",  # Cyrillic o
        "todos\u200b",
        "todos --",
        "pg_catalog.pg_authid",
        "outside",
    ],
)
def test_hostile_table_names_are_not_found(db: DB, table: str) -> None:
    db.fails({"operation": "select", "table": table}, "TABLE_NOT_FOUND")


@pytest.mark.parametrize(
    "column",
    [
        'title"; drop table x; --',
        '"title"',
        "x.title",
        "title::text",
        "TITLE",
        "t\u0456tle",  # Cyrillic i
        "*, 1",
    ],
)
def test_hostile_column_names_are_not_found(db: DB, column: str) -> None:
    db.fails(sel(columns=[column]), "COLUMN_NOT_FOUND")
    db.fails(sel(filters=[{"column": column, "op": "eq", "value": 1}]), "COLUMN_NOT_FOUND")
    db.fails(sel(sorts=[{"column": column}]), "COLUMN_NOT_FOUND")
    db.fails({"operation": "insert", "table": "todos", "data": {column: "x"}}, "COLUMN_NOT_FOUND")


def test_sql_in_values_is_just_data(db: DB) -> None:
    evil = "x'); DROP TABLE todos; --"
    db.run({"operation": "insert", "table": "todos", "data": {"title": evil}})
    assert db.titles([{"column": "title", "op": "eq", "value": evil}]) == [evil]


def test_statements_run_as_the_project_role(db: DB) -> None:
    # A catalog pointing at a table the project role has no grant on: the role boundary
    # holds even if the catalog were wrong.
    from dataclasses import replace

    from gateway.metadata.catalog import ColumnInfo, ProjectCatalog

    outside = replace(
        CATALOG.tables["notes"], name="outside", columns=(ColumnInfo("x", "integer"),)
    )
    cat = ProjectCatalog(CATALOG.project_id, "public", {"outside": outside})
    statement = compile_query(parse_query({"operation": "select", "table": "outside"}), cat, SERVER)
    with pytest.raises(GatewayError) as info:
        db.loop.run_until_complete(
            run_transaction(db.conn, [statement], role=ROLE, statement_timeout_ms=5000)
        )
    assert info.value.code == "QUERY_FAILED" and info.value.status == 500
    assert "permission" not in info.value.message


def test_columns_named_like_the_compilers_aliases(db: DB) -> None:
    row = {"x": 1, **{name: name.upper() for name in "vwujncmr"}}
    result = db.run({"operation": "insert", "table": "tricky", "data": [row, {**row, "x": 2}]})
    assert json.loads(result.data_json or "")[0] == row
    rows = db.rows(
        {
            "operation": "select",
            "table": "tricky",
            "filters": [{"column": "n", "op": "eq", "value": "N"}],
            "sorts": [{"column": "x", "direction": "desc"}],
        }
    )
    assert rows == [{**row, "x": 2}, row]
    for max_rows in (None, 5):
        result = db.run(
            {
                "operation": "update",
                "table": "tricky",
                "set": {"u": "changed"},
                "filters": [{"column": "x", "op": "eq", "value": 1}],
                "maxRows": max_rows,
            }
        )
        assert json.loads(result.data_json or "") == [{**row, "u": "changed"}]
    result = db.run(
        {
            "operation": "delete",
            "table": "tricky",
            "filters": [{"column": "c", "op": "eq", "value": "C"}],
            "maxRows": 2,
        }
    )
    assert result.count == 2 and result.matched == 2


# --- batch, timeout, round trips -------------------------------------------------------


def test_batch_all_or_nothing(db: DB) -> None:
    with pytest.raises(GatewayError) as info:
        db.run_many(
            [
                {"operation": "insert", "table": "todos", "data": {"title": "first"}},
                {
                    "operation": "insert",
                    "table": "todos",
                    "data": {"title": "dup", "ext_id": "00000000-0000-0000-0000-000000000001"},
                },
                {
                    "operation": "delete",
                    "table": "notes",
                    "filters": [{"column": "n", "op": "gt", "value": 0}],
                },
            ]
        )
    assert info.value.code == "UNIQUE_VIOLATION"
    assert info.value.details["index"] == 1
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos WHERE title = 'first'") == [(0,)]
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.notes") == [(3,)]
    assert db.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_batch_row_limit_rolls_back_earlier_statements(db: DB) -> None:
    with pytest.raises(GatewayError) as info:
        db.run_many(
            [
                {"operation": "insert", "table": "notes", "data": {"n": 9}},
                {
                    "operation": "delete",
                    "table": "notes",
                    "filters": [{"column": "n", "op": "gt", "value": 0}],
                    "maxRows": 1,
                },
            ]
        )
    assert info.value.code == "ROW_LIMIT_EXCEEDED"
    assert info.value.details == {"maxRows": 1, "matchedRows": 4, "index": 1}
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.notes") == [(3,)]


def test_batch_success_sees_earlier_writes(db: DB) -> None:
    results = db.run_many(
        [
            {"operation": "insert", "table": "notes", "data": {"n": 42, "body": "b"}},
            {
                "operation": "select",
                "table": "notes",
                "filters": [{"column": "n", "op": "eq", "value": 42}],
            },
        ]
    )
    assert [r.operation for r in results] == ["insert", "select"]
    assert json.loads(results[1].data_json or "") == [{"body": "b", "n": 42}]


def test_statement_timeout_is_504(db: DB) -> None:
    db.sql(f"INSERT INTO {SCHEMA}.notes SELECT 'x', g FROM generate_series(1, 300000) g")
    # A LIKE with many wildcards over 300k rows takes far longer than 1 ms.
    q = {
        "operation": "select",
        "table": "notes",
        "filters": [{"column": "body", "op": "like", "value": "%a%b%c%d%e%f%g%"}],
        "sorts": [{"column": "n", "direction": "desc"}],
    }
    with pytest.raises(GatewayError) as info:
        db.run(q, timeout_ms=1)
    assert info.value.code == "QUERY_TIMEOUT" and info.value.status == 504
    assert db.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # The timeout was local to that transaction.
    assert db.sql("SHOW statement_timeout") == [("0",)]
    assert db.run(q).count == 0


def test_connection_is_reusable_after_every_failure(db: DB) -> None:
    # More rounds than psycopg's prepare threshold (5): a statement skipped after a failure
    # must not be remembered as prepared.
    batch = [
        {"operation": "select", "table": "notes", "limit": 1},
        {"operation": "insert", "table": "todos", "data": {"title": "x", "price": -1}},
        {"operation": "select", "table": "notes", "limit": 2},
    ]
    for _ in range(8):
        with pytest.raises(GatewayError) as info:
            db.run_many(batch)
        assert info.value.code == "CHECK_VIOLATION" and info.value.details["index"] == 1
    assert [r.count for r in db.run_many([batch[0], batch[2]])] == [1, 2]
    for _ in range(3):
        db.fails(sel(filters=[{"column": "title", "op": "like", "value": "a\\"}]), "INVALID_VALUE")
        db.fails(
            {"operation": "insert", "table": "todos", "data": {"title": "x", "price": -1}},
            "CHECK_VIOLATION",
        )
        assert db.titles([{"column": "id", "op": "eq", "value": 1}]) == ["alpha"]


def test_bounded_mutation_waiting_on_a_lock_times_out_and_changes_nothing(
    db: DB, project_db: str
) -> None:
    with psycopg.connect(project_db) as locker:
        locker.execute(f"SELECT 1 FROM {SCHEMA}.todos WHERE id = 2 FOR UPDATE")
        q = {
            "operation": "update",
            "table": "todos",
            "set": {"title": "changed"},
            "filters": [{"column": "id", "op": "lte", "value": 3}],
            "maxRows": 10,
        }
        with pytest.raises(GatewayError) as info:
            db.run(q, timeout_ms=200)
        assert info.value.code == "QUERY_TIMEOUT"
        locker.rollback()
    assert db.sql(f"SELECT count(*) FROM {SCHEMA}.todos WHERE title = 'changed'") == [(0,)]
    assert db.run(q).count == 3


def test_setup_failure_is_a_500_and_leaves_the_connection_idle(db: DB) -> None:
    statement = compile_query(parse_query(sel(limit=1)), CATALOG, SERVER)
    with pytest.raises(GatewayError) as info:
        db.loop.run_until_complete(
            run_transaction(db.conn, [statement], role="no_such_role", statement_timeout_ms=5000)
        )
    assert info.value.code == "QUERY_FAILED" and info.value.status == 500
    assert info.value.details is None
    assert db.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert db.sql("SELECT current_user") == [("postgres",)]


def test_connection_failure_propagates(db: DB) -> None:
    other = DB(_dsn(db))
    try:
        pid = other.conn.info.backend_pid
        db.sql("SELECT pg_terminate_backend(%s)", [pid])
        with pytest.raises(psycopg.OperationalError):
            other.run(sel(limit=1))
    finally:
        other.close()


def _dsn(db: DB) -> str:
    info = db.conn.info
    return f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"


class _CountingProxy:
    """A TCP proxy counting how often the client speaks after the server has answered."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.turns = 0
        self._server_spoke = True

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, client: bool) -> None:
            while data := await r.read(65536):
                if client:
                    if self._server_spoke:
                        self.turns += 1
                        self._server_spoke = False
                else:
                    self._server_spoke = True
                w.write(data)
                await w.drain()
            w.close()

        await asyncio.gather(pump(cr, sw, True), pump(sr, cw, False), return_exceptions=True)


def test_run_transaction_is_one_round_trip(db: DB) -> None:
    info = db.conn.info
    proxy = _CountingProxy(info.host, info.port)

    async def go() -> tuple[int, int, list[StatementResult]]:
        port = await proxy.start()
        conn = await psycopg.AsyncConnection.connect(
            f"postgresql://{info.user}@127.0.0.1:{port}/{info.dbname}", autocommit=True
        )
        try:
            queries = [
                {"operation": "insert", "table": "notes", "data": {"n": 1}},
                {
                    "operation": "update",
                    "table": "todos",
                    "set": {"done": True},
                    "filters": [{"column": "id", "op": "eq", "value": 1}],
                    "maxRows": 5,
                },
                {"operation": "select", "table": "todos", "limit": 3},
            ]
            statements = [
                compile_query(q, CATALOG, PUBLIC) for q in parse_batch_body({"queries": queries})
            ]
            before = proxy.turns
            results = await run_transaction(conn, statements, role=ROLE, statement_timeout_ms=5000)
            one = proxy.turns - before
            before = proxy.turns
            await run_transaction(conn, statements[2:], role=ROLE, statement_timeout_ms=5000)
            return one, proxy.turns - before, results
        finally:
            await conn.close()
            proxy.server.close()

    batch_turns, single_turns, results = db.loop.run_until_complete(go())
    assert [r.count for r in results] == [1, 1, 3]
    assert batch_turns == 1
    assert single_turns == 1


# --- property: whatever compiles runs, or fails with a 4xx ---------------------------


def test_compiled_fuzz_never_fails_with_500(db: DB) -> None:
    from hypothesis import HealthCheck, given, settings

    from tests.support.contract_strategies import shaped_queries

    seen: dict[str, int] = {}

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(shaped_queries)
    def run(query: dict[str, Any]) -> None:
        if query["table"] not in ("todos", "notes", "comments"):
            return  # catalog-only tables: PostgreSQL rightly answers 42P01 (a 500)
        for principal in (SERVER, PUBLIC):
            try:
                statement = compile_query(parse_query(query), CATALOG, principal)
            except GatewayError:
                continue
            try:
                [result] = db.loop.run_until_complete(
                    run_transaction(db.conn, [statement], role=ROLE, statement_timeout_ms=5000)
                )
                seen["ok"] = seen.get("ok", 0) + 1
                if result.data_json is not None:
                    json.loads(result.data_json)
            except GatewayError as err:
                seen[err.code] = seen.get(err.code, 0) + 1
                assert err.status < 500, (query, err)
            assert db.conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE

    run()
    assert seen.get("ok", 0) > 5, seen  # not vacuous: some random queries must run
