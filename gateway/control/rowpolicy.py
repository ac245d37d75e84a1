"""Row-level security for owner tables: the second line behind the compiler's condition.

The compiler already adds ``owner = <session user>`` to a public key's statements on an
owner table. These policies make PostgreSQL enforce the same rule on its own, so a
compiler bug can't leak another user's rows. They read two settings that the executor
sets with ``set_config(..., true)`` (``SET LOCAL``) in the request's own pipelined
transaction, before the statement:

* ``gateway.key_type`` — ``public``, ``server`` or ``admin``. Server and admin keys are
  trusted backends: every row passes.
* ``gateway.user_id`` — the session's user id, or ``''`` without a session (no row
  matches ``NULL``).

Outside a gateway request the settings are unset (``current_setting(..., true)`` is
NULL or ``''``), so the project role itself sees no rows of an owner table: the policies
fail closed. ``FORCE ROW LEVEL SECURITY`` is needed because the project role owns its
tables (owners bypass RLS otherwise). Superusers and ``BYPASSRLS`` roles bypass RLS by
PostgreSQL's design: the gateway never runs tenant statements as those (it ``SET ROLE``s
to the project role).

Expressions only use ``current_setting`` and the owner column: the project role has no
privilege on schema ``gateway``, so the policies can't call gateway functions.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from gateway.control.tabledef import check_name

POLICY_NAMES = (
    "gateway_rows_select",
    "gateway_rows_insert",
    "gateway_rows_update",
    "gateway_rows_delete",
)
TRUSTED = "current_setting('gateway.key_type', true) IN ('server', 'admin')"
USER = "nullif(current_setting('gateway.user_id', true), '')::uuid"


def _mine(owner_column: str) -> sql.Composed:
    """Trusted key, or the row's owner is the session's user."""
    return sql.SQL("(" + TRUSTED + " OR {} = " + USER + ")").format(
        sql.Identifier(check_name(owner_column, "owner column"))
    )


def policy_statements(
    schema: str, table: str, owner_column: str | None, row_access: str
) -> list[sql.Composed]:
    """The DDL that brings a table's policies to ``row_access`` (idempotent)."""
    target = sql.SQL("{}.{}").format(
        sql.Identifier(schema), sql.Identifier(check_name(table, "table name"))
    )
    statements = [
        sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(name), target)
        for name in POLICY_NAMES
    ]
    if row_access == "all" or owner_column is None:
        statements.append(sql.SQL("ALTER TABLE {} NO FORCE ROW LEVEL SECURITY").format(target))
        statements.append(sql.SQL("ALTER TABLE {} DISABLE ROW LEVEL SECURITY").format(target))
        return statements
    mine = _mine(owner_column)
    read = sql.SQL("true") if row_access == "public_read" else mine
    statements += [
        sql.SQL("CREATE POLICY gateway_rows_select ON {} FOR SELECT USING {}").format(
            target, sql.SQL("({})").format(read)
        ),
        sql.SQL("CREATE POLICY gateway_rows_insert ON {} FOR INSERT WITH CHECK {}").format(
            target, mine
        ),
        sql.SQL("CREATE POLICY gateway_rows_update ON {} FOR UPDATE USING {} WITH CHECK {}").format(
            target, mine, mine
        ),
        sql.SQL("CREATE POLICY gateway_rows_delete ON {} FOR DELETE USING {}").format(target, mine),
        sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(target),
        sql.SQL("ALTER TABLE {} FORCE ROW LEVEL SECURITY").format(target),
    ]
    # the compiler's condition should use an index: one on the owner column
    index = sql.Identifier(f"{table[:48]}_owner_idx")
    statements.append(
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} ({})").format(
            index, target, sql.Identifier(owner_column)
        )
    )
    return statements


def apply_row_policies(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    owner_column: str | None,
    row_access: str,
) -> None:
    """Run ``policy_statements`` as the project role (the table's owner), in the caller's
    transaction."""
    conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(schema)))
    for statement in policy_statements(schema, table, owner_column, row_access):
        conn.execute(statement)
    conn.execute("RESET ROLE")
