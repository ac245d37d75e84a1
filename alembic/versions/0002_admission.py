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

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
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

-- The sliding-window estimate, shared by the upsert and the report so both compute the
-- exact same floating-point value: previous x (1 - elapsed/window) + current.
CREATE FUNCTION gateway.admission_estimate(
    p_prev integer, p_count integer, p_window_start bigint, p_window_s integer,
    p_epoch double precision, p_sliding boolean
) RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
    SELECT CASE WHEN p_sliding AND p_prev > 0
                THEN p_prev * (1.0 - least(1.0, greatest(0.0,
                         (p_epoch - p_window_start) / p_window_s::double precision)))
                ELSE 0.0 END
           + p_count
$fn$;

-- One step of the counter state machine: the row as stored (NULLs for a new project) and
-- the request -> the row to store. Pure, so the INSERT and the ON CONFLICT branch share it.
CREATE FUNCTION gateway.admission_step(
    c_window_s integer, c_window_start bigint, c_count integer, c_prev integer,
    c_day date, c_used bigint,
    p_window_s integer, p_window_start bigint, p_epoch double precision, p_today date,
    p_sliding boolean, p_cost integer, p_limit integer, p_quota bigint
) RETURNS TABLE (
    window_s integer, window_start bigint, window_count integer, prev_count integer,
    day date, day_used bigint, admitted boolean, changed boolean
)
-- a set-returning single-SELECT SQL function: the planner inlines it into the upsert
LANGUAGE sql IMMUTABLE PARALLEL SAFE ROWS 1 AS $fn$
    SELECT p_window_s,
           r.ws,
           r.cur + CASE WHEN r.ok THEN p_cost ELSE 0 END,
           r.prev,
           r.d,
           r.used + CASE WHEN r.ok THEN p_cost ELSE 0 END,
           r.ok,
           r.ok OR NOT r.same OR NOT r.dsame
    FROM (
        SELECT q.*,
               gateway.admission_estimate(q.prev, q.cur, q.ws, p_window_s, p_epoch, p_sliding)
                   + p_cost <= p_limit
               AND q.used + p_cost <= p_quota AS ok
        FROM (
            SELECT s.same, s.dsame,
                   CASE WHEN s.same THEN c_window_start ELSE p_window_start END AS ws,
                   CASE WHEN s.same THEN c_count ELSE 0 END AS cur,
                   CASE WHEN s.same THEN c_prev
                        WHEN s.adjacent THEN c_count
                        ELSE 0 END AS prev,
                   CASE WHEN s.dsame THEN c_day ELSE p_today END AS d,
                   CASE WHEN s.dsame THEN c_used ELSE 0 END AS used
            FROM (
                SELECT
                    -- the stored window is ours, or newer (another call already rolled it
                    -- while this one waited for the row): count into the stored window
                    coalesce(c_window_s = p_window_s AND c_window_start >= p_window_start,
                             false) AS same,
                    coalesce(c_window_s = p_window_s
                             AND c_window_start = p_window_start - p_window_s,
                             false) AS adjacent,
                    coalesce(c_day >= p_today, false) AS dsame
            ) s
        ) q
    ) r
$fn$;

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

CREATE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000
) RETURNS gateway.admission
LANGUAGE plpgsql AS $fn$
DECLARE
    r gateway.admission;
    k record;
    c record;
    v_epoch double precision := extract(epoch FROM now())::double precision;
    v_window_start bigint;
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_clock double precision;
    v_reset double precision;
