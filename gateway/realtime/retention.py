"""Change-log retention: bounded batches, and the high-water mark that makes resumes honest."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

ADVISORY_LOCK_RETENTION = 0x6761_7465_7274  # "gatert": one pruner at a time


# --- retention ------------------------------------------------------------------------------

PRUNE_SQL = """
WITH doomed AS (
    SELECT c.xid, c.id, k.seq FROM gateway.changes c
      JOIN gateway.commits k ON k.xid = c.xid
     WHERE c.created_at < now() - make_interval(secs => %(seconds)s)
       AND (SELECT pg_try_advisory_xact_lock(%(lock)s))
     LIMIT %(batch)s
), deleted AS (
    DELETE FROM gateway.changes c USING doomed
     WHERE c.xid = doomed.xid AND c.id = doomed.id
    RETURNING c.project_id, doomed.seq, c.id
), newest AS (
    SELECT DISTINCT ON (project_id) project_id, seq, id
      FROM deleted ORDER BY project_id, seq DESC, id DESC
), marked AS (
    INSERT INTO gateway.changes_pruned AS w (project_id, seq, id)
    SELECT project_id, seq, id FROM newest
    ON CONFLICT (project_id) DO UPDATE
       SET seq = excluded.seq, id = excluded.id, pruned_at = now()
     WHERE (w.seq, w.id) < (excluded.seq, excluded.id)
)
SELECT count(*), max(seq) FROM deleted
"""

# A commit number whose changes are all gone (a separate statement: the one above sees
# the changes it deletes). Only numbers up to the last batch's largest are looked at.
PRUNE_COMMITS_SQL = """
DELETE FROM gateway.commits k
 WHERE k.seq <= %(upto)s
   AND NOT EXISTS (SELECT 1 FROM gateway.changes c WHERE c.xid = k.xid)
"""


async def prune_changes(
    conn: AsyncConnection[Any],
    retention_hours: float,
    batch: int = 5000,
    *,
    max_batches: int = 20,
) -> int:
    """Delete changes older than the retention, at most ``batch`` rows per statement.

    Each batch is one statement that also records, per project, the largest deleted
    ``(seq, id)`` (resuming below it answers ``reset``), then deletes the commit numbers
    left without changes, and takes a transaction-scoped
    advisory lock first: when instances prune at the same time only one deletes, the
    others find nothing and stop. On an autocommit connection every batch commits on its
    own, so no transaction stays open long. At most ``max_batches`` per call; the next
    call continues. Returns the number of rows deleted.
    """
    total = 0
    for _ in range(max_batches):
        cur = await conn.execute(
            PRUNE_SQL,
            {
                "seconds": float(retention_hours) * 3600.0,
                "batch": batch,
                "lock": ADVISORY_LOCK_RETENTION,
            },
        )
        row = await cur.fetchone()
        deleted = int(row[0]) if row else 0
        if deleted:
            assert row is not None
            await conn.execute(PRUNE_COMMITS_SQL, {"upto": int(row[1])})
        total += deleted
        if deleted < batch:
            break
    return total
