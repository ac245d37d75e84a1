"""The permission matrix: key types, scopes, table and column flags."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.errors import GatewayError
from gateway.metadata.catalog import Principal
from gateway.query.compiler import compile_query
from gateway.query.contract import parse_query
from gateway.query.permissions import readable_columns, schema_view
from tests.support.example_catalog import (
    ADMIN,
    CATALOG,
    NO_SCOPES,
    PUBLIC,
    PUBLIC_READ_ONLY,
    PUBLIC_WRITE_ONLY,
    SERVER,
    SERVER_READ_ONLY,
    TODOS,
)


def compile_(obj: dict[str, Any], principal: Principal):  # type: ignore[no-untyped-def]
    return compile_query(parse_query(obj), CATALOG, principal)


def refused(obj: dict[str, Any], principal: Principal, code: str) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        compile_(obj, principal)
    assert info.value.code == code, info.value
    return info.value


ALL_TODO_COLUMNS = tuple(c.name for c in TODOS.columns)


def test_readable_columns_by_key_type() -> None:
    server = readable_columns(TODOS, SERVER)
    assert "internal_note" not in server and "owner_email" in server
    assert server == tuple(c for c in ALL_TODO_COLUMNS if c != "internal_note")
    public = readable_columns(TODOS, PUBLIC)
    assert public == tuple(c for c in server if c != "owner_email")
    assert readable_columns(TODOS, ADMIN) == server
    assert readable_columns(TODOS, PUBLIC_WRITE_ONLY) == ()
    assert readable_columns(CATALOG.tables["sys_users"], SERVER) == ()
    assert readable_columns(CATALOG.tables["writeonly"], PUBLIC) == ()
    assert readable_columns(CATALOG.tables["writeonly"], SERVER) == ("id",)


SELECT = {"operation": "select", "table": "todos"}


@pytest.mark.parametrize(
    ("principal", "column", "code"),
    [
        (PUBLIC, "owner_email", "SENSITIVE_COLUMN_ACCESS"),
        (PUBLIC, "internal_note", "COLUMN_NOT_READABLE"),
        (SERVER, "internal_note", "COLUMN_NOT_READABLE"),
        (ADMIN, "internal_note", "COLUMN_NOT_READABLE"),
        (SERVER, "nope", "COLUMN_NOT_FOUND"),
    ],
)
def test_unreadable_columns_refused_everywhere(
    principal: Principal, column: str, code: str
) -> None:
    refused({**SELECT, "columns": [column]}, principal, code)
    refused({**SELECT, "filters": [{"column": column, "op": "is"}]}, principal, code)
    refused({**SELECT, "sorts": [{"column": column}]}, principal, code)
    upd = {
        "operation": "update",
        "table": "todos",
        "set": {"title": "x"},
        "filters": [{"column": column, "op": "is"}],
    }
    refused(upd, principal, code)
    refused(
        {"operation": "insert", "table": "todos", "data": {"title": "x"}, "returning": [column]},
        principal,
        code,
    )


def test_server_reads_sensitive() -> None:
    compile_(
        {
            **SELECT,
            "columns": ["owner_email"],
            "filters": [{"column": "owner_email", "op": "eq", "value": "a"}],
        },
        SERVER,
    )


def test_writes() -> None:
    ins = {"operation": "insert", "table": "todos"}
    # the original's canWriteColumn: allow_client_write = false binds public keys only
    compile_({**ins, "data": {"title": "x", "internal_note": "n"}}, SERVER)
    refused({**ins, "data": {"title": "x", "internal_note": "n"}}, PUBLIC, "COLUMN_NOT_WRITABLE")
    refused({**ins, "data": {"nope": 1}}, SERVER, "COLUMN_NOT_FOUND")
    compile_({**ins, "data": {"title": "x", "owner_email": "e"}}, PUBLIC)
    upd = {
        "operation": "update",
        "table": "todos",
        "filters": [{"column": "id", "op": "eq", "value": 1}],
    }
    compile_({**upd, "set": {"internal_note": "n"}}, SERVER)
    refused({**upd, "set": {"internal_note": "n"}}, PUBLIC, "COLUMN_NOT_WRITABLE")


@pytest.mark.parametrize(
    ("principal", "operation", "table", "code"),
    [
        (PUBLIC_READ_ONLY, "insert", "todos", "INSUFFICIENT_SCOPES"),
        (SERVER_READ_ONLY, "delete", "todos", "INSUFFICIENT_SCOPES"),
        (PUBLIC_WRITE_ONLY, "select", "todos", "INSUFFICIENT_SCOPES"),
        (NO_SCOPES, "select", "nope", "INSUFFICIENT_SCOPES"),  # scopes before existence
        (SERVER, "select", "nope", "TABLE_NOT_FOUND"),
        (PUBLIC, "select", "sys_users", "TABLE_NOT_READABLE"),
        (SERVER, "select", "sys_users", "TABLE_NOT_READABLE"),
        (SERVER, "insert", "sys_users", "TABLE_NOT_WRITABLE"),
        (PUBLIC, "insert", "readonly", "TABLE_NOT_WRITABLE"),
        (PUBLIC, "select", "writeonly", "TABLE_NOT_READABLE"),
        (PUBLIC, "select", "all_secret", "INSUFFICIENT_SCOPES"),  # no column left for *
        (SERVER, "select", "all_secret", None),  # server keeps the sensitive column
        (SERVER, "insert", "readonly", None),  # table client flags bind public keys only
        (SERVER, "select", "writeonly", None),
        (PUBLIC, "insert", "writeonly", None),  # write-only table: no RETURNING
        (PUBLIC, "delete", "writeonly", None),  # filters follow the column rules only
        (PUBLIC, "insert", "all_secret", "INSUFFICIENT_SCOPES"),  # readable, no column left
        (PUBLIC_WRITE_ONLY, "insert", "writeonly", None),  # no read scope: no RETURNING
    ],
)
def test_table_matrix(principal: Principal, operation: str, table: str, code: str | None) -> None:
    obj: dict[str, Any] = {"operation": operation, "table": table}
    if operation == "insert":
        obj["data"] = {"todos": {"title": "x"}, "all_secret": {"a": "x"}}.get(table, {"id": 1})
    if operation == "delete":
        obj["filters"] = [{"column": "id", "op": "eq", "value": 1}]
    if code is None:
        compile_(obj, principal)
    else:
        err = refused(obj, principal, code)
        assert err.status in (403, 404)


def test_returning_needs_a_readable_table() -> None:
    obj = {"operation": "insert", "table": "writeonly", "data": {"id": 1}, "returning": ["id"]}
    refused(obj, PUBLIC_WRITE_ONLY, "INSUFFICIENT_SCOPES")
    refused(obj, PUBLIC, "TABLE_NOT_READABLE")
    assert compile_(obj, SERVER).text
    default = compile_({**obj, "returning": None}, PUBLIC)
    assert "RETURNING 1" in default.text


def test_schema_view_public() -> None:
    view = schema_view(CATALOG, PUBLIC)
    assert view["project_id"] == CATALOG.project_id and view["schema_name"] == CATALOG.schema_name
    assert view["table_count"] == len(view["tables"]) == len(CATALOG.tables)
    tables = {t["name"]: t for t in view["tables"]}
    todos = tables["todos"]
    names = [c["name"] for c in todos["columns"]]
    assert "owner_email" not in names and "internal_note" not in names
    assert todos["columns"][0] == {
        "name": "id",
        "type": "bigint",
        "nullable": False,
        "primaryKey": True,
    }
    assert todos["readable"] and todos["writable"] and not todos["system"]
    assert tables["sys_users"] == {
        "name": "sys_users",
        "columns": [],
        "readable": False,
        "writable": False,
        "system": True,
        "rowAccess": "all",
        "ownerColumn": None,
    }
    assert tables["writeonly"]["columns"] == [] and tables["writeonly"]["writable"]
    assert not tables["readonly"]["writable"] and tables["readonly"]["readable"]


def test_schema_view_server() -> None:
    tables = {t["name"]: t for t in schema_view(CATALOG, SERVER)["tables"]}
    cols = {c["name"]: c for c in tables["todos"]["columns"]}
    assert cols["owner_email"]["sensitive"] is True and cols["title"]["sensitive"] is False
    assert "internal_note" not in cols
    assert tables["readonly"]["writable"] and tables["writeonly"]["readable"]
