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

The policies' text is the template ``gateway/db/sql/row_policies.sql``; this module
renders it for one table (identifiers quoted by ``psycopg.sql``). Expressions only use
``current_setting`` and the owner column: the project role has no privilege on schema
``gateway``, so the policies can't call gateway functions.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

from gateway.control.tabledef import check_name
from gateway.db.sql import current

POLICY_NAMES = (
    "gateway_rows_select",
    "gateway_rows_insert",
    "gateway_rows_update",
    "gateway_rows_delete",
)


def _template() -> tuple[str, list[str]]:
    """``row_policies.sql`` without its comments: the ``{mine}`` condition (its first
    paragraph) and the ``CREATE POLICY`` statements."""
    text = "\n".join(
        line for line in current("row_policies").splitlines() if not line.startswith("--")
    )
    mine, policies = text.strip().split("\n\n", 1)
    return mine, [s.strip() for s in policies.split(";") if s.strip()]


MINE, POLICIES = _template()


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
    mine = sql.SQL(MINE).format(owner=sql.Identifier(check_name(owner_column, "owner column")))
    read = sql.SQL("(true)") if row_access == "public_read" else sql.SQL("({})").format(mine)
    statements += [
        sql.SQL(policy).format(table=target, mine=mine, read=read) for policy in POLICIES
    ]
    statements += [
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
