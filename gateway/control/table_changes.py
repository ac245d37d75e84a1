"""Changing an existing table: ``gateway table add-column|set-access`` and the admin
API's ``…/columns`` and ``…/access`` routes.

Each change is one transaction: the DDL or the row-level security policies (as the
project's role) and the registry rows together. The registry triggers' NOTIFY brings
each change to every instance's metadata cache.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from gateway.control.projects import find_project
from gateway.control.realtime_capture import create_capture_trigger, drop_capture_trigger
from gateway.control.rowpolicy import apply_row_policies
from gateway.control.tabledef import (
    ColumnDef,
    DefinitionError,
    check_name,
    check_row_access,
    column_ddl,
    parse_column,
)
from gateway.control.tables import BAD_DEFAULT, as_project_role, bad_default, registered_table


def add_column(
    conn: psycopg.Connection[Any], ref: str, table: str, column: ColumnDef
) -> dict[str, Any]:
    """ALTER TABLE … ADD COLUMN as the project's role, and the registry row, in one transaction.

    A NOT NULL column without a default can't be added to a table that has rows: refused
    before any change, with what to do instead.
    """
    if column.primary_key or column.identity:
        raise ProvisioningError(
            "add-column can't add a primary key or identity column", field="primary_key"
        )
    with conn.transaction():
        project = find_project(conn, ref)
        registered = registered_table(conn, project, table)
        taken = conn.execute(
            "SELECT 1 FROM gateway.column_registry WHERE table_id = %s AND name = %s",
            [registered["id"], column.name],
        ).fetchone()
        if taken:
            raise ConflictError(
                f"table {table!r} already has a column {column.name!r}", field="name"
            )
        qualified = sql.SQL("{}.{}").format(
            sql.Identifier(project.schema_name), sql.Identifier(table)
        )
        as_project_role(conn, project)
        try:
            if not column.nullable and not column.has_default:
                found = conn.execute(
                    sql.SQL("SELECT EXISTS (SELECT 1 FROM {}) AS has_rows").format(qualified)
                ).fetchone()
                if found is not None and found["has_rows"]:
                    raise ProvisioningError(
                        f"table {table!r} has rows: a NOT NULL column without a default can't "
                        "be added (give --nullable or --default)",
                        field="nullable",
                    )
            conn.execute(
                sql.SQL("ALTER TABLE {} ADD COLUMN {}").format(qualified, column_ddl(column))
            )
        except psycopg.errors.DuplicateColumn:
            raise ProvisioningError(
                f"column {column.name!r} already exists in the table (but not in the registry)"
            ) from None
        except psycopg.errors.UndefinedTable:
            raise ProvisioningError(
                f"table {table!r} is registered but missing from the project's schema"
            ) from None
        except psycopg.errors.NotNullViolation:
            raise ProvisioningError(
                f"table {table!r} has rows: a NOT NULL column without a default can't be added"
            ) from None
        except BAD_DEFAULT as exc:
            raise bad_default(exc) from None
        conn.execute("RESET ROLE")
        row = conn.execute(
            """
            INSERT INTO gateway.column_registry
                (table_id, name, ordinal, data_type, is_nullable, is_primary_key, has_default,
                 is_sensitive, allow_client_read, allow_client_write)
            SELECT %s, %s, coalesce(max(ordinal), 0) + 1, %s, %s, false, %s, %s, %s, %s
              FROM gateway.column_registry WHERE table_id = %s
            RETURNING ordinal
            """,
            [
                registered["id"],
                column.name,
                column.type,
                column.nullable,
                column.has_default,
                column.sensitive,
                column.client_read,
                column.client_write,
                registered["id"],
            ],
        ).fetchone()
    assert row is not None
    return {
        "project_id": project.id,
        "schema_name": project.schema_name,
        "table": table,
        "column": {
            "name": column.name,
            "type": column.type,
            "ordinal": row["ordinal"],
            "nullable": column.nullable,
            "has_default": column.has_default,
            "sensitive": column.sensitive,
            "client_read": column.client_read,
            "client_write": column.client_write,
        },
    }


def set_access(
    conn: psycopg.Connection[Any],
    ref: str,
    table: str,
    *,
    column: str | None = None,
    client_read: bool | None = None,
    client_write: bool | None = None,
    sensitive: bool | None = None,
) -> dict[str, Any]:
    """Table flags (no ``column``) or one column's flags; ``sensitive`` is a column flag."""
    if client_read is None and client_write is None and sensitive is None:
        raise ProvisioningError(
            "nothing to change: give --client-read, --client-write or --sensitive"
        )
    if sensitive is not None and column is None:
        raise ProvisioningError("--sensitive is a column flag: give --column too", field="column")
    if column is not None:
        check_name(column, "column name")
    with conn.transaction():
        project = find_project(conn, ref)
        registered = registered_table(conn, project, table)
        if column is None:
            row = conn.execute(
                """
                UPDATE gateway.table_registry
                   SET allow_client_read = coalesce(%s, allow_client_read),
                       allow_client_write = coalesce(%s, allow_client_write)
                 WHERE id = %s
                RETURNING allow_client_read, allow_client_write
                """,
                [client_read, client_write, registered["id"]],
            ).fetchone()
            assert row is not None
            return {
                "project_id": project.id,
                "table": table,
                "column": None,
                "client_read": row["allow_client_read"],
                "client_write": row["allow_client_write"],
            }
        row = conn.execute(
            """
            UPDATE gateway.column_registry
               SET allow_client_read = coalesce(%s, allow_client_read),
                   allow_client_write = coalesce(%s, allow_client_write),
                   is_sensitive = coalesce(%s, is_sensitive)
             WHERE table_id = %s AND name = %s
            RETURNING allow_client_read, allow_client_write, is_sensitive
            """,
            [client_read, client_write, sensitive, registered["id"], column],
        ).fetchone()
        if row is None:
            raise NotFoundError(f"table {table!r} has no column {column!r}", field="column")
    return {
        "project_id": project.id,
        "table": table,
        "column": column,
        "client_read": row["allow_client_read"],
        "client_write": row["allow_client_write"],
        "sensitive": row["is_sensitive"],
    }


