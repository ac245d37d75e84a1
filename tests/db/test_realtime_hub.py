"""The realtime hub against a real PostgreSQL: ordering, resume, overflow, retention.

Each test runs its own event loop (``asyncio.run``) with its own pool; writes go through
separate psycopg connections, exactly like tenant traffic or plain SQL would.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateway.errors import GatewayError
from gateway.realtime.events import Cursor, Event, parse_cursor
from gateway.realtime.filters import Filter, compile_filters
from gateway.realtime.retention import prune_changes
from gateway.realtime.sse import format_event
from tests.support.polling import wait_until_async
from tests.support.realtime import TIMEOUT_S, Hub, Reader, awrite, run
from tests.support.tables import todos


async def insert_titles(pg_url: str, project: dict[str, Any], titles: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        for title in titles:
            await conn.execute(
                sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(todos(project)), [title]
            )


def titles(events: list[Event]) -> list[str]:
    return [e.data["row"]["title"] for e in events if e.data]


def assert_ordered_unique(events: list[Event]) -> None:
    cursors = [e.cursor for e in events]
    assert cursors == sorted(cursors), "events out of cursor order"
    assert len(set(cursors)) == len(cursors), "duplicate events"


# --- cursors and SSE formatting ---------------------------------------------------------


def test_parse_cursor_is_strict() -> None:
    assert parse_cursor("123-45") == Cursor(123, 45)
    assert str(Cursor(123, 45)) == "123-45"
    assert parse_cursor(str(Cursor(2**63 - 1, 0))) == Cursor(2**63 - 1, 0)
    fullwidth_one = "\uff11"
    for bad in ["", "1", "1-", "-1", "a-1", "1-2-3", "1 - 2", "-1-2", "1.0-2", "0x1-2",
                "99999999999999999999-1", str(2**63) + "-1", "1-" + str(2**63),
                fullwidth_one + "-2"]:  # fmt: skip
        with pytest.raises(GatewayError) as info:
            parse_cursor(bad)
        assert info.value.code == "INVALID_QUERY"
        assert info.value.status == 400


def test_format_event() -> None:
    change = format_event(
        Event("insert", Cursor(7, 9), {"table": "todos", "op": "insert", "row": {"id": 1}})
    )
    assert change == (
        b'id: 7-9\nevent: insert\ndata: {"table":"todos","op":"insert","row":{"id":1}}\n\n'
    )
    assert format_event(Event("ping")) == b": ping\n\n"
    assert format_event(Event("ping", Cursor(1, 2))) == b": ping\nid: 1-2\n\n"
    assert format_event(Event("position", Cursor(1, 0))).endswith(b"id: 1-0\n\n")
    overflow = format_event(Event("overflow", None, {"cursor": "1-2"}))
    assert overflow == b'event: overflow\ndata: {"cursor":"1-2"}\n\n'


# --- filters ----------------------------------------------------------------------------

TYPES = {
    "id": "bigint",
    "title": "text",
    "done": "boolean",
    "tags": "text[]",
    "meta": "jsonb",
    "score": "numeric",
    "at": "timestamptz",
    "day": "date",
    "ref": "uuid",
}
ROW = {
    "id": 5,
    "title": "Buy Milk",
    "done": False,
    "tags": ["a", "b"],
    "meta": {"k": 1, "list": [1, 2], "nested": {"x": True}},
    "score": 2.5,
    "at": "2026-11-26T10:00:00.123456+00:00",
    "day": "2026-11-26",
    "ref": "8f1b0a52-7a7e-4d0c-9d2a-1d1e2f3a4b5c",
    "none": None,
}


@pytest.mark.parametrize(
    ("column", "op", "value", "expected"),
    [
        ("id", "eq", 5, True),
        ("id", "eq", "5", True),
        ("id", "neq", 5, False),
        ("id", "gt", 4, True),
        ("id", "gte", 5, True),
        ("id", "lt", 5, False),
        ("id", "lte", 5, True),
        ("id", "in", [1, 5], True),
        ("id", "in", [1, 2], False),
        ("title", "eq", "Buy Milk", True),
        ("title", "like", "Buy%", True),
        ("title", "like", "buy%", False),
        ("title", "ilike", "buy%", True),
        ("title", "like", "Buy_Milk", True),
        ("title", "like", "Buy\\_Milk", False),
        ("title", "gt", "A", True),
        ("done", "eq", False, True),
        ("done", "is", False, True),
        ("done", "is", True, False),
        ("done", "is", None, False),
        ("none", "is", None, True),
        ("none", "eq", 1, False),
        ("none", "neq", 1, False),  # NULL <> 1 is not true
        ("tags", "contains", ["a"], True),
        ("tags", "contains", ["a", "c"], False),
        ("tags", "containedBy", ["a", "b", "c"], True),
        ("tags", "containedBy", ["a"], False),
        ("tags", "overlaps", ["c", "b"], True),
        ("tags", "overlaps", ["c"], False),
        ("meta", "contains", {"k": 1}, True),
        ("meta", "contains", {"nested": {"x": True}}, True),
        ("meta", "contains", {"list": [2]}, True),
        ("meta", "contains", {"k": 2}, False),
        ("meta", "contains", {"k": True}, False),
        ("meta", "containedBy", {"k": 1, "list": [1, 2, 3], "nested": {"x": True}, "z": 0}, True),
        ("meta", "eq", {"k": 1, "list": [1, 2], "nested": {"x": True}}, True),
        ("score", "eq", 2.5, True),
        ("score", "gt", "2.4", True),
        ("score", "lt", 2, False),
        ("at", "eq", "2026-11-26T10:00:00.123456Z", True),
        ("at", "gt", "2026-11-26T11:00:00+02:00", True),  # 09:00 UTC
        ("at", "lt", "2026-11-26T10:00:00Z", False),
        ("day", "gte", "2026-11-26", True),
        ("day", "lt", "2026-11-26", False),
        ("ref", "eq", "8F1B0A52-7A7E-4D0C-9D2A-1D1E2F3A4B5C", True),
        ("ref", "in", ["8f1b0a52-7a7e-4d0c-9d2a-1d1e2f3a4b5c"], True),
    ],
)
def test_filter_operators(column: str, op: str, value: Any, expected: bool) -> None:
    predicate, columns = compile_filters([Filter(column, op, value)], TYPES)
    assert predicate(ROW) is expected
    assert columns == (column,)


def test_filters_combine_with_and_and_refuse_bad_values() -> None:
    predicate, columns = compile_filters(
        [Filter("done", "eq", False), Filter("id", "gt", 10)], TYPES
    )
    assert predicate(ROW) is False
    assert columns == ("done", "id")
    for bad in [Filter("id", "eq", "five"), Filter("at", "gt", "yesterday"),
                Filter("ref", "eq", "x"), Filter("tags", "contains", "a")]:  # fmt: skip
        with pytest.raises(GatewayError) as info:
            compile_filters([bad], TYPES)
        assert info.value.code == "INVALID_VALUE"
    for bad in [Filter("id", "near", 1), Filter("id", "in", 1), Filter("id", "eq", None),
                Filter("done", "is", "yes"), Filter("title", "like", 1)]:  # fmt: skip
        with pytest.raises(GatewayError) as info:
            compile_filters([bad], TYPES)
        assert info.value.code == "INVALID_FILTER"


# --- the hub against PostgreSQL ---------------------------------------------------------


def test_insert_update_delete_reach_subscriber(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            sub = await hub.subscribe(project["id"], "todos")
            reader = Reader(sub)
            await awrite(pg_url, sql.SQL("INSERT INTO {} (id, title) VALUES (1, 'a')").format(
                todos(project)))  # fmt: skip
            await awrite(pg_url, sql.SQL("UPDATE {} SET done = true WHERE id = 1").format(
                todos(project)))  # fmt: skip
            await awrite(pg_url, sql.SQL("DELETE FROM {} WHERE id = 1").format(todos(project)))
            events = await reader.wait_for(3)
            assert [e.kind for e in events] == ["insert", "update", "delete"]
            assert events[0].data["row"]["title"] == "a"
            assert events[1].data["row"]["done"] is True
            assert events[2].data == {"table": "todos", "op": "delete", "row": {"id": 1}}
            assert_ordered_unique(events)
            # another project's and another table's writes never show up
            other = make_project()
            await insert_titles(pg_url, other, ["not mine"])
            await insert_titles(pg_url, project, ["mine"])
            events = await reader.wait_for(4)
            assert titles(events[3:]) == ["mine"]
            await reader.stop()

    run(main)


def test_out_of_order_commits_are_delivered_in_commit_order(pg_url: str, make_project: Any) -> None:
    """A transaction with an early xid still open holds no one back (0017): later commits
    are delivered first, and its change arrives when it commits, after them."""
    project = make_project()
    insert = sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(todos(project))

    async def main() -> None:
        async with Hub(pg_url) as hub:
            sub = await hub.subscribe(project["id"], "todos")
            reader = Reader(sub)
            early = await psycopg.AsyncConnection.connect(pg_url)
            try:
                await early.execute(insert, ["early"])  # xid assigned now, not committed
                await insert_titles(pg_url, project, ["later-1", "later-2"])  # committed
                events = await reader.wait_for(2)
                assert titles(events) == ["later-1", "later-2"]
                await early.commit()
            finally:
                await early.close()
            events = await reader.wait_for(3)
            assert titles(events) == ["later-1", "later-2", "early"]
            assert_ordered_unique(events)
            await insert_titles(pg_url, project, ["after"])
            events = await reader.wait_for(4)
            assert titles(events) == ["later-1", "later-2", "early", "after"]
            await reader.stop()

    run(main)


def test_many_concurrent_transactions_none_skipped(pg_url: str, make_project: Any) -> None:
    """Interleaved transactions committing in random order: every change, once, in order."""
    project = make_project()
    insert = sql.SQL("INSERT INTO {} (title) VALUES (%s)").format(todos(project))

    async def writer(rnd: int, n: int, rows: int) -> None:
        async with await psycopg.AsyncConnection.connect(pg_url) as conn:
            for i in range(rows):
                await conn.execute(insert, [f"r{rnd}-w{n}-{i}"])
                await asyncio.sleep(0.001 * ((n * 7 + i) % 5))
            await asyncio.sleep(0.002 * (10 - n))
            await conn.commit()

    async def main() -> None:
        async with Hub(pg_url, page_size=7) as hub:
            sub = await hub.subscribe(project["id"], "todos")
            reader = Reader(sub)
            for rnd in range(3):
                await asyncio.gather(*(writer(rnd, n, 5) for n in range(10)))
            await reader.wait_for(150)
            await asyncio.sleep(0.3)
            assert len(reader.changes) == 150
            assert_ordered_unique(reader.changes)
            assert len(set(titles(reader.changes))) == 150
            await reader.stop()

    run(main)


def test_no_polling_without_subscribers(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            await asyncio.sleep(0.5)
            assert hub.stats.polls == 0
            sub = await hub.subscribe(project["id"], "todos")
            await wait_until_async(lambda: hub.stats.polls >= 3, timeout=TIMEOUT_S)
            sub.close()
            await asyncio.sleep(0.2)
            polls = hub.stats.polls
            await asyncio.sleep(0.8)
            print(f"polls after the last subscriber left: {hub.stats.polls - polls}")
            assert hub.stats.polls == polls
            assert hub.cursor is None  # the next subscriber starts at the head again
            # a new subscriber starts at the head: old changes are not replayed
            await insert_titles(pg_url, project, ["while nobody listened"])
            sub = await hub.subscribe(project["id"], "todos")
            reader = Reader(sub)
            await insert_titles(pg_url, project, ["now"])
            events = await reader.wait_for(1)
            await asyncio.sleep(0.2)
            assert titles(reader.changes) == ["now"]
            assert events
            await reader.stop()

    run(main)


def test_overflow_closes_only_the_slow_subscriber(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url, realtime_queue_max=5, page_size=2) as hub:
            slow = await hub.subscribe(project["id"], "todos")
            slow_stream = slow.events()
            position = await anext(slow_stream)  # it joined, then stops reading
            assert position.kind == "position"
            fast = Reader(await hub.subscribe(project["id"], "todos"))
            await asyncio.sleep(0.1)
            await insert_titles(pg_url, project, [f"t{i}" for i in range(20)])
            await fast.wait_for(20)
            assert slow.overflowed
            events = [e async for e in slow_stream]
            assert [e.kind for e in events] == ["overflow"]
            assert events[0].data == {"cursor": str(position.cursor)}
            assert slow.closed
            assert hub.subscriber_count == 1
            assert hub.stats.overflows == 1
            await insert_titles(pg_url, project, ["still flowing"])
            events = await fast.wait_for(21)
            assert titles(events)[-1] == "still flowing"
            assert_ordered_unique(events)
            await fast.stop()

    run(main)


def test_resume_from_cursor_on_another_hub_no_gap_no_duplicate(
    pg_url: str, make_project: Any
) -> None:
    """Stop reading mid-stream, resume elsewhere from the last id while writes continue."""
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub_a, Hub(pg_url, catchup_page_size=3) as hub_b:
            first = Reader(await hub_a.subscribe(project["id"], "todos"))
            await insert_titles(pg_url, project, [f"a{i}" for i in range(10)])
            events = await first.wait_for(10)
            await first.stop()
            last = events[5].cursor  # the client saw only the first six
            assert last is not None

            writing = asyncio.create_task(
                insert_titles(pg_url, project, [f"b{i}" for i in range(40)])
            )
            await asyncio.sleep(0.05)
            resumed = Reader(await hub_b.subscribe(project["id"], "todos", since=last))
            await writing
            got = await resumed.wait_for(44)
            await asyncio.sleep(0.3)
            assert len(resumed.changes) == 44
            assert titles(got) == [f"a{i}" for i in range(6, 10)] + [f"b{i}" for i in range(40)]
            assert_ordered_unique(got)
            assert all(e.cursor > last for e in got)
            assert hub_b.stats.catchup_queries >= 2
            await resumed.stop()

    run(main)


def test_resume_is_filtered_per_table_and_filters(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            start = await hub.subscribe(project["id"], "todos")
            cursor = start.position
            start.close()
            await insert_titles(pg_url, project, ["keep 1", "drop", "keep 2"])
            sub = await hub.subscribe(
                project["id"],
                "todos",
                filters=[Filter("title", "like", "keep%")],
                column_types={"title": "text"},
                since=cursor,
            )
            reader = Reader(sub)
            await insert_titles(pg_url, project, ["keep 3", "nope"])
            await reader.wait_for(3)
            await asyncio.sleep(0.3)
            assert titles(reader.changes) == ["keep 1", "keep 2", "keep 3"]
            await reader.stop()

    run(main)


def test_columns_are_reevaluated_for_every_event(pg_url: str, make_project: Any) -> None:
    project = make_project()
    readable = {"id", "title", "owner_email", "done"}

    async def main() -> None:
        async with Hub(pg_url) as hub:
            sub = await hub.subscribe(
                project["id"],
                "todos",
                filters=[Filter("done", "eq", False)],
                column_types={"done": "boolean"},
                columns=lambda: frozenset(readable),
            )
            reader = Reader(sub)
            await awrite(pg_url, sql.SQL(
                "INSERT INTO {} (title, owner_email) VALUES ('a', 'a@x')").format(todos(project))
            )  # fmt: skip
            events = await reader.wait_for(1)
            assert events[0].data["row"].keys() == {"id", "title", "owner_email", "done"}
            readable.discard("owner_email")  # the column was made sensitive
            await insert_titles(pg_url, project, ["b"])
            events = await reader.wait_for(2)
            assert events[1].data["row"].keys() == {"id", "title", "done"}
            readable.discard("done")  # a filter column became unreadable: the stream ends
            await insert_titles(pg_url, project, ["c"])
            await asyncio.wait_for(reader.done.wait(), TIMEOUT_S)
            assert reader.events[-1].kind == "error"
            assert reader.events[-1].data["code"] == "COLUMN_NOT_READABLE"
            assert hub.subscriber_count == 0

    run(main)


def test_stream_limit_per_project(pg_url: str, make_project: Any) -> None:
    project = make_project()
    other = make_project()

    async def main() -> None:
        async with Hub(pg_url, realtime_max_streams_per_project=2) as hub:
            a = await hub.subscribe(project["id"], "todos")
            await hub.subscribe(project["id"], "todos")
            with pytest.raises(GatewayError) as info:
                await hub.subscribe(project["id"], "todos")
            assert info.value.code == "TOO_MANY_SUBSCRIPTIONS"
            assert info.value.status == 429
            await hub.subscribe(other["id"], "todos")  # another project is not affected
            a.close()
            await hub.subscribe(project["id"], "todos")
            assert hub.project_streams(project["id"]) == 2

    run(main)


def test_retention_and_reset(pg_url: str, db: psycopg.Connection[Any], make_project: Any) -> None:
    project = make_project()
    other = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            first = Reader(await hub.subscribe(project["id"], "todos"))
            await insert_titles(pg_url, project, ["old-1", "old-2", "old-3"])
            await insert_titles(pg_url, other, ["other-old"])
            events = await first.wait_for(3)
            await first.stop()
            stale, fresh = events[0].cursor, events[2].cursor
            assert stale is not None and fresh is not None
            # age the rows, then prune with a 1-hour retention in batches of 2
            db.execute(
                "UPDATE gateway.changes SET created_at = now() - interval '2 hours' "
                "WHERE project_id = ANY(%s::uuid[])",
                [[project["id"], other["id"]]],
            )
            async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
                deleted = await prune_changes(conn, 1.0, batch=2, max_batches=100)
            assert deleted >= 4
            left = db.execute(
                "SELECT count(*) AS n FROM gateway.changes WHERE project_id = %s",
                [project["id"]],
            ).fetchone()
            assert left is not None and left["n"] == 0
            mark = db.execute(
                "SELECT seq, id FROM gateway.changes_pruned WHERE project_id = %s",
                [project["id"]],
            ).fetchone()
            assert mark is not None and Cursor(mark["seq"], mark["id"]) == fresh

            # a cursor behind deleted changes: reset, carrying a cursor to resume from
            sub = Reader(await hub.subscribe(project["id"], "todos", since=stale))
            await wait_until_async(
                lambda: any(e.kind == "reset" for e in sub.events), timeout=TIMEOUT_S
            )
            reset = next(e for e in sub.events if e.kind == "reset")
            assert reset.data == {"cursor": str(reset.cursor)}
            assert reset.cursor is not None and reset.cursor >= fresh
            await insert_titles(pg_url, project, ["new"])
            got = await sub.wait_for(1)
            assert titles(got) == ["new"]
            assert got[0].cursor > reset.cursor
            await sub.stop()

            # the newest deleted change's own cursor has no gap behind it: no reset
            ok = Reader(await hub.subscribe(project["id"], "todos", since=fresh))
            got = await ok.wait_for(1)
            assert titles(got) == ["new"]
            assert not any(e.kind == "reset" for e in ok.events)
            await ok.stop()

            # a cursor from the future is not trusted either
            future = Reader(await hub.subscribe(project["id"], "todos", since=Cursor(2**62, 1)))
            await wait_until_async(
                lambda: any(e.kind == "reset" for e in future.events), timeout=TIMEOUT_S
            )
            await future.stop()

    run(main)


def test_prune_keeps_recent_changes(pg_url: str, db: psycopg.Connection[Any],
                                    make_project: Any) -> None:  # fmt: skip
    project = make_project()

    async def main() -> None:
        await insert_titles(pg_url, project, ["recent"])
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            await prune_changes(conn, 24.0)
        n = db.execute(
            "SELECT count(*) AS n FROM gateway.changes WHERE project_id = %s", [project["id"]]
        ).fetchone()
        assert n is not None and n["n"] == 1

    run(main)


def test_heartbeat_moves_the_id_forward(pg_url: str, make_project: Any) -> None:
    project = make_project()
    other = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            sub = await hub.subscribe(project["id"], "todos")
            stream: AsyncIterator[Event] = sub.events(heartbeat_s=0.2)
            position = await anext(stream)
            assert position.kind == "position"
            await insert_titles(pg_url, other, ["elsewhere"])
            deadline = time.monotonic() + TIMEOUT_S
            while True:
                event = await anext(stream)
                assert event.kind == "ping"
                if event.cursor is not None and event.cursor > position.cursor:
                    break
                assert time.monotonic() < deadline
            await stream.aclose()
            assert sub.closed

    run(main)


def test_stop_ends_every_stream(pg_url: str, make_project: Any) -> None:
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url) as hub:
            readers = [Reader(await hub.subscribe(project["id"], "todos")) for _ in range(3)]
            await hub.stop()
            for reader in readers:
                await asyncio.wait_for(reader.done.wait(), TIMEOUT_S)
            assert hub.subscriber_count == 0
            with pytest.raises(GatewayError):
                await hub.subscribe(project["id"], "todos")

    run(main)


def test_poller_survives_lost_connections(
    pg_url: str, db: psycopg.Connection[Any], make_project: Any
) -> None:
    """Kill every connection of the hub's pool mid-stream: no change is lost or repeated."""
    project = make_project()

    async def main() -> None:
        async with Hub(pg_url, instance_id="rt-kill") as hub:
            reader = Reader(await hub.subscribe(project["id"], "todos"))
            await insert_titles(pg_url, project, [f"a{i}" for i in range(20)])
            await reader.wait_for(20)
            for k in range(3):
                db.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'gateway:rt-kill'"
                )
                await insert_titles(pg_url, project, [f"b{k}-{i}" for i in range(10)])
                await asyncio.sleep(0.2)
            events = await reader.wait_for(50)
            await asyncio.sleep(0.3)
            print(f"poll errors while connections were killed: {hub.stats.poll_errors}")
            assert len(reader.changes) == 50
            assert_ordered_unique(reader.changes)
            assert len(set(titles(events))) == 50
            await reader.stop()

    run(main)
