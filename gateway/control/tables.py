"""Creating, dropping and listing a project's tables: ``gateway table create|drop`` and
the admin API's ``/projects/{project}/tables`` routes.

A table is DDL in the project's schema (run as the project's role) plus its rows in the
registry (``gateway.table_registry``, ``gateway.column_registry``), written in one
transaction; the registry triggers' NOTIFY brings the change to every instance's
metadata cache. Changing an existing table is ``table_changes.py``.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from gateway.control.errors import ConflictError, NotFoundError, ProvisioningError
from gateway.control.projects import Project, find_project
from gateway.control.realtime_capture import create_capture_trigger
from gateway.control.rowpolicy import apply_row_policies
from gateway.control.tabledef import TableDef, check_name, create_table_ddl, parse_table


def create_table(conn: psycopg.Connection[Any], ref: str, table: TableDef) -> dict[str, Any]:
    """DDL in the project's schema and the registry rows, in one transaction."""
    with conn.transaction():
        project = find_project(conn, ref)
        exists = conn.execute(
            "SELECT 1 FROM gateway.table_registry WHERE project_id = %s AND name = %s",
            [project.id, table.name],
        ).fetchone()
        if exists:
            raise ConflictError(
                f"table {table.name!r} already exists in {project.name}", field="name"
            )
        as_project_role(conn, project)
        try:
            conn.execute(create_table_ddl(project.schema_name, table))
        except psycopg.errors.DuplicateTable:
            raise ConflictError(
                f"table {table.name!r} already exists in the project's schema", field="name"
            ) from None
        except BAD_DEFAULT as exc:
            raise bad_default(exc) from None
        conn.execute("RESET ROLE")
        table_id = register_table(conn, project.id, table)
        install_table_hooks(conn, project, table)
    return {
        "project_id": project.id,
        "schema_name": project.schema_name,
        "table": table.name,
        "table_id": table_id,
        "columns": [c.name for c in table.columns],
    }


def register_table(conn: psycopg.Connection[Any], project_id: str, table: TableDef) -> int:
    row = conn.execute(
        """
        INSERT INTO gateway.table_registry
            (project_id, name, allow_client_read, allow_client_write, realtime,
             owner_column, row_access)
        VALUES (%s, %s, %s, %s, %s, %s, %s)
        RETURNING id
        """,
        [
            project_id,
            table.name,
            table.client_read,
            table.client_write,
            table.realtime,
            table.owner_column,
            table.row_access,
        ],
    ).fetchone()
    assert row is not None
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO gateway.column_registry
                (table_id, name, ordinal, data_type, is_nullable, is_primary_key, has_default,
                 is_sensitive, allow_client_read, allow_client_write)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    row["id"],
                    c.name,
                    i + 1,
                    c.type,
                    c.nullable,
                    c.primary_key,
                    c.has_default,
                    c.sensitive,
                    c.client_read,
                    c.client_write,
                )
                for i, c in enumerate(table.columns)
            ],
        )
    return int(row["id"])


def install_table_hooks(conn: psycopg.Connection[Any], project: Project, table: TableDef) -> None:
    """Per-table triggers: realtime capture, unless the definition says ``"realtime": false``.

    Runs inside ``create_table``'s transaction, after ``register_table`` wrote
    ``table_registry.realtime`` from the same definition.
    """
    check_name(table.name, "table name")
    if table.realtime:
        primary_key = [c.name for c in table.columns if c.primary_key]
        create_capture_trigger(conn, project, table.name, primary_key, table.owner_column)
    if table.row_access != "all":
        apply_row_policies(
            conn, project.schema_name, table.name, table.owner_column, table.row_access
        )


def registered_table(conn: psycopg.Connection[Any], project: Project, table: str) -> dict[str, Any]:
    check_name(table, "table name")
    row = conn.execute(
        "SELECT * FROM gateway.table_registry WHERE project_id = %s AND name = %s FOR UPDATE",
        [project.id, table],
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no table {table!r} in project {project.name}")
    return row


def as_project_role(conn: psycopg.Connection[Any], project: Project) -> None:
    """DDL runs as the project's role, so the project owns what it creates (and can reach
    nothing else); ``RESET ROLE`` before writing the registry."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(project.schema_name)))


# a default that PostgreSQL can't turn into the column's type (tabledef checks its shape,
# the database its value): one line naming the default, at create-table and add-column
BAD_DEFAULT = (psycopg.errors.DataError, psycopg.errors.InvalidTextRepresentation)


def bad_default(exc: psycopg.Error) -> ProvisioningError:
    return ProvisioningError(f"invalid default: {exc.diag.message_primary}", field="default")


def drop_table(conn: psycopg.Connection[Any], ref: str, table: str) -> dict[str, Any]:
    """DROP TABLE as the project's role and unregister it (columns cascade), atomically."""
    with conn.transaction():
        project = find_project(conn, ref)
        registered = registered_table(conn, project, table)
        as_project_role(conn, project)
        try:
            conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}.{}").format(
                    sql.Identifier(project.schema_name), sql.Identifier(table)
                )
            )
        except psycopg.errors.DependentObjectsStillExist as exc:
            detail = (exc.diag.message_detail or "other objects depend on it").replace("\n", "; ")
            raise ProvisioningError(f"table {table!r} can't be dropped: {detail}") from None
        conn.execute("RESET ROLE")
        remove_table_hooks(conn, project, table)
        conn.execute("DELETE FROM gateway.table_registry WHERE id = %s", [registered["id"]])
    return {
        "project_id": project.id,
        "schema_name": project.schema_name,
        "table": table,
        "dropped": True,
    }


def remove_table_hooks(conn: psycopg.Connection[Any], project: Project, table: str) -> None:
    """Extension point mirroring ``install_table_hooks`` (runs before unregistering)."""


def list_tables(conn: psycopg.Connection[Any], ref: str) -> dict[str, Any]:
    """The project's registered tables with their flags and columns."""
    project = find_project(conn, ref)
    rows = conn.execute(
        """
        SELECT t.name, t.allow_client_read, t.allow_client_write, t.realtime,
               coalesce(json_agg(json_build_object(
                   'name', c.name, 'type', c.data_type, 'nullable', c.is_nullable,
                   'primary_key', c.is_primary_key, 'has_default', c.has_default,
                   'sensitive', c.is_sensitive, 'client_read', c.allow_client_read,
                   'client_write', c.allow_client_write) ORDER BY c.ordinal)
                 FILTER (WHERE c.id IS NOT NULL), '[]') AS columns
          FROM gateway.table_registry t
          LEFT JOIN gateway.column_registry c ON c.table_id = t.id
         WHERE t.project_id = %s
         GROUP BY t.id ORDER BY t.name
        """,
        [project.id],
    ).fetchall()
    return {
        "project_id": project.id,
        "tables": [
            {
                "name": r["name"],
                "client_read": r["allow_client_read"],
                "client_write": r["allow_client_write"],
                "realtime": r["realtime"],
                "columns": r["columns"],
            }
            for r in rows
        ],
    }


def create_table_from_definition(
    conn: psycopg.Connection[Any], ref: str, definition: object
) -> dict[str, Any]:
    """``gateway table create --file`` and ``POST …/tables``: the definition JSON, parsed
    and checked by ``tabledef.parse_table``, then ``create_table``."""
    return create_table(conn, ref, parse_table(definition))
