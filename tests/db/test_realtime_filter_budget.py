"""A filter that exceeds its per-row work budget ends only its own stream (issue 20), live
and in a catch-up, with ``event: error`` ``FILTER_TOO_EXPENSIVE``; every other subscriber
of the table keeps receiving, in order."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from gateway.realtime.filters import Filter
from tests.support.polling import wait_until_async
from tests.support.realtime import TIMEOUT_S, Hub, Reader, awrite, run
from tests.support.tables import todos

# 50 objects found only near the end of a 12,000-object array: ~600,000 steps > budget
EXPENSIVE = [Filter("meta", "contains", [{"k": 11_999 - i} for i in range(50)])]
TYPES = {"meta": "jsonb", "title": "text"}


def test_an_expensive_filter_ends_its_stream_and_nobody_elses(
    pg_url: str, make_project: Any
) -> None:
    project = make_project()
    big = sql.SQL(
        "INSERT INTO {} (title, meta) SELECT 'big', jsonb_agg(jsonb_build_object('k', i))"
        " FROM generate_series(0, 11999) AS i"
    ).format(todos(project))
    small = sql.SQL("INSERT INTO {} (title, meta) VALUES (%s, '[]')").format(todos(project))

    async def main() -> None:
        async with Hub(pg_url) as hub:
            live = Reader(
                await hub.subscribe(project["id"], "todos", filters=EXPENSIVE, column_types=TYPES)
            )
            everyone = Reader(await hub.subscribe(project["id"], "todos"))
            await wait_until_async(lambda: live.sub.live and everyone.sub.live, timeout=TIMEOUT_S)
            since = hub.cursor
            await awrite(pg_url, small, ["before"])
            await awrite(pg_url, big)
            await awrite(pg_url, small, ["after"])
            got = await everyone.wait_for(3)
            assert [e.data["row"]["title"] for e in got] == ["before", "big", "after"]
            await wait_until_async(live.done.is_set, timeout=TIMEOUT_S)
            assert live.events[-1].kind == "error"
            assert live.events[-1].data == {
                "code": "FILTER_TOO_EXPENSIVE",
                "message": live.events[-1].data["message"],
            }
            assert live.changes == []
            # the same from a catch-up over those changes
            replay = Reader(
                await hub.subscribe(
                    project["id"], "todos", filters=EXPENSIVE, column_types=TYPES, since=since
                )
            )
            await wait_until_async(replay.done.is_set, timeout=TIMEOUT_S)
            assert [e.kind for e in replay.events] == ["error"]
            assert replay.events[0].data["code"] == "FILTER_TOO_EXPENSIVE"
            assert hub.subscriber_count == 1  # only the unfiltered stream is left
            await everyone.stop()

    run(main)
