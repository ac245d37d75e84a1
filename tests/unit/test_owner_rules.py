"""The owner rules of the compiler and the credentials parser, without a database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth.bearer import credentials_from_headers
from gateway.errors import GatewayError
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog, TableInfo
from gateway.query.compiler import compile_query
from gateway.query.contract import parse_query_body

ME = str(uuid.UUID(int=1))
OTHER = str(uuid.UUID(int=2))


def catalog(row_access: str) -> ProjectCatalog:
    notes = TableInfo(
        "notes",
        (
            ColumnInfo("id", "bigint", is_primary_key=True, has_default=True),
            ColumnInfo("user_id", "uuid", allow_client_write=False),
            ColumnInfo("body", "text"),
        ),
        owner_column="user_id",
        row_access=row_access,  # type: ignore[arg-type]
    )
    return ProjectCatalog("p", "p_schema", {"notes": notes})


def compile_(query: dict[str, Any], principal: Principal, row_access: str) -> Any:
    parsed = parse_query_body({"query": {"table": "notes", **query}})
    return compile_query(parsed, catalog(row_access), principal)


OPERATIONS = {
    "select": {"operation": "select"},
    "insert": {"operation": "insert", "data": {"body": "x"}},
    "insert_mine": {"operation": "insert", "data": {"body": "x", "user_id": ME}},
    "insert_other": {"operation": "insert", "data": {"body": "x", "user_id": OTHER}},
    "update": {"operation": "update", "set": {"body": "y"},
               "filters": [{"column": "id", "op": "eq", "value": 1}]},
    "hand_over": {"operation": "update", "set": {"user_id": OTHER},
                  "filters": [{"column": "id", "op": "eq", "value": 1}]},
    "keep_owner": {"operation": "update", "set": {"body": "y", "user_id": ME},
                   "filters": [{"column": "id", "op": "eq", "value": 1}]},
    "delete": {"operation": "delete", "filters": [{"column": "id", "op": "eq", "value": 1}]},
}  # fmt: skip


@settings(max_examples=400)  # 3 x 2 x 3 x 9 combinations: all of them, in practice
@given(
    key_type=st.sampled_from(["public", "server", "admin"]),
    session=st.booleans(),
    row_access=st.sampled_from(["all", "owner", "public_read"]),
    operation=st.sampled_from(sorted(OPERATIONS)),
)
def test_owner_rules(key_type: str, session: bool, row_access: str, operation: str) -> None:
    """Every combination: the expected refusal, or a statement that carries the owner
    condition exactly when the rule holds the key to its user's rows."""
    principal = Principal(key_type, user_id=ME if session else None)  # type: ignore[arg-type]
    write = operation != "select"
    held = key_type == "public" and row_access != "all" and (write or row_access == "owner")
    expected: str | None = None
    if held and not session:
        expected = "SESSION_REQUIRED"
    elif held and operation in ("insert_other", "hand_over"):
        expected = "ROW_OWNER_MISMATCH"
    elif (
        key_type == "public"
        and row_access == "all"
        and operation in ("insert_mine", "insert_other", "hand_over", "keep_owner")
    ):
        expected = "COLUMN_NOT_WRITABLE"  # user_id is client_write=false, no owner rule
    try:
        statement = compile_(OPERATIONS[operation], principal, row_access)
    except GatewayError as error:
        assert error.code == expected, (error.code, expected)
        assert error.status == {"SESSION_REQUIRED": 401}.get(error.code, 403)
        return
    assert expected is None, f"expected {expected}"
    text = statement.text
    condition = '"x"."user_id" = %s::uuid' in text
    assert condition == (held and operation != "insert" and not operation.startswith("insert"))
    if held:
        assert uuid.UUID(ME) in statement.params or ME in str(statement.params)
    if held and operation.startswith("insert"):
        # the owner column is written with the session's user
        assert '"user_id"' in text and uuid.UUID(ME) in statement.params


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"x-api-key": "sheen_pk_a"}, ("sheen_pk_a", None)),
        ({"authorization": "Bearer sheen_sk_b"}, ("sheen_sk_b", None)),
        ({"authorization": "Bearer sheen_sk_b", "x-api-key": "sheen_pk_a"}, ("sheen_sk_b", None)),
        ({"authorization": "Bearer tok", "x-api-key": "sheen_pk_a"}, ("sheen_pk_a", "tok")),
        ({"authorization": "bearer  tok ", "x-api-key": " sheen_pk_a "}, ("sheen_pk_a", "tok")),
        ({"authorization": "Bearer tok"}, (None, "tok")),
        ({"authorization": "Basic abc", "x-api-key": "sheen_pk_a"}, ("sheen_pk_a", None)),
        ({"authorization": "Bearer ", "x-api-key": "sheen_pk_a"}, ("sheen_pk_a", None)),
        ({}, (None, None)),
    ],
)
def test_credentials(headers: dict[str, str], expected: tuple[Any, Any]) -> None:
    assert credentials_from_headers(headers) == expected


def test_long_session_values_are_capped() -> None:
    _, session = credentials_from_headers({"authorization": "Bearer " + "t" * 10_000})
    assert session is not None and len(session) == 512
