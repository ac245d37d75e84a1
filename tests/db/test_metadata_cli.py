"""``gateway table add-column | set-access | drop``: success, refusals, and the notification each
change sends (that is what invalidates every instance's cache)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.cli import assert_refused, cli_json, run_cli

CHANNEL = "gateway_metadata"


@pytest.fixture
def listen_conn(pg_url: str) -> Any:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        yield conn


def notified(conn: psycopg.Connection[Any], timeout: float = 5.0) -> set[str]:
    return {n.payload for n in conn.notifies(timeout=timeout, stop_after=1) if n.channel == CHANNEL}


def drain(conn: psycopg.Connection[Any]) -> None:
    for _ in conn.notifies(timeout=0.2):
        pass


def table_columns(db: Any, schema: str, table: str) -> list[str]:
    rows = db.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
        [schema, table],
    ).fetchall()
    return [r["column_name"] for r in rows]


def registry_column(db: Any, project_id: str, table: str, column: str) -> dict[str, Any] | None:
    return db.execute(
        """
        SELECT c.* FROM gateway.column_registry c
          JOIN gateway.table_registry t ON t.id = c.table_id
         WHERE t.project_id = %s AND t.name = %s AND c.name = %s
        """,
        [project_id, table, column],
    ).fetchone()


def test_add_column(pg_url: str, make_project: Any, db: Any, listen_conn: Any) -> None:
    project = make_project()
    pid, schema = project["id"], project["schema_name"]
    db.execute(f"INSERT INTO {schema}.todos (title) VALUES ('one')")
    drain(listen_conn)

    out = cli_json(
        pg_url,
        *("table", "add-column", project["name"], "todos", "--name", "priority"),
        *("--type", "int", "--nullable", "--client-write", "false"),
    )
    assert out["column"] == {
        "name": "priority",
        "type": "integer",
        "ordinal": 9,
        "nullable": True,
        "has_default": False,
        "sensitive": False,
        "client_read": True,
        "client_write": False,
    }
    assert notified(listen_conn) == {pid}
    assert table_columns(db, schema, "todos")[-1] == "priority"
    reg = registry_column(db, pid, "todos", "priority")
    assert reg is not None and reg["data_type"] == "integer" and not reg["allow_client_write"]

    # NOT NULL with a default on a table with rows: fine; sensitive flag registered.
    out = cli_json(
        pg_url,
        *("table", "add-column", pid, "todos", "--name", "secret", "--type", "text"),
        *("--default", '"x"', "--sensitive"),
    )
    assert out["column"]["has_default"] and out["column"]["sensitive"]
    assert not out["column"]["nullable"]
    assert db.execute(f"SELECT secret FROM {schema}.todos").fetchone() == {"secret": "x"}

    # NOT NULL without a default on an empty table: fine.
    db.execute(f"DELETE FROM {schema}.todos")
    cli_json(pg_url, "table", "add-column", pid, "todos", "--name", "must", "--type", "bigint")
    assert registry_column(db, pid, "todos", "must")["is_nullable"] is False  # type: ignore[index]


def test_add_column_refusals_change_nothing(pg_url: str, make_project: Any, db: Any) -> None:
    project = make_project()
    pid, schema = project["id"], project["schema_name"]
    db.execute(f"INSERT INTO {schema}.todos (title) VALUES ('one')")
    before = table_columns(db, schema, "todos")
    add = ("table", "add-column", pid, "todos")
    cases = [
        (("--name", "needed", "--type", "text"), "has rows"),
        (("--name", "Bad-Name", "--type", "text"), "not a valid name"),
        (("--name", "x", "--type", "money"), "not allowed"),
        (("--name", "xmin", "--type", "text"), "reserved"),
        (("--name", "title", "--type", "text", "--nullable"), "already has a column"),
        (("--name", "n", "--type", "int", "--default", "nope"), "not a JSON literal"),
        (("--name", "n", "--type", "int", "--default", '"abc"'), "invalid default"),
        (("--name", "n", "--type", "int", "--client-read", "maybe"), "true or false"),
    ]
    for extra, fragment in cases:
        assert_refused(run_cli(pg_url, *add, *extra), fragment)
    assert_refused(
        run_cli(pg_url, "table", "add-column", pid, "nope", "--name", "a", "--type", "text"),
        "no table 'nope'",
    )
    assert_refused(
        run_cli(pg_url, "table", "add-column", "no-such-project", "todos", "--name", "a",
                "--type", "text"),
        "no project",
    )  # fmt: skip
    assert table_columns(db, schema, "todos") == before
    count = db.execute(
        "SELECT count(*) AS n FROM gateway.column_registry c JOIN gateway.table_registry t "
        "ON t.id = c.table_id WHERE t.project_id = %s",
        [pid],
    ).fetchone()
    assert count["n"] == len(before)


def test_set_access(pg_url: str, make_project: Any, db: Any, listen_conn: Any) -> None:
    project = make_project()
    pid = project["id"]
    drain(listen_conn)
    out = cli_json(pg_url, "table", "set-access", pid, "todos", "--client-write", "false")
    assert out == {
        "project_id": pid,
        "table": "todos",
        "column": None,
        "client_read": True,
        "client_write": False,
    }
    assert notified(listen_conn) == {pid}
    out = cli_json(
        pg_url,
        *("table", "set-access", pid, "todos", "--column", "title"),
        *("--sensitive", "true", "--client-read", "false"),
    )
    assert (out["column"], out["sensitive"], out["client_read"], out["client_write"]) == (
        "title",
        True,
        False,
        True,
    )
    assert notified(listen_conn) == {pid}
    reg = registry_column(db, pid, "todos", "title")
    assert reg is not None and reg["is_sensitive"] and not reg["allow_client_read"]

    refusals = [
        ((), "nothing to change"),
        (("--sensitive", "true"), "give --column"),
        (("--column", "nope", "--client-read", "true"), "no column 'nope'"),
        (("--column", "Bad Name", "--client-read", "true"), "not a valid name"),
        (("--client-read", "perhaps"), "true or false"),
    ]
    for extra, fragment in refusals:
        assert_refused(run_cli(pg_url, "table", "set-access", pid, "todos", *extra), fragment)
    assert_refused(
        run_cli(pg_url, "table", "set-access", pid, "nope", "--client-read", "true"), "no table"
    )
    reg_after = registry_column(db, pid, "todos", "title")
    assert reg_after == reg


def test_drop(pg_url: str, make_project: Any, db: Any, listen_conn: Any) -> None:
    project = make_project()
    pid, schema = project["id"], project["schema_name"]
    drain(listen_conn)
    out = cli_json(pg_url, "table", "drop", project["name"], "todos")
    assert out == {"project_id": pid, "schema_name": schema, "table": "todos", "dropped": True}
    assert notified(listen_conn) == {pid}
    assert db.execute("SELECT to_regclass(%s) AS r", [f"{schema}.todos"]).fetchone()["r"] is None
    assert (
        db.execute(
            "SELECT 1 FROM gateway.table_registry WHERE project_id = %s AND name = 'todos'", [pid]
        ).fetchone()
        is None
    )
    assert_refused(run_cli(pg_url, "table", "drop", pid, "todos"), "no table 'todos'")
    assert_refused(run_cli(pg_url, "table", "drop", pid, "Robert'); DROP"), "not a valid name")
    assert_refused(run_cli(pg_url, "table", "drop", "no-such-project", "todos"), "no project")


def test_drop_refused_when_other_objects_depend(pg_url: str, make_project: Any, db: Any) -> None:
    project = make_project()
    pid, schema = project["id"], project["schema_name"]
    db.execute(f"CREATE VIEW {schema}.v AS SELECT id FROM {schema}.todos")
    try:
        assert_refused(run_cli(pg_url, "table", "drop", pid, "todos"), "can't be dropped")
        assert db.execute("SELECT to_regclass(%s) AS r", [f"{schema}.todos"]).fetchone()["r"]
        assert db.execute(
            "SELECT 1 FROM gateway.table_registry WHERE project_id = %s AND name = 'todos'", [pid]
        ).fetchone()
    finally:
        db.execute(f"DROP VIEW {schema}.v")
