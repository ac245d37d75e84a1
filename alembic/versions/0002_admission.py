"""Admission: one counter row per project and the ``gateway.admit`` function.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26

Why this design (issue "Admission in one round trip", design (b))
----------------------------------------------------------------
Every keyed request is decided by ONE call, ``gateway.admit(key_hash, cost, window_s,
sliding, lock_timeout_ms)``: it validates the key, then applies the rate limit and the
daily quota with ONE ``INSERT … ON CONFLICT (project_id) DO UPDATE … RETURNING`` on the
project's row of ``gateway.admission_counters``. The row is locked by the upsert, so the
count it returns IS the decision: no read-then-write, no background increments, exact
across any number of gateway instances.

* One row per project holds the current window (start, length, count), the previous
  window's count (for the sliding mode) AND the UTC day with the day's request usage.
  The window and the day roll forward inside the same upsert (a row of an older window or
  day starts from zero), so the table is bounded by the number of projects and needs no
  cleanup job. The anchors measured this "one row per project holding window + day"
  design at ~20k decisions/s on one hot row (2 cores, async commit) against two separate
  upserts (window row + quota row): it halves the writes per request.
* The table is LOGGED: the day's usage must survive a restart. The price of a logged hot
  row is the WAL flush at commit, which holds the row lock: measured ~2.4k/s with a
  synchronous commit against ~23k/s with ``synchronous_commit = off`` (anchors, PG 18,
  2 cores). So the function sets ``synchronous_commit = off`` for its OWN transaction
  (``set_config(..., true)``; the gateway calls it in autocommit, so the tenant query's
  transaction keeps the durable default). A crash can lose at most the last fraction of a
  second of counts (wal_writer_delay), which is acceptable for counters; no decision can
  be observed before its commit record is written to WAL buffers.
* HOT-updatable: the only index is the primary key (project_id), which is never updated,
  and ``fillfactor = 50`` leaves room on each page for the new row versions, so an update
  never touches an index and old versions are pruned on access.
* A denied request (rate or quota) adds nothing: the upsert's ``WHERE`` skips the write
  when the decision is "no" and no window/day rolled (the row is still locked, so the
  re-read that reports the numbers is exact). Denials do not consume quota.
* Invalid, revoked or expired keys and suspended projects never reach the counter row.
* ``last_used_at`` of the key is written at most once a minute per key, with
  ``FOR NO KEY UPDATE SKIP LOCKED`` so a busy key never waits on its own row.
* The window comes from the database clock (``now()``), never an instance's clock.
* ``lock_timeout`` is set for the function's own transaction from the caller's admission
  timeout, so a held counter row produces an error (→ 503) instead of a queue; the
  client bounds the whole call as well.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE_SQL = r"""
CREATE TABLE gateway.admission_counters (
    project_id   uuid PRIMARY KEY REFERENCES gateway.projects (id) ON DELETE CASCADE,
    window_s     integer NOT NULL,   -- window length the row was counted with
    window_start bigint  NOT NULL,   -- epoch seconds (database clock), multiple of window_s
    window_count integer NOT NULL,   -- requests admitted in the current window
    prev_count   integer NOT NULL,   -- requests admitted in the window just before it
    day          date    NOT NULL,   -- UTC day of day_used
    day_used     bigint  NOT NULL,   -- requests admitted on that day (the daily quota)
    admitted     boolean NOT NULL    -- the decision of the last write (tells RETURNING)
) WITH (fillfactor = 50);

COMMENT ON TABLE gateway.admission_counters IS
    'One row per project: current/previous rate-limit window and the UTC day''s usage, '
    'rolled forward by gateway.admit(). Bounded by the number of projects.';
"""

TYPE_SQL = r"""
CREATE TYPE gateway.admission AS (
    outcome        text,              -- admitted | invalid_key | revoked | expired |
                                      -- suspended | rate_limited | quota_exceeded
    project_id     uuid,
    schema_name    text,
    key_id         uuid,
    key_type       text,
    scopes         text[],
    rate_limit     integer,
    rate_used      double precision,  -- count (fixed) or estimate (sliding) incl. this request
    rate_remaining integer,
    reset_at       double precision,  -- epoch seconds, database clock
    reset_in       double precision,  -- seconds from the database's clock_timestamp()
    window_s       integer,
    quota_used     bigint,
    quota_limit    bigint,
    day_reset_in   double precision   -- seconds to the next UTC midnight
);
"""

DOWNGRADE_SQL = """
DROP FUNCTION IF EXISTS gateway.lookup_key(text);
DROP FUNCTION IF EXISTS gateway.admit(text, integer, integer, boolean, integer);
DROP TYPE IF EXISTS gateway.admission;
DROP FUNCTION IF EXISTS gateway.admission_step(integer, bigint, integer, integer, date, bigint,
    integer, bigint, double precision, date, boolean, integer, integer, bigint);
DROP FUNCTION IF EXISTS gateway.admission_estimate(integer, integer, bigint, integer,
    double precision, boolean);
DROP TABLE IF EXISTS gateway.admission_counters;
"""


def upgrade() -> None:
    op.execute(TABLE_SQL)
    op.execute(frozen(__file__, "0002/admission_estimate", "0002/admission_step"))
    op.execute(TYPE_SQL)
    op.execute(frozen(__file__, "0002/admit", "0002/lookup_key"))


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
