"""TRUNCATE as one ``truncate`` event, and ``leave`` for rows an update moves out of a
subscriber's filter: the capture (migration 0007) and the hub, against a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from psycopg import sql

from gateway.control import tabledef
from gateway.control.projects import connect, create_project
from gateway.control.realtime_capture import set_realtime
from gateway.control.tables import create_table
from gateway.db import migrate
from gateway.metadata.cache import load_catalog
from gateway.realtime.events import CHANGE_KINDS, Cursor, Event
from gateway.realtime.filters import Filter
from tests.support.polling import wait_until_async
from tests.support.realtime import TIMEOUT_S, Hub, Reader, awrite, changes, run, trigger_count
from tests.support.scratchdb import scratch_database
from tests.support.tables import TODOS_TABLE, todos

TRUNCATE_TRIGGER = "gateway_realtime_truncate"


def truncate_trigger_count(db: psycopg.Connection[Any], schema: str, table: str) -> int:
    row = db.execute(
        """
        SELECT count(*) AS n FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND t.tgname = %s
        """,
        [schema, table, TRUNCATE_TRIGGER],
    ).fetchone()
    assert row is not None
    return int(row["n"] if isinstance(row, dict) else row[0])


# --- capture ----------------------------------------------------------------------------


def test_truncate_is_captured_once_per_table(
    db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project()
    schema = project["schema_name"]
    assert truncate_trigger_count(db, schema, "todos") == 1
    t = todos(project)
    db.execute(sql.SQL("INSERT INTO {} (title) SELECT 'x' || g FROM generate_series(1, 50) g")
               .format(t))  # fmt: skip
    db.execute(sql.SQL("TRUNCATE {}").format(t))
    got = changes(db, project["id"])
    assert [c["op"] for c in got].count("insert") == 50
    assert got[-1]["op"] == "truncate"
    assert got[-1]["pk"] == {} and got[-1]["row"] is None
    assert [c["op"] for c in got].count("truncate") == 1  # one event, not one per row


def test_truncate_as_the_project_role_is_captured(
    db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project()
    with db.transaction():
        db.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(project["schema_name"])))
        db.execute(sql.SQL("TRUNCATE {}").format(todos(project)))
    assert [c["op"] for c in changes(db, project["id"])] == ["truncate"]


def test_update_records_the_old_row(db: psycopg.Connection[Any], make_project: Any) -> None:
    project = make_project()
    t = todos(project)
    db.execute(sql.SQL("INSERT INTO {} (id, title, tags) VALUES (7, 'a', '{{x}}')").format(t))
    db.execute(sql.SQL("UPDATE {} SET done = true, tags = '{{y}}' WHERE id = 7").format(t))
    db.execute(sql.SQL("DELETE FROM {} WHERE id = 7").format(t))
    rows = db.execute(
        "SELECT op, row, old_row FROM gateway.changes WHERE project_id = %s ORDER BY xid, id",
        [project["id"]],
    ).fetchall()
    assert [(r["op"], r["old_row"] is None) for r in rows] == [
        ("insert", True), ("update", False), ("delete", True)
    ]  # fmt: skip
    assert rows[1]["old_row"] == rows[0]["row"]
    assert rows[1]["old_row"]["done"] is False and rows[1]["old_row"]["tags"] == ["x"]
    assert rows[1]["row"]["done"] is True and rows[1]["row"]["tags"] == ["y"]


def test_realtime_disable_and_enable_handle_the_truncate_trigger(
    db: psycopg.Connection[Any], pg_url: str, make_project: Any
) -> None:
    project = make_project()
    schema = project["schema_name"]
    with connect(pg_url) as conn:
        set_realtime(conn, project["id"], "todos", enabled=False)
    assert truncate_trigger_count(db, schema, "todos") == 0
    db.execute(sql.SQL("TRUNCATE {}").format(todos(project)))
    assert changes(db, project["id"]) == []
    with connect(pg_url) as conn:
        set_realtime(conn, project["id"], "todos", enabled=True)
        set_realtime(conn, project["id"], "todos", enabled=True)  # idempotent
    assert truncate_trigger_count(db, schema, "todos") == 1
    assert trigger_count(db, schema, "todos") == 1


def test_upgrade_adds_the_truncate_trigger_to_captured_tables(pg_url: str) -> None:
    """Tables captured before 0007 get the TRUNCATE trigger from the upgrade; the
    downgrade removes it and restores 0005's capture."""
    with scratch_database(pg_url, "rt") as url:
        # tables provisioned by today's code, then the schema taken back to before 0007
        # (its downgrade drops the TRUNCATE triggers): as 0005/0006 left captured tables
        migrate.upgrade(url)
        with connect(url) as conn:
            project = create_project(conn, "rt-0006")
            create_table(conn, project.id, tabledef.parse_table(TODOS_TABLE))
            quiet = tabledef.parse_table({**TODOS_TABLE, "name": "quiet", "realtime": False})
            create_table(conn, project.id, quiet)
        migrate.downgrade(url, "0006")
        with psycopg.connect(url, autocommit=True) as conn:
            n = conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = %s", [TRUNCATE_TRIGGER]
            ).fetchone()
            assert n == (0,)
        migrate.upgrade(url)
        t = sql.Identifier(project.schema_name, "todos")
        with psycopg.connect(url, autocommit=True) as conn:
            rels = conn.execute(
                "SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = %s",
                [TRUNCATE_TRIGGER],
            ).fetchall()
            assert rels == [(f"{project.schema_name}.todos",)]  # not on the uncaptured table
            conn.execute(sql.SQL("INSERT INTO {} (title) VALUES ('a')").format(t))
            conn.execute(sql.SQL("UPDATE {} SET done = true").format(t))
            conn.execute(sql.SQL("TRUNCATE {}").format(t))
            got = conn.execute(
                "SELECT project_id::text, op, old_row->'done' FROM gateway.changes ORDER BY xid, id"
            ).fetchall()
            assert got == [
                (project.id, "insert", None),
                (project.id, "update", False),
                (project.id, "truncate", None),
            ]
        migrate.downgrade(url, "0006")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(
                "SELECT count(*) FROM pg_trigger WHERE tgname = %s", [TRUNCATE_TRIGGER]
            ).fetchone() == (0,)
            assert conn.execute(
                "SELECT count(*) FROM gateway.changes WHERE op = 'truncate'"
            ).fetchone() == (0,)
            conn.execute(sql.SQL("INSERT INTO {} (title) VALUES ('b')").format(t))  # 0005's
            conn.execute(sql.SQL("UPDATE {} SET done = true").format(t))
            conn.execute(sql.SQL("TRUNCATE {}").format(t))  # not captured, not failing
            ops = conn.execute("SELECT op FROM gateway.changes ORDER BY xid, id").fetchall()
            assert ops == [("insert",), ("update",), ("insert",), ("update",)]
        migrate.upgrade(url)


