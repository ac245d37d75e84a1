"""A page of the change log is bounded in bytes as well as in changes (changelog.py,
``PAGE_MAX_BYTES``): the rest follows in the next page, in order, with no gap, live and
in a catch-up, and a change larger than the bound still comes (alone)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from gateway.realtime.changelog import read_catch_up, read_poll
from gateway.realtime.events import Cursor
from tests.db.test_realtime_hub import assert_ordered_unique, insert_titles, titles
from tests.support.realtime import Hub, Reader, run

BOUND = 2000  # bytes of row text per page in these tests
ROWS = 30


def _titles() -> list[str]:
    # ~750 bytes of row text each: two or three changes a page; one larger than the bound
    out = [f"{i:02d}" + "x" * 700 for i in range(ROWS)]
    out[7] = "07" + "y" * (3 * BOUND)
    return out


def _text_bytes(change: Any) -> int:
    return len(orjson.dumps(change.row)) if change.row is not None else 0


def test_live_pages_are_cut_at_the_byte_bound_without_gaps(pg_url: str, make_project: Any) -> None:
    project = make_project()
    wanted = _titles()

    async def main() -> None:
        async with Hub(pg_url, page_max_bytes=BOUND) as hub:
            reader = Reader(await hub.subscribe(project["id"], "todos"))
            start = hub.cursor
            assert start is not None
            await insert_titles(pg_url, project, wanted)
            got = await reader.wait_for(ROWS)
            await asyncio.sleep(0.2)
            assert titles(reader.changes) == wanted
            assert_ordered_unique(got)
            await reader.stop()
            # the statement itself (the poller is idle now: nobody listens): a page holds
            # less than the bound before its last change
            page = await read_poll(hub.pool, start, [project["id"]], 500, BOUND)
            assert page.full and 1 <= len(page.changes) < ROWS
            assert sum(_text_bytes(c) for c in page.changes[:-1]) < BOUND

    run(main)


def test_catch_up_pages_are_cut_at_the_byte_bound_without_gaps(
    pg_url: str, make_project: Any
) -> None:
    project = make_project()
    wanted = _titles()

    async def main() -> None:
        async with Hub(pg_url) as writer_hub, Hub(pg_url, page_max_bytes=BOUND) as hub:
            first = await writer_hub.subscribe(project["id"], "todos")
            since = first.position
            first.close()
            await insert_titles(pg_url, project, wanted)
            resumed = Reader(await hub.subscribe(project["id"], "todos", since=since))
            got = await resumed.wait_for(ROWS)
            await asyncio.sleep(0.2)
            assert titles(resumed.changes) == wanted
            assert_ordered_unique(got)
            # ~750 bytes a change, 2000 a page: many pages, not one
            assert hub.stats.catchup_queries >= ROWS // 3
            target = hub.cursor
            assert target is not None
            await resumed.stop()
            page = await read_catch_up(hub.pool, project["id"], "todos", since, target, 500, BOUND)
            assert page.full and 1 <= len(page.changes) < ROWS
            assert sum(_text_bytes(c) for c in page.changes[:-1]) < BOUND

    run(main)


def test_a_page_that_ends_before_either_bound_is_not_full(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            sub = await hub.subscribe(project["id"], "todos")
            start = sub.position
            await insert_titles(pg_url, project, ["a", "b"])
            sub.close()
            target = Cursor(2**62, 0)
            page = await read_catch_up(hub.pool, project["id"], "todos", start, target, 500)
            assert [c.row["title"] for c in page.changes if c.row] == ["a", "b"]
            assert not page.full

    run(main)