def add_column_from_definition(
    conn: psycopg.Connection[Any], ref: str, table: str, definition: object
) -> dict[str, Any]:
    """``gateway table add-column`` and ``POST …/columns``: one column definition (the
    same fields as in a table definition), parsed by ``tabledef.parse_column``."""
    check_name(table, "table name")
    return add_column(conn, ref, table, parse_column(definition, "column"))


def set_row_access(
    conn: psycopg.Connection[Any],
    ref: str,
    table: str,
    *,
    row_access: str | None = None,
    owner_column: str | None = None,
) -> dict[str, Any]:
    """``gateway table set-access … --row-access owner --owner-column user_id``.

    One transaction: the registry row, the table's row-level security policies (as the
    project role) and, for a realtime table, its capture trigger (which stamps each
    change with the owner). The registry change reaches every instance's metadata cache
    through the registry triggers' NOTIFY.
    """
    if row_access is None and owner_column is None:
        raise ProvisioningError("nothing to change: give --row-access or --owner-column")
    with conn.transaction():
        project = find_project(conn, ref)
        registered = registered_table(conn, project, table)
        columns = conn.execute(
            """
            SELECT name, data_type, is_primary_key FROM gateway.column_registry
             WHERE table_id = %s ORDER BY ordinal
            """,
            [registered["id"]],
        ).fetchall()
        new_owner = owner_column if owner_column is not None else registered["owner_column"]
        new_access = row_access if row_access is not None else registered["row_access"]
        try:
            new_owner, new_access = check_row_access(
                new_owner, new_access, {c["name"]: c["data_type"] for c in columns}
            )
        except DefinitionError as exc:
            raise ProvisioningError(str(exc)) from None
        conn.execute(
            "UPDATE gateway.table_registry SET owner_column = %s, row_access = %s WHERE id = %s",
            [new_owner, new_access, registered["id"]],
        )
        apply_row_policies(conn, project.schema_name, table, new_owner, new_access)
        if registered["realtime"] and new_owner != registered["owner_column"]:
            drop_capture_trigger(conn, project, table)
            primary_key = [c["name"] for c in columns if c["is_primary_key"]]
            create_capture_trigger(conn, project, table, primary_key, new_owner)
    return {
        "project_id": project.id,
        "table": table,
        "owner_column": new_owner,
        "row_access": new_access,
    }