# --- the hub ----------------------------------------------------------------------------


def delivered(reader: Reader) -> list[Event]:
    return [e for e in reader.events if e.kind in CHANGE_KINDS]


async def wait_delivered(reader: Reader, n: int) -> list[Event]:
    await wait_until_async(
        lambda: len(delivered(reader)) >= n or reader.done.is_set(), timeout=TIMEOUT_S
    )
    got = delivered(reader)
    assert len(got) >= n, reader.events
    return got


def test_truncate_reaches_every_subscriber_as_one_event(pg_url: str, make_project: Any) -> None:
    project = make_project()
    t = todos(project)

    async def main() -> None:
        async with Hub(pg_url) as hub:
            everything = Reader(await hub.subscribe(project["id"], "todos"))
            done_only = Reader(
                await hub.subscribe(
                    project["id"], "todos",
                    filters=[Filter("done", "eq", True)], column_types={"done": "boolean"},
                )
            )  # fmt: skip
            await awrite(pg_url, sql.SQL("INSERT INTO {} (title) SELECT 'r' || g "
                                         "FROM generate_series(1, 20) g").format(t))  # fmt: skip
            await awrite(pg_url, sql.SQL("TRUNCATE {}").format(t))
            await awrite(pg_url, sql.SQL("INSERT INTO {} (title, done) VALUES ('after', true)")
                         .format(t))  # fmt: skip
            got = await wait_delivered(everything, 22)
            assert [e.kind for e in got] == ["insert"] * 20 + ["truncate", "insert"]
            assert got[20].data == {"table": "todos", "op": "truncate"}
            # a filter doesn't hide a truncate: every row of the table is gone
            got = await wait_delivered(done_only, 2)
            assert [e.kind for e in got] == ["truncate", "insert"]
            assert got[0].cursor == delivered(everything)[20].cursor
            await asyncio.sleep(0.3)
            assert len(delivered(everything)) == 22 and len(delivered(done_only)) == 2
            since = delivered(everything)[0].cursor
            await everything.stop()
            await done_only.stop()
        # resuming from before the truncate (another hub: the catch-up path) gets it too
        async with Hub(pg_url) as other:
            resumed = Reader(await other.subscribe(project["id"], "todos", since=since))
            got = await wait_delivered(resumed, 21)
            assert [e.kind for e in got] == ["insert"] * 19 + ["truncate", "insert"]
            await resumed.stop()

    run(main)


