"""Reading the change log: the instance's poll, a subscriber's catch-up page, the head.

Capture (migration 0005) appends every change of a realtime table to ``gateway.changes``
stamped with the writing transaction's id. The hub (``hub.py``) keeps one cursor
``(xid, id)`` per instance and polls only for the projects that have subscribers here::

    (xid, id) > cursor AND xid < pg_snapshot_xmin(pg_current_snapshot())
    AND project_id = ANY(active) ORDER BY xid, id LIMIT page

Every transaction below the snapshot's xmin has finished, so no row can ever appear
behind the cursor: nothing is skipped, and rows come out in transaction-id order. A
resuming subscriber's catch-up reads its project's table from its own cursor up to the
hub's (all of it committed), and learns the retention's high-water mark on the way: a
resume cursor below it would have a gap.

These are the statements and the decoding of their rows (positions in a row are the
statements' own, kept next to them); what to do with the changes is the hub's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from psycopg_pool import AsyncConnectionPool

from gateway.realtime.evaluation import off_loop
from gateway.realtime.events import Change, Cursor, change_from_row

POLL_SQL = """
SELECT s.xmin::text::bigint, (s.xmax::text::bigint - s.xmin::text::bigint),
       c.xid::text::bigint, c.id, c.op, c.pk::text, c.row::text, c.old_row::text,
       c.project_id::text, c.table_name,
       extract(epoch FROM clock_timestamp() - c.created_at), v.version,
       extract(epoch FROM clock_timestamp() - (
           SELECT min(h.created_at) FROM gateway.changes h
            WHERE h.xid >= s.xmin AND (h.xid, h.id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
              AND h.project_id = ANY(%(projects)s::uuid[]))),
       c.owner::text
  FROM (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin,
               pg_snapshot_xmax(pg_current_snapshot()) AS xmax) AS s
  LEFT JOIN LATERAL (
        SELECT xid, id, op, pk, row, old_row, project_id, table_name, created_at, owner
          FROM gateway.changes
         WHERE (xid, id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
           AND xid < s.xmin
           AND project_id = ANY(%(projects)s::uuid[])
         ORDER BY xid, id
         LIMIT %(limit)s) AS c ON true
  LEFT JOIN gateway.registry_versions v ON v.project_id = c.project_id
 ORDER BY c.xid, c.id
"""

CATCHUP_SQL = """
SELECT w.xid::text::bigint, w.id,
       pg_snapshot_xmax(pg_current_snapshot())::text::bigint,
       c.xid::text::bigint, c.id, c.op, c.pk::text, c.row::text, c.old_row::text,
       extract(epoch FROM clock_timestamp() - c.created_at), v.version, c.owner::text
  FROM (SELECT 1) AS one
  LEFT JOIN gateway.changes_pruned w ON w.project_id = %(project)s::uuid
  LEFT JOIN gateway.registry_versions v ON v.project_id = %(project)s::uuid
  LEFT JOIN LATERAL (
        SELECT xid, id, op, pk, row, old_row, created_at, owner
          FROM gateway.changes
         WHERE project_id = %(project)s::uuid AND table_name = %(table)s
           AND (xid, id) > (CAST(%(xid)s AS text)::xid8, %(id)s)
           AND (xid, id) <= (CAST(%(to_xid)s AS text)::xid8, %(to_id)s)
         ORDER BY xid, id
         LIMIT %(limit)s) AS c ON true
 ORDER BY c.xid, c.id
"""

# A page whose row images add up to more than this is parsed in a worker thread: JSON
# parsing is ~10 ms per MB here, and a page of 256 KB rows would otherwise hold the event
# loop (every tenant's requests) for as long (docs/realtime.md, bounded work per event).
PARSE_OFF_LOOP_CHARS = 256 * 1024

T = TypeVar("T")


async def _parse(rows: Sequence[Sequence[Any]], text_at: int, build: Callable[[], T]) -> T:
    """``build()`` inline for small pages, in a worker thread for large ones."""
    size = sum(len(r[text_at] or "") + len(r[text_at + 1] or "") for r in rows)
    if size > PARSE_OFF_LOOP_CHARS:
        return await off_loop(build)
    return build()


HEAD_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"


class PollPage(NamedTuple):
    """One poll: the changes below xmin after the cursor, and the snapshot's figures."""

    changes: list[Change]
    xmin: int  # every change below it has been read once the page is not full
    xmin_lag_xids: int  # how far pg_snapshot_xmin trails the next xid
    held_back_s: float  # age of the oldest committed change an open transaction holds back
    versions: dict[str, int | None]  # project id -> registry version read with its changes


class CatchUpPage(NamedTuple):
    """One page of a subscriber's catch-up, and what decides whether it may resume."""

    changes: list[Change]
    pruned: Cursor | None  # the retention's high-water mark for the project, if any
    xmax: int  # the snapshot's xmax: a cursor beyond it is from the future
    version: int  # the project's registry version read with these changes


async def read_head(pool: AsyncConnectionPool) -> Cursor:
    """The cursor a new stream starts at: everything below the snapshot's xmin."""
    async with pool.connection() as conn:
        cur = await conn.execute(HEAD_SQL)
        row = await cur.fetchone()
    assert row is not None
    return Cursor(int(row[0]), 0)


async def read_poll(
    pool: AsyncConnectionPool, cursor: Cursor, projects: list[str], limit: int
) -> PollPage:
    async with pool.connection() as conn:
        cur = await conn.execute(
            POLL_SQL,
            {"xid": str(cursor.xid), "id": cursor.id, "projects": projects, "limit": limit},
        )
        rows = await cur.fetchall()
    first = rows[0]
    changes = await _parse(
        rows,
        6,
        lambda: [
            change_from_row(r[8], r[9], r, 2, r[10], owner=r[13]) for r in rows if r[2] is not None
        ],
    )
    versions: dict[str, int | None] = {r[8]: int(r[11] or 0) for r in rows if r[2] is not None}
    return PollPage(changes, int(first[0]), int(first[1]), float(first[12] or 0.0), versions)


async def read_catch_up(
    pool: AsyncConnectionPool,
    project_id: str,
    table: str,
    after: Cursor,
    up_to: Cursor,
    limit: int,
) -> CatchUpPage:
    params: dict[str, Any] = {
        "project": project_id,
        "table": table,
        "xid": str(after.xid),
        "id": after.id,
        "to_xid": str(up_to.xid),
        "to_id": up_to.id,
        "limit": limit,
    }
    async with pool.connection() as conn:
        cur = await conn.execute(CATCHUP_SQL, params)
        rows = await cur.fetchall()
    first = rows[0]
    pruned = Cursor(int(first[0]), int(first[1])) if first[0] is not None else None
    changes = await _parse(
        rows,
        7,
        lambda: [
            change_from_row(project_id, table, r, 3, r[9], owner=r[11])
            for r in rows
            if r[3] is not None
        ],
    )
    return CatchUpPage(changes, pruned, int(first[2]), int(first[10] or 0))