BEGIN
    -- this call's own transaction only (the gateway runs it in autocommit)
    PERFORM set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true);

    SELECT ak.id, ak.key_type, ak.scopes, ak.status, ak.expires_at, ak.last_used_at,
           p.id AS pid, p.schema_name, p.status AS project_status,
           p.rate_limit_per_minute, p.requests_limit_daily
      INTO k
      FROM gateway.api_keys ak
      JOIN gateway.projects p ON p.id = ak.project_id
     WHERE ak.key_hash = p_key_hash;

    IF NOT FOUND THEN
        r.outcome := 'invalid_key';
        RETURN r;
    END IF;
    r.project_id := k.pid;
    r.schema_name := k.schema_name;
    r.key_id := k.id;
    r.key_type := k.key_type;
    r.scopes := k.scopes;
    IF k.status = 'revoked' THEN
        r.outcome := 'revoked';
        RETURN r;
    ELSIF k.status <> 'active' OR (k.expires_at IS NOT NULL AND k.expires_at <= now()) THEN
        r.outcome := 'expired';
        RETURN r;
    ELSIF k.project_status <> 'active' THEN
        r.outcome := 'suspended';
        RETURN r;
    END IF;

    -- at most one write a minute per key; never wait for the key's row
    IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' THEN
        UPDATE gateway.api_keys SET last_used_at = now()
         WHERE id IN (SELECT id FROM gateway.api_keys
                       WHERE id = k.id
                         AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
                         FOR NO KEY UPDATE SKIP LOCKED);
    END IF;

    v_window_start := floor(v_epoch / p_window_s)::bigint * p_window_s;

    -- THE decision: one atomic upsert on the project's row; the row lock serialises
    -- concurrent callers, so the returned state is exact.
    INSERT INTO gateway.admission_counters AS ac
           (project_id, window_s, window_start, window_count, prev_count, day, day_used,
            admitted)
    SELECT k.pid, s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
           s.day_used, s.admitted
      FROM gateway.admission_step(NULL, NULL, NULL, NULL, NULL, NULL,
                                  p_window_s, v_window_start, v_epoch, v_today, p_sliding,
                                  p_cost, k.rate_limit_per_minute,
                                  k.requests_limit_daily) s
    ON CONFLICT (project_id) DO UPDATE
       SET (window_s, window_start, window_count, prev_count, day, day_used, admitted) =
           (SELECT s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
                   s.day_used, s.admitted
              FROM gateway.admission_step(ac.window_s, ac.window_start, ac.window_count,
                                          ac.prev_count, ac.day, ac.day_used,
                                          p_window_s, v_window_start, v_epoch, v_today,
                                          p_sliding, p_cost, k.rate_limit_per_minute,
                                          k.requests_limit_daily) s)
     WHERE (SELECT s.changed
              FROM gateway.admission_step(ac.window_s, ac.window_start, ac.window_count,
                                          ac.prev_count, ac.day, ac.day_used,
                                          p_window_s, v_window_start, v_epoch, v_today,
                                          p_sliding, p_cost, k.rate_limit_per_minute,
                                          k.requests_limit_daily) s)
    RETURNING ac.window_start, ac.window_count, ac.prev_count, ac.day_used, ac.admitted
      INTO c;

    IF NOT FOUND THEN
        -- denied without a write (same window, same day): the upsert still holds the
        -- row lock, so this read sees exactly the state the decision was made on
        SELECT ac.window_start, ac.window_count, ac.prev_count, ac.day_used,
               false AS admitted
          INTO c
          FROM gateway.admission_counters ac
         WHERE ac.project_id = k.pid;
    END IF;

    r.window_s := p_window_s;
    r.rate_limit := k.rate_limit_per_minute;
    r.quota_limit := k.requests_limit_daily;
    r.quota_used := c.day_used;
    r.rate_used := gateway.admission_estimate(c.prev_count, c.window_count, c.window_start,
                                              p_window_s, v_epoch, p_sliding);
    r.rate_remaining := greatest(0, floor(r.rate_limit - r.rate_used))::integer;
    IF c.admitted THEN
        r.outcome := 'admitted';
    ELSIF r.rate_used + p_cost > r.rate_limit THEN
        r.outcome := 'rate_limited';
    ELSE
        r.outcome := 'quota_exceeded';
    END IF;

    -- reset: the end of the current fixed window; for a sliding 429 with no room even for
    -- one request, the moment the estimate lets one request through
    v_reset := c.window_start + p_window_s;
    IF r.outcome = 'rate_limited' AND p_sliding AND r.rate_used + 1 > r.rate_limit THEN
        IF c.window_count + 1 <= r.rate_limit AND c.prev_count > 0 THEN
            -- prev x (1 - e/w) + count + 1 <= limit  <=>  e >= w x (1 - (limit-count-1)/prev)
            v_reset := c.window_start + p_window_s
                       * (1.0 - (r.rate_limit - c.window_count - 1)::double precision
                                / c.prev_count);
        ELSIF r.rate_limit >= 1 AND c.window_count > 0 THEN
            -- next window, where this window's count becomes "previous"
            v_reset := c.window_start + p_window_s + p_window_s
                       * greatest(0.0, 1.0 - (r.rate_limit - 1)::double precision
                                             / c.window_count);
        END IF;
    END IF;
    v_clock := extract(epoch FROM clock_timestamp())::double precision;
    r.reset_at := v_reset;
    r.reset_in := greatest(0.0, v_reset - v_clock);
    r.day_reset_in := extract(epoch FROM ((v_today + 1)::timestamp AT TIME ZONE 'UTC'))
                      ::double precision - v_clock;
    RETURN r;
END
$fn$;

COMMENT ON FUNCTION gateway.admit(text, integer, integer, boolean, integer) IS
    'Key check + rate limit + daily quota in one call. Call it in autocommit: it sets '
    'synchronous_commit=off and lock_timeout for its own transaction.';

-- Only the gateway's own user calls these (tenant roles have no USAGE on schema gateway
-- anyway; this is defence in depth).
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer) FROM PUBLIC;

-- Key validation only, for the bench-only GATEWAY_BENCH_DISABLE_ADMISSION switch.
CREATE FUNCTION gateway.lookup_key(p_key_hash text) RETURNS gateway.admission
LANGUAGE sql STABLE AS $fn$
    SELECT CASE WHEN ak.id IS NULL THEN 'invalid_key'
                WHEN ak.status = 'revoked' THEN 'revoked'
                WHEN ak.status <> 'active'
                     OR (ak.expires_at IS NOT NULL AND ak.expires_at <= now()) THEN 'expired'
                WHEN p.status <> 'active' THEN 'suspended'
                ELSE 'admitted' END,
           p.id, p.schema_name, ak.id, ak.key_type, ak.scopes,
           p.rate_limit_per_minute, NULL::double precision, NULL::integer,
           NULL::double precision, NULL::double precision, NULL::integer,
           NULL::bigint, p.requests_limit_daily, NULL::double precision
      FROM (SELECT 1) one
      LEFT JOIN gateway.api_keys ak ON ak.key_hash = p_key_hash
      LEFT JOIN gateway.projects p ON p.id = ak.project_id
$fn$;

REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text) FROM PUBLIC;
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
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
