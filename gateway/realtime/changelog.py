"""Reading the change log: the instance's poll, a subscriber's catch-up page, the head.

Capture (migrations 0005, 0017) appends every change of a realtime table to
``gateway.changes`` and, when the writing transaction COMMITS, numbers it in
``gateway.commits`` (``stamp_commit.sql``). Positions are ``(seq, id)``: the commit number,
then the change's id. The hub (``hub.py``) keeps one cursor per instance and polls only for
the projects that have subscribers here, in two statements on one connection:

1. ``SELECT gateway.realtime_horizon()`` (autocommit): the commit barrier; every number up
   to the result belongs to a finished transaction;
2. with a new snapshot, ``(seq, id) > cursor AND seq <= horizon AND project_id =
   ANY(active) ORDER BY seq, id LIMIT page``.

No number at or below the horizon can still appear, so nothing is skipped, and rows come
out in commit order. An open transaction holds no number, so it holds no one back. A
resuming subscriber's catch-up reads its project's table from its own cursor up to the
hub's (all of it finished), and learns the retention's high-water mark on the way: a
resume cursor below it would have a gap.

These are the statements and the decoding of their rows (positions in a row are the
statements' own, kept next to them); what to do with the changes is the hub's.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.realtime.events import Change, Cursor, change_from_row

HORIZON_SQL = "SELECT gateway.realtime_horizon()"

# LATERAL (kept apart by OFFSET 0) makes the plan a walk of the commit numbers since the
# cursor (an index range on commits.seq, in order) probing each transaction's changes by
# the primary key: its cost follows what was committed since the last poll, not the size
# of the active projects' retained log (the planner's hash join read all of the latter;
# EXPLAIN on 100k changes in 500 projects: 0.3 ms near the head, docs/realtime.md).
POLL_SQL = """
WITH page AS (
SELECT k.seq, c.id, c.op, c.pk::text AS pk_text, c.row::text AS row_text,
       c.old_row::text AS old_text, c.project_id::text AS project_id, c.table_name,
       extract(epoch FROM clock_timestamp() - c.created_at) AS age, v.version,
       c.owner::text AS owner
  FROM gateway.commits k
  CROSS JOIN LATERAL (
        SELECT id, op, pk, row, old_row, project_id, table_name, created_at, owner
          FROM gateway.changes
         WHERE xid = k.xid AND project_id = ANY(%(projects)s::uuid[])
           AND (k.seq, id) > (%(seq)s, %(id)s)
        OFFSET 0) AS c
  LEFT JOIN gateway.registry_versions v ON v.project_id = c.project_id
 WHERE k.seq >= %(seq)s AND k.seq <= %(horizon)s
 ORDER BY k.seq, c.id
 LIMIT %(limit)s
), sized AS (
SELECT page.*, coalesce(octet_length(row_text), 0) + coalesce(octet_length(old_text), 0)
       AS bytes
  FROM page
), counted AS (
SELECT sized.*, sum(bytes) OVER (ORDER BY seq, id ROWS UNBOUNDED PRECEDING) AS upto,
       count(*) OVER () AS total
  FROM sized
)
SELECT seq, id, op, pk_text, row_text, old_text, project_id, table_name, age, version,
       owner, total
  FROM counted
 WHERE upto - bytes < %(max_bytes)s
 ORDER BY seq, id
"""

CATCHUP_SQL = """
SELECT w.seq, w.id,
       (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM gateway.commit_seq),
       c.seq, c.id, c.op, c.pk_text, c.row_text, c.old_text,
       extract(epoch FROM clock_timestamp() - c.created_at), v.version, c.owner::text,
       c.total
  FROM (SELECT 1) AS one
  LEFT JOIN gateway.changes_pruned w ON w.project_id = %(project)s::uuid
  LEFT JOIN gateway.registry_versions v ON v.project_id = %(project)s::uuid
  LEFT JOIN LATERAL (
        SELECT * FROM (
              SELECT s.*, sum(s.bytes) OVER (ORDER BY s.seq, s.id ROWS UNBOUNDED PRECEDING)
                          AS upto,
                     count(*) OVER () AS total
                FROM (
                      SELECT p.*, coalesce(octet_length(p.row_text), 0)
                                  + coalesce(octet_length(p.old_text), 0) AS bytes
                        FROM (
                              SELECT k.seq, c.id, c.op, c.pk::text AS pk_text,
                                     c.row::text AS row_text, c.old_row::text AS old_text,
                                     c.created_at, c.owner
                                FROM gateway.commits k
                                JOIN gateway.changes c ON c.xid = k.xid
                               WHERE c.project_id = %(project)s::uuid
                                 AND c.table_name = %(table)s
                                 AND k.seq >= %(seq)s AND k.seq <= %(to_seq)s
                                 AND (k.seq, c.id) > (%(seq)s, %(id)s)
                                 AND (k.seq, c.id) <= (%(to_seq)s, %(to_id)s)
                               ORDER BY k.seq, c.id
                               LIMIT %(limit)s) AS p) AS s) AS q
         WHERE q.upto - q.bytes < %(max_bytes)s) AS c ON true
 ORDER BY c.seq, c.id
