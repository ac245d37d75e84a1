"""Realtime capture: the migration, the definer trigger, provisioning and the CLI."""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.control import tabledef
from gateway.control.errors import ProvisioningError
from gateway.control.projects import connect, create_project
from gateway.control.realtime_capture import set_realtime
from gateway.control.tables import create_table
from gateway.db import migrate
from tests.support.cli import assert_refused, cli_json, run_cli
from tests.support.realtime import changes, trigger_count
from tests.support.scratchdb import scratch_database
from tests.support.tables import TODOS_TABLE


def registry_realtime(db: psycopg.Connection[Any], project_id: str, table: str) -> bool:
    row = db.execute(
        "SELECT realtime FROM gateway.table_registry WHERE project_id = %s AND name = %s",
        [project_id, table],
    ).fetchone()
    assert row is not None
    return bool(row["realtime"])


def test_table_definition_realtime_defaults_on() -> None:
    assert tabledef.parse_table(TODOS_TABLE).realtime is True
    off = tabledef.parse_table({**TODOS_TABLE, "realtime": False})
    assert off.realtime is False
    with pytest.raises(tabledef.DefinitionError):
        tabledef.parse_table({**TODOS_TABLE, "realtime": "yes"})


def test_capture_insert_update_delete(db: psycopg.Connection[Any], make_project: Any) -> None:
    project = make_project()
    schema = project["schema_name"]
    assert trigger_count(db, schema, "todos") == 1
    assert registry_realtime(db, project["id"], "todos") is True
    todos = sql.Identifier(schema, "todos")
    row = db.execute(
        sql.SQL(
            "INSERT INTO {} (title, tags, meta) VALUES ('a', '{{x,y}}', '{{\"k\": 1}}') "
            "RETURNING id"
        ).format(todos)
    ).fetchone()
    assert row is not None
    todo_id = row["id"]
    db.execute(sql.SQL("UPDATE {} SET done = true WHERE id = %s").format(todos), [todo_id])
    db.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(todos), [todo_id])
    got = changes(db, project["id"])
    assert [c["op"] for c in got] == ["insert", "update", "delete"]
    assert all(c["table_name"] == "todos" for c in got)
    assert all(c["pk"] == {"id": todo_id} for c in got)
    assert got[0]["row"]["title"] == "a"
    assert got[0]["row"]["tags"] == ["x", "y"]
    assert got[0]["row"]["meta"] == {"k": 1}
    assert got[0]["row"]["done"] is False
    assert got[1]["row"]["done"] is True
    assert got[2]["row"] is None  # a delete carries only the old primary key
    # three autocommit statements: three transactions, in order
    assert got[0]["xid"] < got[1]["xid"] < got[2]["xid"]


