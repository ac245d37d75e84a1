"""Rows that belong to users, in the database alone: the row policies without the
compiler's owner condition, table definitions, provisioning, the admitter resolving a
session, and migration 0009's round trip.

The same rules through real gateway processes: tests/cluster/test_owner_rows.py.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.control import tabledef
from gateway.control.projects import connect, create_project
from gateway.control.tables import create_table
from tests.support.owner_rows import NOTES_TABLE, make_session, make_user, owner_project
from tests.support.scratchdb import scratch_database

# --- row-level security alone ------------------------------------------------------------


def _as_public(
    conn: psycopg.Connection[Any], schema: str, key_type: str, user_id: str | None
) -> None:
    """What the executor sets for a request, in the caller's transaction."""
    conn.execute(
        "SELECT set_config('role', %s, true), set_config('gateway.key_type', %s, true),"
        " set_config('gateway.user_id', %s, true)",
        [schema, key_type, user_id or ""],
    )


def test_row_policies_alone_hide_foreign_rows(pg_url: str, make_project: Any) -> None:
    """Statements WITHOUT the compiler's owner condition, run as the project role with a
    public key's settings: PostgreSQL alone keeps each user to their rows."""
    project = owner_project(make_project)
    pid, schema = project["id"], project["schema_name"]
    alice, bob = make_user(pg_url, pid), make_user(pg_url, pid)
    notes = sql.Identifier(schema, "notes")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("INSERT INTO {} (user_id, body) VALUES (%s, 'a'), (%s, 'a'), (%s, 'b')").format(
                notes
            ),
            [alice, alice, bob],
        )
    with psycopg.connect(pg_url) as conn:
        _as_public(conn, schema, "public", alice)
        rows = conn.execute(sql.SQL("SELECT user_id::text, body FROM {}").format(notes)).fetchall()
        assert rows and {r[0] for r in rows} == {alice}
        changed = conn.execute(sql.SQL("UPDATE {} SET body = 'x'").format(notes)).rowcount
        assert changed == 2
        deleted = conn.execute(sql.SQL("DELETE FROM {}").format(notes)).rowcount
        assert deleted == 2
        conn.rollback()

        _as_public(conn, schema, "public", alice)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                sql.SQL("INSERT INTO {} (user_id, body) VALUES (%s, 'forged')").format(notes),
                [bob],
            )
        conn.rollback()
        _as_public(conn, schema, "public", alice)
        # handing one's row to another user fails the policy's WITH CHECK
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(sql.SQL("UPDATE {} SET user_id = %s").format(notes), [bob])
        conn.rollback()

        # no session: nothing; no settings at all (the role alone): nothing
        _as_public(conn, schema, "public", None)
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(notes)).fetchone() == (0,)
        conn.rollback()
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(schema)))
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(notes)).fetchone() == (0,)
        conn.rollback()

        # server keys pass the policies: every row
        _as_public(conn, schema, "server", None)
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(notes)).fetchone() == (3,)
        conn.rollback()


def test_table_definition_checks() -> None:
    with pytest.raises(tabledef.DefinitionError, match="needs an owner_column"):
        tabledef.parse_table({**NOTES_TABLE, "owner_column": None})
    with pytest.raises(tabledef.DefinitionError, match="not a column"):
        tabledef.parse_table({**NOTES_TABLE, "owner_column": "nobody"})
    with pytest.raises(tabledef.DefinitionError, match="must be one of"):
        tabledef.parse_table({**NOTES_TABLE, "row_access": "mine"})
    parsed = tabledef.parse_table(NOTES_TABLE)
    assert (parsed.owner_column, parsed.row_access) == ("user_id", "owner")


def test_table_create_via_provisioning_installs_policies(pg_url: str, make_project: Any) -> None:
    project = make_project()
    table = tabledef.parse_table({**NOTES_TABLE, "name": f"n_{uuid.uuid4().hex[:6]}"})
    with connect(pg_url) as conn:
        create_table(conn, project["id"], table)
        policies = conn.execute(
            "SELECT policyname FROM pg_policies WHERE schemaname = %s AND tablename = %s",
            [project["schema_name"], table.name],
        ).fetchall()
        forced = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass",
            [f"{project['schema_name']}.{table.name}"],
        ).fetchone()
    assert {p["policyname"] for p in policies} == {
        "gateway_rows_select",
        "gateway_rows_insert",
        "gateway_rows_update",
        "gateway_rows_delete",
    }
    assert forced == {"relrowsecurity": True, "relforcerowsecurity": True}


# --- the admitter itself -------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_admitter_resolves_the_session_in_its_statement(
    pg_url: str, make_project: Any, enabled: bool
) -> None:
    """Both admission paths (counters on, and the bench-only key lookup) answer the
    session's user, or the session's refusal after counting the request."""
    import asyncio

    from gateway.admission.admitter import Admitter
    from gateway.auth.tokens import token_hash
    from gateway.errors import GatewayError
    from gateway.settings import Settings

    project = make_project(table=NOTES_TABLE)
    pid = project["id"]
    user = make_user(pg_url, pid)
    token = make_session(pg_url, pid, user)
    adm = Admitter(Settings(database_url=pg_url, admission_enabled=enabled))

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            key = project["public_key"]
            got = await adm.admit(conn, key, 1, session_hash=token_hash(token))
            assert got.principal.user_id == user and got.principal.is_public
            plain = await adm.admit(conn, key, 1)
            assert plain.principal.user_id is None
            with pytest.raises(GatewayError) as refused:
                await adm.admit(conn, key, 1, session_hash=token_hash("nope"))
            assert (refused.value.code, refused.value.status) == ("SESSION_NOT_FOUND", 401)
            assert adm.stats()["db_session_refused"] == 1

    asyncio.run(scenario())
    if enabled:
        with psycopg.connect(pg_url) as conn:
            row = conn.execute(
                "SELECT window_count FROM gateway.admission_counters WHERE project_id = %s",
                [pid],
            ).fetchone()
        assert row == (3,)  # the refused session was a request too


def test_migration_0009_downgrade_drops_policies_and_upgrades_again(pg_url: str) -> None:
    from gateway.db import migrate

    with scratch_database(pg_url, "mig") as url:
        migrate.upgrade(url)
        with connect(url) as conn:
            project = create_project(conn, "mig-owner")
            create_table(conn, project.id, tabledef.parse_table(NOTES_TABLE))
        target = f"{project.schema_name}.notes"
        rls = "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass"
        with psycopg.connect(url) as conn:
            assert conn.execute(rls, [target]).fetchone() == (True,)
        migrate.downgrade(url, "0008")
        with psycopg.connect(url) as conn:
            assert conn.execute(rls, [target]).fetchone() == (False,)
            # the capture trigger still works with 0007's function
            conn.execute(f"INSERT INTO {target} (body) VALUES ('after downgrade')")
        migrate.upgrade(url)
        with psycopg.connect(url) as conn:
            assert conn.execute(
                "SELECT row_access FROM gateway.table_registry WHERE name = 'notes'"
            ).fetchone() == ("all",)