"""

# The most row text (new and old images) one page of the log carries into the gateway:
# the rest follows in the next page, in order. A page is at most ``limit`` changes AND,
# past its first change, at most this many bytes: 500 changes of 256 KB rows (and their
# old images) were up to 256 MB in the instance's memory at once (docs/realtime.md).
# One change larger than this still comes alone, so the log never sticks.
PAGE_MAX_BYTES = 8 * 1024 * 1024


class PollPage(NamedTuple):
    """One poll: the finished changes after the cursor, and the barrier's figures."""

    changes: list[Change]
    horizon: int | None  # every number up to it is finished; None: barrier not granted
    horizon_wait_s: float  # how long the barrier statement took (waits for committers)
    versions: dict[str, int | None]  # project id -> registry version read with its changes
    full: bool = False  # cut at the change or byte limit: more may follow at once


class CatchUpPage(NamedTuple):
    """One page of a subscriber's catch-up, and what decides whether it may resume."""

    changes: list[Change]
    pruned: Cursor | None  # the retention's high-water mark for the project, if any
    last_seq: int  # the last commit number issued: a cursor beyond it is from the future
    version: int  # the project's registry version read with these changes
    full: bool = False  # cut at the change or byte limit: read on from the last change


async def _horizon(conn: AsyncConnection[Any]) -> int | None:
    cur = await conn.execute(HORIZON_SQL)
    row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def read_head(pool: AsyncConnectionPool) -> Cursor:
    """The cursor a new stream starts at: after every finished commit number.

    ``(horizon + 1, 0)`` reads "every number below ``horizon + 1`` has been read", the
    same meaning the hub gives the cursor after a page that was not full."""
    async with pool.connection() as conn:
        horizon = await _horizon(conn)
    if horizon is None:
        # a transaction that stamped early holds the barrier: no start is known to be
        # safe yet (the caller answers 503, retry shortly)
        raise RuntimeError("the realtime commit barrier is busy")
    return Cursor(horizon + 1, 0)


def _cut(rows: Sequence[Sequence[Any]], total_at: int, limit: int) -> bool:
    """Whether a page stopped at a limit (changes or bytes) rather than at the end."""
    total = int(rows[0][total_at] or 0) if rows else 0
    return total >= limit or len(rows) < total


async def read_poll(
    pool: AsyncConnectionPool,
    cursor: Cursor,
    projects: list[str],
    limit: int,
    max_bytes: int = PAGE_MAX_BYTES,
) -> PollPage:
    async with pool.connection() as conn:
        started = time.monotonic()
        horizon = await _horizon(conn)
        waited = time.monotonic() - started
        if horizon is None or horizon < cursor.seq:
            return PollPage([], horizon, waited, {})
        cur = await conn.execute(
            POLL_SQL,
            {
                "seq": cursor.seq,
                "id": cursor.id,
                "horizon": horizon,
                "projects": projects,
                "limit": limit,
                "max_bytes": max_bytes,
            },
        )
        rows = await cur.fetchall()
    # rows stay JSON text until someone reads them (``Change.row``): nothing to parse here
    changes = [change_from_row(r[6], r[7], r, 0, r[8], owner=r[10]) for r in rows]
    versions: dict[str, int | None] = {r[6]: int(r[9] or 0) for r in rows}
    return PollPage(changes, horizon, waited, versions, _cut(rows, 11, limit))


async def read_catch_up(
    pool: AsyncConnectionPool,
    project_id: str,
    table: str,
    after: Cursor,
    up_to: Cursor,
    limit: int,
    max_bytes: int = PAGE_MAX_BYTES,
) -> CatchUpPage:
    params: dict[str, Any] = {
        "project": project_id,
        "table": table,
        "seq": after.seq,
        "id": after.id,
        "to_seq": up_to.seq,
        "to_id": up_to.id,
        "limit": limit,
        "max_bytes": max_bytes,
    }
    async with pool.connection() as conn:
        cur = await conn.execute(CATCHUP_SQL, params)
        rows = await cur.fetchall()
    first = rows[0]
    pruned = Cursor(int(first[0]), int(first[1])) if first[0] is not None else None
    changes = [
        change_from_row(project_id, table, r, 3, r[9], owner=r[11])
        for r in rows
        if r[3] is not None
    ]
    page_rows = [r for r in rows if r[3] is not None]
    return CatchUpPage(
        changes, pruned, int(first[2]), int(first[10] or 0), _cut(page_rows, 12, limit)
    )
