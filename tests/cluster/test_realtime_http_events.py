"""``truncate`` and ``leave`` over SSE, and stream openings in the request log, with real
gateway processes (the SSE client is tests/support/sse.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row

from tests.support.harness import ClusterStarter, GatewayCluster, wait_notifications_settled
from tests.support.polling import wait_until_async
from tests.support.sse import REALTIME_ENV, SSE, TIMEOUT_S, Stream
from tests.support.tables import todos

EVENT_KINDS = ("insert", "update", "delete", "truncate", "leave")


@pytest.fixture(scope="module")
def cluster(module_cluster: ClusterStarter) -> GatewayCluster:
    return module_cluster(2, env={**REALTIME_ENV, "GATEWAY_LOG_FLUSH_MS": "50"})


def events_of(s: Stream) -> list[SSE]:
    return [e for e in s.events if e.event in EVENT_KINDS]


async def wait_events(s: Stream, n: int) -> list[SSE]:
    await wait_until_async(lambda: len(events_of(s)) >= n or s.ended.is_set(), timeout=TIMEOUT_S)
    got = events_of(s)
    assert len(got) >= n, (got, s.status)
    return got


def test_truncate_reaches_subscribers_on_every_instance_as_one_event(
    cluster: GatewayCluster, db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project()
    t = todos(project)

    async def main() -> None:
        streams = [Stream(u, key=project["public_key"]) for u in cluster.urls]
        filtered = Stream(
            cluster.urls[1],
            key=project["public_key"],
            filters=[{"column": "done", "op": "eq", "value": True}],
        )
        for s in [*streams, filtered]:
            assert await s.wait_open() == 200
        db.execute(sql.SQL("INSERT INTO {} (title) SELECT 'r' || g FROM generate_series(1, 30) g")
                   .format(t))  # fmt: skip
        db.execute(sql.SQL("TRUNCATE {}").format(t))
        db.execute(sql.SQL("INSERT INTO {} (title, done) VALUES ('after', true)").format(t))
        for s in streams:
            got = await wait_events(s, 32)
            assert [e.event for e in got] == ["insert"] * 30 + ["truncate", "insert"]
            assert got[30].data == {"table": "todos", "op": "truncate"}
        got = await wait_events(filtered, 2)
        assert [e.event for e in got] == ["truncate", "insert"]
        assert got[0].id == events_of(streams[0])[30].id  # the same change, the same id
        await asyncio.sleep(0.3)
        assert len(events_of(streams[0])) == 32 and len(events_of(filtered)) == 2
        for s in [*streams, filtered]:
            await s.close()

    asyncio.run(main())


def test_update_out_of_the_filter_reaches_the_subscriber_as_leave(
    cluster: GatewayCluster, db: psycopg.Connection[Any], make_project: Any
) -> None:
    project = make_project()
    t = todos(project)

    async def main() -> None:
        open_todos = Stream(
            cluster.urls[0],
            key=project["public_key"],
            filters=[{"column": "done", "op": "eq", "value": False}],
        )
        assert await open_todos.wait_open() == 200
        db.execute(sql.SQL("INSERT INTO {} (id, title, owner_email) VALUES (1, 'a', 'a@x'), "
                           "(2, 'b', 'b@x')").format(t))  # fmt: skip
        await wait_events(open_todos, 2)
        db.execute(sql.SQL("UPDATE {} SET done = true WHERE id = 1").format(t))
        db.execute(sql.SQL("UPDATE {} SET title = 'b2' WHERE id = 2").format(t))
        got = await wait_events(open_todos, 4)
        assert [e.event for e in got] == ["insert", "insert", "leave", "update"]
        # the primary key only: no other column, not even readable ones
        assert got[2].data == {"table": "todos", "op": "leave", "row": {"id": 1}}
        assert got[3].data["row"]["title"] == "b2"
        # a reconnect with an earlier id (on the other instance) decides the same
        again = Stream(
            cluster.urls[1],
            key=project["public_key"],
            filters=[{"column": "done", "op": "eq", "value": False}],
            last_event_id=got[1].id,
        )
        assert await again.wait_open() == 200
        replay = await wait_events(again, 2)
        assert [(e.event, e.id) for e in replay] == [(e.event, e.id) for e in got[2:]]
        for s in [open_todos, again]:
            await s.close()

    asyncio.run(main())


def log_rows(db: psycopg.Connection[Any], project_id: str) -> list[dict[str, Any]]:
    return db.execute(
        """
        SELECT request_id, method, path, table_name, status_code, error_code, api_key_id::text,
               duration_ms
          FROM gateway.request_log WHERE project_id = %s ORDER BY id
        """,
        [project_id],
    ).fetchall()


def test_opening_a_stream_is_in_the_request_log(
    cluster: GatewayCluster, pg_url: str, make_project: Any
) -> None:
    project = make_project()
    key = project["public_key"]

    async def main() -> None:
        ok = Stream(cluster.urls[0], key=key)
        assert await ok.wait_open() == 200
        missing = Stream(cluster.urls[1], key=key, table="nope")
        assert await missing.wait_open() == 404
        no_key = Stream(cluster.urls[1], key="sheen_pk_" + "x" * 40)
        assert await no_key.wait_open() == 401
        assert ok.headers is not None and missing.headers is not None
        with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as db:
            await wait_until_async(
                lambda: len(log_rows(db, project["id"])) >= 2,
                timeout=TIMEOUT_S,
                interval=0.05,
                message=lambda: str(log_rows(db, project["id"])),
            )
            await asyncio.sleep(0.3)  # a third row, if one were (wrongly) written, lands now
            rows = log_rows(db, project["id"])
        # the open stream was logged when it opened, not when it ends
        assert not ok.ended.is_set()
        assert len(rows) == 2, rows  # the unknown key is nobody's request
        by_id = {r["request_id"]: r for r in rows}
        opened = by_id[ok.headers["x-request-id"]]
        assert opened["method"] == "REALTIME" and opened["path"] == "/db/realtime"
        assert opened["table_name"] == "todos" and opened["status_code"] == 200
        assert opened["error_code"] is None and opened["api_key_id"] == project["public_key_id"]
        assert opened["duration_ms"] > 0
        refused = by_id[missing.headers["x-request-id"]]
        assert refused["method"] == "REALTIME" and refused["table_name"] == "nope"
        assert refused["status_code"] == 404 and refused["error_code"] == "TABLE_NOT_FOUND"
        for s in [ok, missing, no_key]:
            await s.close()

    asyncio.run(main())


def local_denies(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith('gateway_admission_decisions_total{outcome="local_deny"}'):
            return float(line.split()[-1])
    raise AssertionError("no local_deny figure in /metrics")


def test_stream_openings_take_the_query_path_through_admission(
    cluster: GatewayCluster, pg_url: str, make_project: Any
) -> None:
    """Over its limit, a project's next opening is refused by the local deny, without the
    database, exactly as a /query would be; all three openings are in the request log."""
    project = make_project(rate_limit_per_minute=1)
    url = cluster.urls[0]
    key = project["public_key"]
    wait_notifications_settled(url)  # the project's creation must not drop the deny

    async def main() -> None:
        before = local_denies(url)
        first = Stream(url, key=key)
        assert await first.wait_open() == 200
        second = Stream(url, key=key)  # the database refuses: this instance remembers
        assert await second.wait_open() == 429
        third = Stream(url, key=key)  # refused locally (within the deny's 1 s)
        assert await third.wait_open() == 429
        for s in (second, third):
            assert s.error_body()["code"] == "RATE_LIMIT_EXCEEDED"
            assert s.headers is not None and s.headers["retry-after"]
        assert local_denies(url) == before + 1
        with psycopg.connect(pg_url, autocommit=True, row_factory=dict_row) as db:
            rows = await wait_until_async(
                lambda: found if len(found := log_rows(db, project["id"])) >= 3 else None,
                timeout=TIMEOUT_S,
                interval=0.05,
                message=lambda: str(log_rows(db, project["id"])),
            )
        assert [(r["method"], r["status_code"]) for r in rows] == [
            ("REALTIME", 200), ("REALTIME", 429), ("REALTIME", 429)
        ]  # fmt: skip
        for s in (first, second, third):
            await s.close()

    asyncio.run(main())
