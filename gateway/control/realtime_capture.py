"""A table's realtime capture: the triggers that write each change to the change log
(``gateway.capture_change``), and ``gateway table realtime`` that turns them on or off.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from gateway.control.errors import NotFoundError, ProvisioningError
from gateway.control.projects import Project, find_project
from gateway.control.tabledef import check_name

CAPTURE_TRIGGER = "gateway_realtime_capture"
# statement level: row triggers don't fire for TRUNCATE (migration 0007)
TRUNCATE_TRIGGER = "gateway_realtime_truncate"


def create_capture_trigger(
    conn: psycopg.Connection[Any],
    project: Project,
    table: str,
    primary_key: list[str],
    owner_column: str | None = None,
) -> None:
    """AFTER INSERT/UPDATE/DELETE FOR EACH ROW → ``gateway.capture_change(project, pk...)``,
    and AFTER TRUNCATE FOR EACH STATEMENT → ``gateway.capture_change(project)`` (one
    ``truncate`` change per truncated table).

    Identifiers are checked names from the registry; the arguments are literals. An
    owner column is passed as ``'owner:<column>'`` so each change carries its row's
    owner (streams of owner tables carry only their subscriber's rows).
    """
    check_name(table, "table name")
    if not primary_key:
        raise ProvisioningError(f"table {table!r} has no primary key: realtime needs one")
    args = [sql.Literal(project.id)] + [sql.Literal(check_name(c, "column")) for c in primary_key]
    if owner_column is not None:
        args.append(sql.Literal("owner:" + check_name(owner_column, "owner column")))
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {}.{} "
            "FOR EACH ROW EXECUTE FUNCTION gateway.capture_change({})"
        ).format(
            sql.Identifier(CAPTURE_TRIGGER),
            sql.Identifier(project.schema_name),
            sql.Identifier(table),
            sql.SQL(", ").join(args),
        )
    )
    conn.execute(
        sql.SQL(
            "CREATE TRIGGER {} AFTER TRUNCATE ON {}.{} "
            "FOR EACH STATEMENT EXECUTE FUNCTION gateway.capture_change({})"
        ).format(
            sql.Identifier(TRUNCATE_TRIGGER),
            sql.Identifier(project.schema_name),
            sql.Identifier(table),
            sql.Literal(project.id),
        )
    )


def drop_capture_trigger(conn: psycopg.Connection[Any], project: Project, table: str) -> None:
    for trigger in (CAPTURE_TRIGGER, TRUNCATE_TRIGGER):
        conn.execute(
            sql.SQL("DROP TRIGGER IF EXISTS {} ON {}.{}").format(
                sql.Identifier(trigger),
                sql.Identifier(project.schema_name),
                sql.Identifier(check_name(table, "table name")),
            )
        )


def set_realtime(
    conn: psycopg.Connection[Any], ref: str, table: str, *, enabled: bool
) -> dict[str, Any]:
    """``gateway table realtime``: install or drop the capture trigger and flip the registry.

    One transaction; idempotent (enabling an enabled table recreates its trigger, so a
    trigger lost to manual DDL comes back).
    """
    with conn.transaction():
        project = find_project(conn, ref)
        row = conn.execute(
            """
            SELECT id, name, owner_column FROM gateway.table_registry
             WHERE project_id = %s AND name = %s
               FOR UPDATE
            """,
            [project.id, table],
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no table {table!r} in {project.name}")
        primary_key = [
            r["name"]
            for r in conn.execute(
                """
                SELECT name FROM gateway.column_registry
                 WHERE table_id = %s AND is_primary_key ORDER BY ordinal
                """,
                [row["id"]],
            ).fetchall()
        ]
        drop_capture_trigger(conn, project, row["name"])
        if enabled:
            create_capture_trigger(conn, project, row["name"], primary_key, row["owner_column"])
        conn.execute(
            "UPDATE gateway.table_registry SET realtime = %s WHERE id = %s", [enabled, row["id"]]
        )
    return {
        "project_id": project.id,
        "table": row["name"],
        "table_id": int(row["id"]),
        "realtime": enabled,
    }
