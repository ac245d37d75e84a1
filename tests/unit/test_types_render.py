"""``gateway types``' rendering (pure): type mapping, optionality, the key's view."""

from __future__ import annotations

from gateway.control.commands.types import render, ts_type
from gateway.metadata.catalog import ColumnInfo, Principal, ProjectCatalog, TableInfo


def test_column_types_follow_the_wire() -> None:
    assert ts_type("bigint") == "number"
    assert ts_type("numeric(10,2)") == "number"
    assert ts_type("double precision") == "number"
    assert ts_type("boolean") == "boolean"
    assert ts_type("jsonb") == "Json"
    assert ts_type("timestamptz") == "string"
    assert ts_type("uuid") == "string"
    assert ts_type("text[]") == "string[]"
    assert ts_type("integer[]") == "number[]"


def _catalog() -> ProjectCatalog:
    notes = TableInfo(
        name="notes",
        columns=(
            ColumnInfo("id", "bigint", is_nullable=False, is_primary_key=True, has_default=True),
            ColumnInfo("user_id", "uuid", is_nullable=False),
            ColumnInfo("body", "text", is_nullable=False),
            ColumnInfo("secret", "text", is_sensitive=True),
            ColumnInfo("closed", "text", allow_client_read=False, allow_client_write=False),
            ColumnInfo("odd-name", "text"),
        ),
        owner_column="user_id",
        row_access="owner",
    )
    hidden = TableInfo(
        name="internal",
        columns=(ColumnInfo("x", "text"),),
        allow_client_read=False,
        allow_client_write=False,
    )
    return ProjectCatalog("p", "p_x", {"notes": notes, "internal": hidden})


def _section(out: str, kind: str, table: str = "notes") -> str:
    return out.split(f"    {table}: {{")[1].split(f"{kind}: {{")[1].split("};")[0]


def test_a_public_key_sees_only_its_columns_and_tables() -> None:
    out = render(_catalog(), Principal(key_type="public"), "a public key")
    assert "internal" not in out
    row, insert, update = (_section(out, k) for k in ("Row", "Insert", "Update"))
    assert "        id: number;" in row and "        body: string;" in row
    assert "secret" not in row and "closed" not in out
    assert '        "odd-name": string | null;' in row
    # public keys may write a sensitive column they can't read
    assert "        secret?: string | null;" in insert
    assert "        body: string;" in insert and "        id?: number;" in insert
    # the owner column is filled by the gateway: optional even though NOT NULL
    assert "        user_id?: string;" in insert
    assert "        body?: string;" in update


def test_a_server_key_sees_more_and_a_read_only_key_writes_nothing() -> None:
    out = render(_catalog(), Principal(key_type="server"), "this server key")
    assert "internal: {" in out and "secret: string | null;" in _section(out, "Row")
    assert "closed" not in _section(out, "Row") and "closed?:" in _section(out, "Insert")
    read_only = render(
        _catalog(), Principal(key_type="server", scopes=frozenset({"read"})), "read-only"
    )
    assert _section(read_only, "Insert").strip() == "[key: string]: never;"
