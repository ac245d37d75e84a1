"""Database size: the maintenance leader samples each active project's schema size.

A job of the maintenance leader (gateway/ops/maintenance.py), run on every tick. Each tick
it picks the projects that are due — never sampled, or last sampled more than
``GATEWAY_DB_SIZE_SAMPLE_S`` ago (default 60) AND either used since (their admission row
moved) or not sampled for an hour — projects over their limit first, then the oldest
samples, at most ``MAX_PER_TICK`` of them and at most ``BUDGET_S`` seconds. It measures
them in batches of ``BATCH`` projects, each batch ONE short transaction on its own
connection:

    size = sum of pg_total_relation_size(table) over the schema's tables
           (heap + indexes + TOAST, what the project occupies on disk)

with ``lock_timeout`` set, so a table under an ``ALTER`` is skipped instead of waited
for, and the locks ``pg_total_relation_size`` takes (ACCESS SHARE) are held by one batch
for milliseconds — 10,000 projects are a series of small transactions, never one lock
storm. The result goes to ``gateway.quota_usage.db_size_bytes``, which ``gateway.admit``
reads: at or over the limit, inserts and updates get 429 ``DATABASE_QUOTA_EXCEEDED``.

Deleting rows doesn't shrink a table's files by itself. So a project whose last sample
was over its limit gets a plain ``VACUUM (SKIP_LOCKED)`` of its tables just before it is
measured (at most ``VACUUM_MAX_PER_TICK`` projects a tick): the deleted rows' space is
reclaimed and empty pages at the end of a table are given back, so a delete of the newest
rows — or of all of them — brings writes back at the next sample. Space freed in the
middle of a table is reused by new rows but still counts (docs/quotas.md: the limits).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

from gateway.db.disposable import disposable

logger = logging.getLogger("gateway.quotas")

BATCH = 50
MAX_PER_TICK = 1000
BUDGET_S = 2.0
LOCK_TIMEOUT_MS = 200
VACUUM_MAX_PER_TICK = 5
IDLE_RESAMPLE_S = 3600.0

DUE_SQL = """
SELECT p.id, p.schema_name,
       coalesce(u.db_size_bytes >= l.db_size_bytes, false) AS is_over
  FROM gateway.projects p
  JOIN gateway.project_limits l ON l.project_id = p.id
  LEFT JOIN gateway.quota_usage u ON u.project_id = p.id
  LEFT JOIN gateway.admission_counters ac ON ac.project_id = p.id
 WHERE p.status = 'active'
   AND (u.db_size_sampled_at IS NULL
        OR (u.db_size_sampled_at < now() - make_interval(secs => %(every)s)
            AND (ac.window_start + ac.window_s
                     >= extract(epoch FROM u.db_size_sampled_at)
                 OR u.db_size_sampled_at < now() - make_interval(secs => %(idle)s))))
 -- blocked projects first: their next sample is what lets them write again
 ORDER BY is_over DESC, u.db_size_sampled_at NULLS FIRST, p.id
 LIMIT %(limit)s
"""

MEASURE_SQL = """
WITH sizes AS (
    SELECT b.project_id, coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint AS bytes
      FROM unnest(%s::uuid[], %s::text[]) AS b(project_id, schema_name)
      LEFT JOIN pg_namespace n ON n.nspname = b.schema_name
      LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relkind IN ('r', 'm')
     GROUP BY b.project_id
)
INSERT INTO gateway.quota_usage AS u
       (project_id, bandwidth_month, db_size_bytes, db_size_sampled_at)
SELECT s.project_id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, s.bytes, now()
  FROM sizes s
  JOIN gateway.projects p ON p.id = s.project_id
 ORDER BY s.project_id
ON CONFLICT (project_id) DO UPDATE
   SET db_size_bytes = excluded.db_size_bytes,
       db_size_sampled_at = excluded.db_size_sampled_at
"""

TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY c.relname
"""


class DbSizeSampler:
    """The job's state between ticks (figures for metrics and tests)."""

    def __init__(self, sample_s: float) -> None:
        self.sample_s = sample_s
        self.sampled = 0
        self.vacuumed = 0
        self.skipped = 0
        self.last_error: str | None = None

    def stats(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "vacuumed": self.vacuumed,
            "skipped": self.skipped,
            "last_error": self.last_error,
        }

    async def run(self, conn: AsyncConnection[Any]) -> int:
        """One tick on an autocommit connection: returns how many projects were measured."""
        started = time.monotonic()
        cur = await conn.execute(
            DUE_SQL, {"every": self.sample_s, "idle": IDLE_RESAMPLE_S, "limit": MAX_PER_TICK}
        )
        due = [(str(r[0]), str(r[1]), bool(r[2])) for r in await cur.fetchall()]
        measured = 0
        vacuums = 0
        for i in range(0, len(due), BATCH):
            if time.monotonic() - started >= BUDGET_S:
                break
            batch = due[i : i + BATCH]
            for _, schema, over in batch:
                if over and vacuums < VACUUM_MAX_PER_TICK:
                    vacuums += 1
                    await self._vacuum(conn, schema)
            measured += await self._measure(conn, batch)
        self.sampled += measured
        return measured

    async def _measure(self, conn: AsyncConnection[Any], batch: list[tuple[str, str, bool]]) -> int:
        try:
            await self._measure_once(conn, batch)
            return len(batch)
        except psycopg.errors.LockNotAvailable:
            pass
        # one table of the batch is locked (an ALTER in progress): one by one, skip it
        done = 0
        for item in batch:
            try:
                await self._measure_once(conn, [item])
                done += 1
            except psycopg.errors.LockNotAvailable:
                self.skipped += 1
        return done

    async def _measure_once(
        self, conn: AsyncConnection[Any], batch: list[tuple[str, str, bool]]
    ) -> None:
        async with conn.transaction():
            await conn.execute(f"SET LOCAL lock_timeout = {int(LOCK_TIMEOUT_MS)}")
            await conn.execute(
                MEASURE_SQL, ([pid for pid, _, _ in batch], [s for _, s, _ in batch])
            )

    async def _vacuum(self, conn: AsyncConnection[Any], schema: str) -> None:
        cur = await conn.execute(TABLES_SQL, (schema,))
        tables = [str(r[0]) for r in await cur.fetchall()]
        if not tables:
            return
        statement = sql.SQL("VACUUM (SKIP_LOCKED) {}").format(
            sql.SQL(", ").join(sql.Identifier(schema, t) for t in tables)
        )
        try:
            await conn.execute(statement)
            self.vacuumed += 1
        except psycopg.Error as exc:  # never fail the sample for it
            self.last_error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
            logger.warning("quotas: VACUUM of %s failed: %s", schema, self.last_error)


def install(maintenance: Any, sample_s: float) -> DbSizeSampler:
    """Register the sampling job with the maintenance leader (every tick; each project is
    measured at most every ``sample_s``)."""
    sampler = DbSizeSampler(sample_s)

    async def job(conn: AsyncConnection[Any]) -> int:
        # Not in the leader's transaction: VACUUM can't run in one, and each batch must
        # commit (and release its locks) on its own. A disposable connection: a tick
        # touches up to MAX_PER_TICK projects' tables, whose catalog entries must not stay
        # cached in a pooled backend (gateway/db/disposable.py).
        async with disposable(maintenance.pool) as own:
            return await sampler.run(own)

    maintenance.register("quota_db_size", job)
    return sampler