def test_update_out_of_the_filter_is_leave_with_the_key_only(
    pg_url: str, make_project: Any
) -> None:
    project = make_project()
    t = todos(project)
    open_only = [Filter("done", "eq", False)]
    types = {"done": "boolean"}

    async def main() -> None:
        async with Hub(pg_url) as hub:
            filtered = Reader(
                await hub.subscribe(project["id"], "todos", filters=open_only, column_types=types)
            )
            everything = Reader(await hub.subscribe(project["id"], "todos"))
            steps = [
                "INSERT INTO {} (id, title) VALUES (1, 'a')",  # insert (matches)
                "UPDATE {} SET title = 'b' WHERE id = 1",  # update (still matches)
                "UPDATE {} SET done = true WHERE id = 1",  # leave
                "UPDATE {} SET title = 'c' WHERE id = 1",  # nothing (matched neither time)
                "UPDATE {} SET done = false WHERE id = 1",  # update (back in)
                "INSERT INTO {} (id, title, done) VALUES (2, 'x', true)",  # nothing
            ]
            for step in steps:
                await awrite(pg_url, sql.SQL(step).format(t))
            got = await wait_delivered(everything, 6)
            assert [e.kind for e in got] == ["insert", "update", "update", "update", "update",
                                             "insert"]  # fmt: skip
            got = await wait_delivered(filtered, 4)
            await asyncio.sleep(0.3)
            got = delivered(filtered)
            assert [e.kind for e in got] == ["insert", "update", "leave", "update"]
            assert got[2].data == {"table": "todos", "op": "leave", "row": {"id": 1}}
            assert got[2].cursor == delivered(everything)[2].cursor
            assert got[3].data["row"]["title"] == "c"
            since = got[0].cursor
            await filtered.stop()
            await everything.stop()
        # the catch-up path decides the same
        async with Hub(pg_url) as other:
            resumed = Reader(
                await other.subscribe(
                    project["id"], "todos", filters=open_only, column_types=types, since=since
                )
            )
            got = await wait_delivered(resumed, 3)
            assert [e.kind for e in got] == ["update", "leave", "update"]
            await resumed.stop()

    run(main)


def test_catch_up_applies_the_registry_as_of_its_changes(
    pg_url: str, db: psycopg.Connection[Any], make_project: Any
) -> None:
    """A resuming stream opened with a stale catalog (the metadata cache lags NOTIFY by up
    to a debounce window) still sends its catch-up without a column made sensitive."""
    project = make_project()
    t = todos(project)
    db.execute(sql.SQL("INSERT INTO {} (title) VALUES ('before')").format(t))
    first = changes(db, project["id"])[0]
    since = Cursor(first["seq"], first["id"])
    db.execute(sql.SQL("INSERT INTO {} (title) VALUES ('a')").format(t))

    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            stale = await load_catalog(conn, project["id"])
        db.execute(
            """
            UPDATE gateway.column_registry c SET is_sensitive = true
              FROM gateway.table_registry t
             WHERE t.id = c.table_id AND t.project_id = %s AND t.name = 'todos'
               AND c.name = 'title'
            """,
            [project["id"]],
        )
        async with Hub(pg_url) as hub:

            def readable() -> frozenset[str]:
                catalog = hub.catalog(project["id"]) or stale
                info = catalog.table("todos")
                assert info is not None
                return frozenset(c.name for c in info.columns if not c.is_sensitive)

            reader = Reader(
                await hub.subscribe(
                    project["id"], "todos", since=since, catalog=stale, columns=readable
                )
            )
            (event,) = await wait_delivered(reader, 1)
            assert event.data["row"]["id"] is not None and "title" not in event.data["row"]
            await reader.stop()

    run(main)
