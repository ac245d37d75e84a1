"""Realtime delivery in commit order (migration 0017): the commit stamp and the barrier.

Real transactions on real connections: transactions that take their xids in one order
and commit in another, concurrent commits, a transaction that stamps early (SET
CONSTRAINTS ALL IMMEDIATE), and a rolled-back one.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import psycopg
from alembic.script import ScriptDirectory
from psycopg import sql

from gateway.control import tabledef
from gateway.control.projects import connect, create_project
from gateway.control.tables import create_table
from gateway.db import migrate
from gateway.realtime.events import Cursor, Event
from tests.support.polling import wait_until_async
from tests.support.realtime import TIMEOUT_S, Hub, Reader, run
from tests.support.scratchdb import scratch_database
from tests.support.tables import TODOS_TABLE, todos


def titles(events: list[Event]) -> list[str]:
    return [e.data["row"]["title"] for e in events if e.data]


def test_commit_order_not_xid_order_every_row_once(
    pg_url: str, db: psycopg.Connection[Any], make_project: Any
) -> None:
    """Twelve transactions take their xids in one order and commit in a shuffled one (one
    after the other), then twelve more commit concurrently: the subscriber sees every row
    once, each transaction's rows together, in the order the transactions committed."""
    project = make_project()
    insert = sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(todos(project))
    rng = random.Random(20)

    async def main() -> None:
        async with Hub(pg_url) as hub:
            reader = Reader(await hub.subscribe(project["id"], "todos"))
            conns = [await psycopg.AsyncConnection.connect(pg_url) for _ in range(24)]
            try:
                for i, conn in enumerate(conns):  # xids are taken in this order
                    await conn.execute(insert, [f"t{i}-a"])
                    await conn.execute(insert, [f"t{i}-b"])
                order = list(range(12))
                rng.shuffle(order)
                for i in order:
                    await conns[i].commit()
                await asyncio.gather(*(c.commit() for c in conns[12:]))
            finally:
                for conn in conns:
                    await conn.close()
            events = await reader.wait_for(48)
            got = titles(events)
            assert len(got) == 48 and len(set(got)) == 48, got
            cursors = [e.cursor for e in events]
            assert cursors == sorted(cursors) and len(set(cursors)) == 48
            # sequential part: exactly the commit order, not the xid order
            expected = [f"t{i}-{p}" for i in order for p in "ab"]
            assert got[:24] == expected
            assert order != sorted(order)  # the shuffle did change the order
            # concurrent part: each transaction's two rows are adjacent, a before b
            for k in range(24, 48, 2):
                assert got[k].split("-")[0] == got[k + 1].split("-")[0], got[24:]
                assert got[k].endswith("-a") and got[k + 1].endswith("-b")
            await reader.stop()

    run(main)
    # one commit number per transaction, in the same order as the stamps say
    rows = db.execute(
        """
        SELECT k.seq, count(*) AS n FROM gateway.changes c
          JOIN gateway.commits k ON k.xid = c.xid
         WHERE c.project_id = %s GROUP BY k.seq ORDER BY k.seq
        """,
        [project["id"]],
    ).fetchall()
    assert [r["n"] for r in rows] == [2] * 24


def test_stamp_once_per_transaction_and_none_for_a_rollback(
    db: psycopg.Connection[Any], pg_url: str, make_project: Any
) -> None:
    project = make_project()
    t = todos(project)
    with psycopg.connect(pg_url) as conn:
        conn.execute(sql.SQL("INSERT INTO {} (title) SELECT 'r' || g "
                             "FROM generate_series(1, 50) g").format(t))  # fmt: skip
        conn.execute(sql.SQL("UPDATE {} SET done = true").format(t))
        conn.commit()
        conn.execute(sql.SQL("INSERT INTO {} (title) VALUES ('rolled back')").format(t))
        conn.rollback()
    stamps = db.execute(
        """
        SELECT count(DISTINCT k.seq) AS stamps, count(*) AS rows,
               count(*) FILTER (WHERE k.seq IS NULL) AS unstamped
          FROM gateway.changes c LEFT JOIN gateway.commits k ON k.xid = c.xid
         WHERE c.project_id = %s
        """,
        [project["id"]],
    ).fetchone()
    assert stamps == {"stamps": 1, "rows": 100, "unstamped": 0}