def test_capture_primary_key_change_is_delete_then_insert(
    db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project()
    todos = sql.Identifier(project["schema_name"], "todos")
    db.execute(sql.SQL("INSERT INTO {} (id, title) VALUES (10, 'a')").format(todos))
    db.execute(sql.SQL("UPDATE {} SET id = 11 WHERE id = 10").format(todos))
    got = changes(db, project["id"])
    assert [(c["op"], c["pk"]) for c in got] == [
        ("insert", {"id": 10}),
        ("delete", {"id": 10}),
        ("insert", {"id": 11}),
    ]


def test_composite_primary_key_and_one_transaction(
    db: psycopg.Connection[Any], make_project: Any
) -> None:
    table = {
        "name": "pairs",
        "columns": [
            {"name": "a", "type": "text", "primary_key": True},
            {"name": "b", "type": "integer", "primary_key": True},
            {"name": "v", "type": "numeric"},
        ],
    }
    project = make_project(table=table)
    pairs = sql.Identifier(project["schema_name"], "pairs")
    with db.transaction():
        db.execute(sql.SQL("INSERT INTO {} VALUES ('x', 1, 1.5), ('y', 2, 2)").format(pairs))
        db.execute(sql.SQL("UPDATE {} SET v = 3 WHERE a = 'x'").format(pairs))
    got = changes(db, project["id"])
    assert [c["pk"] for c in got] == [{"a": "x", "b": 1}, {"a": "y", "b": 2}, {"a": "x", "b": 1}]
    assert len({c["xid"] for c in got}) == 1  # one transaction, one xid
    assert [c["id"] for c in got] == sorted(c["id"] for c in got)
    assert float(got[2]["row"]["v"]) == 3


def test_table_created_without_realtime_has_no_trigger(
    db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project(table={**TODOS_TABLE, "realtime": False})
    assert trigger_count(db, project["schema_name"], "todos") == 0
    assert registry_realtime(db, project["id"], "todos") is False
    db.execute(
        sql.SQL("INSERT INTO {} (title) VALUES ('a')").format(
            sql.Identifier(project["schema_name"], "todos")
        )
    )
    assert changes(db, project["id"]) == []


def test_project_role_cannot_write_changes_directly(
    db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project()
    other = make_project()
    role = sql.Identifier(project["schema_name"])
    todos = sql.Identifier(project["schema_name"], "todos")
    with db.transaction():
        db.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
        # writing its own table as the project role is captured through the definer function
        db.execute(sql.SQL("INSERT INTO {} (title) VALUES ('mine')").format(todos))
    assert [c["op"] for c in changes(db, project["id"])] == ["insert"]

    forged = [
        sql.SQL(
            "INSERT INTO gateway.changes (project_id, table_name, op, pk) "
            "VALUES ({}, 'todos', 'insert', '{{}}')"
        ).format(sql.Literal(other["id"])),
        sql.SQL("DELETE FROM gateway.changes"),
        sql.SQL("SELECT * FROM gateway.changes"),
        # attaching the definer function to its own table with another project's id
        sql.SQL(
            "CREATE TRIGGER forged AFTER INSERT ON {} FOR EACH ROW "
            "EXECUTE FUNCTION gateway.capture_change({}, 'id')"
        ).format(sql.Identifier(project["schema_name"], "todos"), sql.Literal(other["id"])),
    ]
    for statement in forged:
        with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
            db.execute(sql.SQL("SET LOCAL ROLE {}").format(role))
            db.execute(statement)
    assert changes(db, other["id"]) == []


def test_cli_table_realtime_enable_disable(
    db: psycopg.Connection[Any], pg_url: str, make_project: Any
) -> None:
    project = make_project()
    schema, name = project["schema_name"], project["name"]
    off = cli_json(pg_url, "table", "realtime", name, "todos", "--disable")
    assert off == {
        "project_id": project["id"],
        "table": "todos",
        "table_id": off["table_id"],
        "realtime": False,
    }
    assert trigger_count(db, schema, "todos") == 0
    assert registry_realtime(db, project["id"], "todos") is False
    db.execute(
        sql.SQL("INSERT INTO {} (title) VALUES ('x')").format(sql.Identifier(schema, "todos"))
    )
    assert changes(db, project["id"]) == []

    on = cli_json(pg_url, "table", "realtime", project["id"], "todos", "--enable")
    assert on["realtime"] is True
    assert trigger_count(db, schema, "todos") == 1
    assert registry_realtime(db, project["id"], "todos") is True
    # enabling twice is idempotent: still exactly one trigger
    cli_json(pg_url, "table", "realtime", name, "todos", "--enable")
    assert trigger_count(db, schema, "todos") == 1
    db.execute(
        sql.SQL("INSERT INTO {} (title) VALUES ('y')").format(sql.Identifier(schema, "todos"))
    )
    assert [c["row"]["title"] for c in changes(db, project["id"])] == ["y"]


def test_cli_table_realtime_refuses_bad_input(pg_url: str, make_project: Any) -> None:
    project = make_project()
    name = project["name"]
    assert_refused(run_cli(pg_url, "table", "realtime", name, "todos"), "exactly one")
    assert_refused(
        run_cli(pg_url, "table", "realtime", name, "todos", "--enable", "--disable"),
        "exactly one",
    )
    assert_refused(run_cli(pg_url, "table", "realtime", name, "nope", "--enable"), "no table")
    assert_refused(
        run_cli(
            pg_url, "table", "realtime", f"missing-{uuid.uuid4().hex[:6]}", "todos", "--enable"
        ),
        "no project",
    )
    assert_refused(
        run_cli(pg_url, "table", "realtime", name, 'todos"; drop table x', "--disable"),
        "no table",
    )


def test_set_realtime_is_one_transaction(
    db: psycopg.Connection[Any], pg_url: str, make_project: Any
) -> None:
    """If the trigger can't be created, the registry flag doesn't change either."""
    project = make_project(table={**TODOS_TABLE, "realtime": False})
    # sabotage: remove the primary-key flags so the trigger refuses to be created
    db.execute(
        """
        UPDATE gateway.column_registry c SET is_primary_key = false
          FROM gateway.table_registry t
         WHERE t.id = c.table_id AND t.project_id = %s AND t.name = 'todos'
        """,
        [project["id"]],
    )
    with connect(pg_url) as conn, pytest.raises(ProvisioningError):
        set_realtime(conn, project["id"], "todos", enabled=True)
    assert registry_realtime(db, project["id"], "todos") is False
    assert trigger_count(db, project["schema_name"], "todos") == 0


def test_migration_downgrade_drops_triggers_and_upgrades_again(pg_url: str) -> None:
    with scratch_database(pg_url, "rt") as url:
        migrate.upgrade(url)
        with connect(url) as conn:
            project = create_project(conn, "rt-mig")
            create_table(conn, project.id, tabledef.parse_table(TODOS_TABLE))
        migrate.downgrade(url, "0001")
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('gateway.changes')").fetchone() == (None,)
            assert conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = 'gateway_realtime_capture'"
            ).fetchone() == (0,)
            assert conn.execute(
                "SELECT bool_or(realtime) FROM gateway.table_registry"
            ).fetchone() == (False,)
            # the project's table still works without the function
            conn.execute(
                sql.SQL("INSERT INTO {} (title) VALUES ('x')").format(
                    sql.Identifier(project.schema_name, "todos")
                )
            )
        migrate.downgrade(url, "base")
        migrate.upgrade(url)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT to_regclass('gateway.changes')").fetchone() is not None