def test_an_early_stamp_holds_delivery_back_but_loses_nothing(
    pg_url: str, make_project: Any
) -> None:
    """SET CONSTRAINTS ALL IMMEDIATE fires the stamp at the statement, so the transaction
    holds the barrier's shared side until it ends: delivery waits for it (the old
    behaviour, for this writer only), other writers still commit, and when it ends
    everything arrives once, in commit-number order."""
    project = make_project()
    insert = sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(todos(project))

    async def main() -> None:
        async with Hub(pg_url) as hub:
            reader = Reader(await hub.subscribe(project["id"], "todos"))
            early = await psycopg.AsyncConnection.connect(pg_url)
            try:
                await early.execute("SET CONSTRAINTS ALL IMMEDIATE")
                await early.execute(insert, ["early"])  # stamped now, not committed
                async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as other:
                    # commits: a writer waits at most the barrier's lock timeout per poll
                    await asyncio.wait_for(other.execute(insert, ["other"]), timeout=10)
                busy = hub.stats.horizon_busy
                polls = hub.stats.polls
                await wait_until_async(lambda: hub.stats.polls >= polls + 3, timeout=TIMEOUT_S)
                assert hub.stats.horizon_busy > busy
                assert reader.changes == []
                await early.commit()
            finally:
                await early.close()
            events = await reader.wait_for(2)
            assert titles(events) == ["early", "other"]
            await reader.stop()

    run(main)


def before_commit_order(url: str) -> str:
    """The revision before the commit-order migration, found by its file name (revision
    numbers are renumbered when branches merge)."""
    scripts = ScriptDirectory.from_config(migrate.alembic_config(url)).walk_revisions()
    script = next(s for s in scripts if s.path.endswith("_realtime_commit_order.py"))
    assert isinstance(script.down_revision, str)
    return script.down_revision


def test_cursors_from_before_the_migration_keep_working(pg_url: str) -> None:
    """0017 numbers every existing change's transaction with its xid and starts the
    sequence above every xid: a cursor a client got before the upgrade resumes after it
    with nothing lost and nothing repeated, and later commits come after."""
    with scratch_database(pg_url, "rtseq") as url:
        migrate.upgrade(url)
        with connect(url) as conn:
            project = create_project(conn, "rt-seq")
            create_table(conn, project.id, tabledef.parse_table(TODOS_TABLE))
        table = sql.Identifier(project.schema_name, "todos")
        insert = sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(table)
        migrate.downgrade(url, before_commit_order(url))
        with psycopg.connect(url, autocommit=True) as conn:
            for title in ("pre-1", "pre-2", "pre-3"):
                conn.execute(insert, [title])
            row = conn.execute(
                "SELECT xid::text::bigint, id FROM gateway.changes ORDER BY xid, id LIMIT 1"
            ).fetchone()
            assert row is not None
            old_cursor = Cursor(int(row[0]), int(row[1]))  # what 0017 sent as pre-1's id
        migrate.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(insert, ["post-1"])
            assert conn.execute(
                "SELECT count(*) FILTER (WHERE k.seq IS NULL),"
                "       count(*) FILTER (WHERE k.seq = c.xid::text::bigint"
                "                          AND c.row->>'title' LIKE 'pre-%%')"
                "  FROM gateway.changes c LEFT JOIN gateway.commits k ON k.xid = c.xid"
            ).fetchone() == (0, 3)  # all stamped; the backfill numbered pre-* with their xid

        async def main() -> None:
            async with Hub(url) as hub:
                reader = Reader(await hub.subscribe(str(project.id), "todos", since=old_cursor))
                events = await reader.wait_for(3)
                assert titles(events) == ["pre-2", "pre-3", "post-1"]
                assert [e.cursor for e in events] == sorted(e.cursor for e in events)
                assert all(e.kind != "reset" for e in reader.events)
                await reader.stop()

        run(main)
