"""Plans, per-project overrides, and the bandwidth and database-size quotas.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

What this adds (issue #14, docs/quotas.md):

* ``gateway.plans``: one row per plan (tier) with every limit the gateway enforces or
  reports; ``-1`` means unlimited (as the original's metering). Seeded with
  ``free starter growth scale enterprise`` — free carries the original's defaults.
* ``gateway.projects.tier`` IS the project's plan: its CHECK over five names becomes a
  foreign key to ``gateway.plans(name)``. The project's own limit columns become
  **overrides**: NULL = "the plan's value", ``-1`` = unlimited. Existing projects whose
  limits equal their plan's values are switched to "inherit"; others keep theirs as
  overrides, so nobody's limits change on upgrade.
* ``gateway.project_limits``: the ONE view that resolves plan + overrides into the
  effective limits (NULL = unlimited). ``gateway.admit`` reads its limits from it.
* ``gateway.quota_usage``: one small row per project with the UTC month's bandwidth
  (added by every instance in batches, after the answers) and the sampled database size
  (written by the maintenance leader). ``gateway.admit`` joins it once.
* ``gateway.admit`` gains ``p_grows`` (the request inserts or updates) and refuses, in
  the same statement, a request whose project is over its monthly bandwidth, or a
  growing request whose project is over its database size. Such a refusal consumes
  nothing: the counter upsert is run with a quota of -1, so it denies without writing
  (the rate limit is still decided first, the original's order). The admission type
  gains the numbers the 429's ``violations`` need.
* A change of a plan notifies ``*`` on the metadata channel (every instance drops its
  local denies and its catalog cache); a change of a project's new override columns
  notifies the project.

The three quota blocks inside ``gateway.admit`` are marked ``-- quotas (0010)`` so they
can be merged by hand with other changes of the function.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

GIB = 1024**3
MIB = 1024**2

# name, rate/min, requests/day, bandwidth bytes/month, database bytes, job runs/month,
# realtime streams (-1 = unlimited). free = the original's inhouse_quotas defaults and its
# metering's job runs; the rest is a ladder of roughly x3-x10 per step.
PLANS = (
    ("free", 100, 10_000, 1 * GIB, 100 * MIB, 1_000, 100),
    ("starter", 300, 100_000, 10 * GIB, 1 * GIB, 10_000, 200),
    ("growth", 1_000, 1_000_000, 100 * GIB, 10 * GIB, 50_000, 1_000),
    ("scale", 3_000, 10_000_000, 1024 * GIB, 100 * GIB, -1, 5_000),
    ("enterprise", 10_000, -1, -1, -1, -1, -1),
)

TABLES = r"""
CREATE TABLE gateway.plans (
    name                    text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,31}$'),
    rate_limit_per_minute   integer NOT NULL CHECK (rate_limit_per_minute >= 0),
    requests_per_day        bigint  NOT NULL CHECK (requests_per_day >= -1),
    bandwidth_bytes_monthly bigint  NOT NULL CHECK (bandwidth_bytes_monthly >= -1),
    db_size_bytes           bigint  NOT NULL CHECK (db_size_bytes >= -1),
    job_runs_monthly        bigint  NOT NULL CHECK (job_runs_monthly >= -1),
    realtime_streams        integer NOT NULL CHECK (realtime_streams >= -1),
    created_at              timestamptz NOT NULL DEFAULT now(),
    updated_at              timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gateway.plans IS
    'Plans (tiers): every limit a project inherits unless it has an override; -1 = unlimited.';

-- projects: overrides (NULL = the plan's value, -1 = unlimited)
ALTER TABLE gateway.projects
    ALTER COLUMN rate_limit_per_minute DROP NOT NULL,
    ALTER COLUMN rate_limit_per_minute DROP DEFAULT,
    ALTER COLUMN requests_limit_daily DROP NOT NULL,
    ALTER COLUMN requests_limit_daily DROP DEFAULT,
    ADD COLUMN bandwidth_limit_monthly bigint
        CONSTRAINT projects_bandwidth_limit_check CHECK (bandwidth_limit_monthly >= -1),
    ADD COLUMN db_size_limit_bytes bigint
        CONSTRAINT projects_db_size_limit_check CHECK (db_size_limit_bytes >= -1),
    ADD COLUMN job_runs_limit_monthly bigint
        CONSTRAINT projects_job_runs_limit_check CHECK (job_runs_limit_monthly >= -1),
    ADD COLUMN realtime_streams_limit integer
        CONSTRAINT projects_realtime_streams_limit_check CHECK (realtime_streams_limit >= -1);
ALTER TABLE gateway.projects DROP CONSTRAINT projects_requests_limit_check;
ALTER TABLE gateway.projects ADD CONSTRAINT projects_requests_limit_check
    CHECK (requests_limit_daily >= -1);
ALTER TABLE gateway.projects DROP CONSTRAINT projects_tier_check;
"""

AFTER_SEED = r"""
ALTER TABLE gateway.projects ADD CONSTRAINT projects_tier_fkey
    FOREIGN KEY (tier) REFERENCES gateway.plans (name) ON UPDATE CASCADE;
CREATE INDEX projects_tier_idx ON gateway.projects (tier);

-- nobody's limits change on upgrade: values equal to the plan's become "inherit"
UPDATE gateway.projects p
   SET rate_limit_per_minute = CASE WHEN p.rate_limit_per_minute = pl.rate_limit_per_minute
                                    THEN NULL ELSE p.rate_limit_per_minute END,
       requests_limit_daily = CASE WHEN p.requests_limit_daily = pl.requests_per_day
                                   THEN NULL ELSE p.requests_limit_daily END
  FROM gateway.plans pl
 WHERE pl.name = p.tier;

-- THE resolution of plan + overrides (NULL = unlimited; the rate limit is always a number)
CREATE VIEW gateway.project_limits AS
SELECT p.id AS project_id,
       p.tier AS plan,
       coalesce(p.rate_limit_per_minute, pl.rate_limit_per_minute) AS rate_limit_per_minute,
       nullif(coalesce(p.requests_limit_daily, pl.requests_per_day), -1) AS requests_per_day,
       nullif(coalesce(p.bandwidth_limit_monthly, pl.bandwidth_bytes_monthly), -1)
           AS bandwidth_bytes_monthly,
       nullif(coalesce(p.db_size_limit_bytes, pl.db_size_bytes), -1) AS db_size_bytes,
       nullif(coalesce(p.job_runs_limit_monthly, pl.job_runs_monthly), -1) AS job_runs_monthly,
       nullif(coalesce(p.realtime_streams_limit, pl.realtime_streams), -1) AS realtime_streams
  FROM gateway.projects p
  JOIN gateway.plans pl ON pl.name = p.tier;

CREATE TABLE gateway.quota_usage (
    project_id         uuid PRIMARY KEY REFERENCES gateway.projects (id) ON DELETE CASCADE,
    bandwidth_month    date   NOT NULL,            -- first day of the UTC month counted
    bandwidth_bytes    bigint NOT NULL DEFAULT 0,  -- response body bytes sent that month
    db_size_bytes      bigint,                     -- last sample; NULL = never sampled
    db_size_sampled_at timestamptz
) WITH (fillfactor = 50);
COMMENT ON TABLE gateway.quota_usage IS
    'Per project: the UTC month''s bandwidth (batched adds by every instance) and the '
    'sampled database size (maintenance leader). Read by gateway.admit.';

-- a plan change reaches every instance: "*" = all projects
CREATE FUNCTION gateway.notify_plans_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
BEGIN
    PERFORM pg_notify('gateway_metadata', '*');
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION gateway.notify_plans_changed() FROM PUBLIC;
CREATE TRIGGER gateway_plans_notify
    AFTER UPDATE OR DELETE ON gateway.plans
    FOR EACH STATEMENT EXECUTE FUNCTION gateway.notify_plans_changed();

-- the new override columns notify like the old ones (0003's trigger lists those)
CREATE TRIGGER gateway_quota_overrides_notify
    AFTER UPDATE ON gateway.projects
    FOR EACH ROW
    WHEN (OLD.bandwidth_limit_monthly IS DISTINCT FROM NEW.bandwidth_limit_monthly
       OR OLD.db_size_limit_bytes IS DISTINCT FROM NEW.db_size_limit_bytes
       OR OLD.job_runs_limit_monthly IS DISTINCT FROM NEW.job_runs_limit_monthly
       OR OLD.realtime_streams_limit IS DISTINCT FROM NEW.realtime_streams_limit)
    EXECUTE FUNCTION gateway.notify_metadata_project_row();
"""

ADMIT = r"""
-- the session wrappers (0009) call the functions replaced here: dropped, then recreated
-- below around the new admit (one more argument, p_grows, before the session's)
DROP FUNCTION gateway.lookup_key(text, text);
DROP FUNCTION gateway.admit(text, integer, integer, boolean, integer, text);
DROP FUNCTION gateway.lookup_key(text);
DROP FUNCTION gateway.admit(text, integer, integer, boolean, integer);

-- quotas (0010): the numbers a 429's violations need, appended to the admission type
ALTER TYPE gateway.admission
    ADD ATTRIBUTE bandwidth_used bigint,              -- bytes this UTC month (batched)
    ADD ATTRIBUTE bandwidth_limit bigint,             -- NULL = unlimited
    ADD ATTRIBUTE db_size_used bigint,                -- last sample (NULL = never)
    ADD ATTRIBUTE db_size_limit bigint,               -- NULL = unlimited
    ADD ATTRIBUTE month_reset_in double precision;    -- seconds to the next UTC month

CREATE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000,
    p_grows boolean DEFAULT false     -- quotas (0010): the request inserts or updates
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
    -- quotas (0010)
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_quota bigint;
BEGIN
    -- this call's own transaction only (the gateway runs it in autocommit)
    PERFORM set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true);

    SELECT ak.id, ak.key_type, ak.scopes, ak.status, ak.expires_at, ak.last_used_at,
           p.id AS pid, p.schema_name, p.status AS project_status,
           -- quotas (0010): effective limits (plan + overrides) and the usage row
           l.rate_limit_per_minute,
           coalesce(l.requests_per_day, 4611686018427387904) AS requests_limit_daily,
           l.requests_per_day AS requests_limit,
           l.bandwidth_bytes_monthly AS bw_limit,
           CASE WHEN u.bandwidth_month = v_month THEN u.bandwidth_bytes ELSE 0 END AS bw_used,
           l.db_size_bytes AS db_limit,
           u.db_size_bytes AS db_used
      INTO k
      FROM gateway.api_keys ak
      JOIN gateway.projects p ON p.id = ak.project_id
      JOIN gateway.project_limits l ON l.project_id = p.id
      LEFT JOIN gateway.quota_usage u ON u.project_id = p.id
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

    -- quotas (0010): over the month's bandwidth, or a growing request over the database
    -- size -> a quota of -1 makes the upsert deny without consuming anything
    v_quota := CASE WHEN (k.bw_limit IS NOT NULL AND k.bw_used >= k.bw_limit)
                      OR (p_grows AND k.db_limit IS NOT NULL
                          AND coalesce(k.db_used, 0) >= k.db_limit)
                    THEN -1 ELSE k.requests_limit_daily END;

    -- THE decision: one atomic upsert on the project's row; the row lock serialises
    -- concurrent callers, so the returned state is exact.
    INSERT INTO gateway.admission_counters AS ac
           (project_id, window_s, window_start, window_count, prev_count, day, day_used,
            admitted)
    SELECT k.pid, s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
           s.day_used, s.admitted
      FROM gateway.admission_step(NULL, NULL, NULL, NULL, NULL, NULL,
                                  p_window_s, v_window_start, v_epoch, v_today, p_sliding,
                                  p_cost, k.rate_limit_per_minute, v_quota) s
    ON CONFLICT (project_id) DO UPDATE
       SET (window_s, window_start, window_count, prev_count, day, day_used, admitted) =
           (SELECT s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
                   s.day_used, s.admitted
              FROM gateway.admission_step(ac.window_s, ac.window_start, ac.window_count,
                                          ac.prev_count, ac.day, ac.day_used,
                                          p_window_s, v_window_start, v_epoch, v_today,
                                          p_sliding, p_cost, k.rate_limit_per_minute,
                                          v_quota) s)
     WHERE (SELECT s.changed
              FROM gateway.admission_step(ac.window_s, ac.window_start, ac.window_count,
                                          ac.prev_count, ac.day, ac.day_used,
                                          p_window_s, v_window_start, v_epoch, v_today,
                                          p_sliding, p_cost, k.rate_limit_per_minute,
                                          v_quota) s)
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
    r.quota_limit := k.requests_limit;  -- quotas (0010): NULL = unlimited
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
    -- quotas (0010)
    r.bandwidth_used := k.bw_used;
    r.bandwidth_limit := k.bw_limit;
    r.db_size_used := k.db_used;
    r.db_size_limit := k.db_limit;
    r.month_reset_in := extract(epoch FROM ((v_month + interval '1 month')::timestamp
                                            AT TIME ZONE 'UTC'))::double precision - v_clock;
    RETURN r;
END
$fn$;

COMMENT ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean) IS
    'Key check + rate limit + daily quota + bandwidth/database quotas in one call. Call it '
    'in autocommit: it sets synchronous_commit=off and lock_timeout for its own transaction.';
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean)
    FROM PUBLIC;

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
           l.rate_limit_per_minute, NULL::double precision, NULL::integer,
           NULL::double precision, NULL::double precision, NULL::integer,
           NULL::bigint, l.requests_per_day, NULL::double precision, NULL::uuid,
           NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::double precision
      FROM (SELECT 1) one
      LEFT JOIN gateway.api_keys ak ON ak.key_hash = p_key_hash
      LEFT JOIN gateway.projects p ON p.id = ak.project_id
      LEFT JOIN gateway.project_limits l ON l.project_id = p.id
$fn$;
REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text) FROM PUBLIC;

-- the data routes' admission with a session (0009's design): the admission above, then
-- the session, in ONE statement; no DEFAULTs, so a 6-argument call is never ambiguous
CREATE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer,
    p_grows boolean,
    p_session_hash text
) RETURNS gateway.admission
LANGUAGE sql AS $fn$
    SELECT gateway.admission_session(
        gateway.admit(p_key_hash, p_cost, p_window_s, p_sliding, p_lock_timeout_ms, p_grows),
        p_session_hash)
$fn$;
CREATE FUNCTION gateway.lookup_key(p_key_hash text, p_session_hash text)
RETURNS gateway.admission
LANGUAGE sql AS $fn$
    SELECT gateway.admission_session(gateway.lookup_key(p_key_hash), p_session_hash)
$fn$;
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text, text) FROM PUBLIC;
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS gateway.lookup_key(text, text);
DROP FUNCTION IF EXISTS gateway.admit(text, integer, integer, boolean, integer, boolean, text);
DROP FUNCTION IF EXISTS gateway.lookup_key(text);
DROP FUNCTION IF EXISTS gateway.admit(text, integer, integer, boolean, integer, boolean);
ALTER TYPE gateway.admission
    DROP ATTRIBUTE month_reset_in, DROP ATTRIBUTE db_size_limit, DROP ATTRIBUTE db_size_used,
    DROP ATTRIBUTE bandwidth_limit, DROP ATTRIBUTE bandwidth_used;
DROP TRIGGER IF EXISTS gateway_quota_overrides_notify ON gateway.projects;
DROP TRIGGER IF EXISTS gateway_plans_notify ON gateway.plans;
DROP FUNCTION IF EXISTS gateway.notify_plans_changed();
DROP TABLE IF EXISTS gateway.quota_usage;
UPDATE gateway.projects p
   SET rate_limit_per_minute = l.rate_limit_per_minute,
       requests_limit_daily = coalesce(l.requests_per_day, 2147483647)
  FROM gateway.project_limits l WHERE l.project_id = p.id;
DROP VIEW IF EXISTS gateway.project_limits;
ALTER TABLE gateway.projects DROP CONSTRAINT projects_tier_fkey;
DROP INDEX IF EXISTS gateway.projects_tier_idx;
UPDATE gateway.projects SET tier = 'free'
 WHERE tier NOT IN ('free', 'starter', 'growth', 'scale', 'enterprise');
ALTER TABLE gateway.projects
    ADD CONSTRAINT projects_tier_check
        CHECK (tier IN ('free', 'starter', 'growth', 'scale', 'enterprise')),
    DROP CONSTRAINT projects_requests_limit_check,
    ADD CONSTRAINT projects_requests_limit_check CHECK (requests_limit_daily >= 0),
    ALTER COLUMN rate_limit_per_minute SET DEFAULT 100,
    ALTER COLUMN rate_limit_per_minute SET NOT NULL,
    ALTER COLUMN requests_limit_daily SET DEFAULT 10000,
    ALTER COLUMN requests_limit_daily SET NOT NULL,
    DROP COLUMN realtime_streams_limit,
    DROP COLUMN job_runs_limit_monthly,
    DROP COLUMN db_size_limit_bytes,
    DROP COLUMN bandwidth_limit_monthly;
DROP TABLE IF EXISTS gateway.plans;
"""


def _migration(filename: str) -> Any:
    """An earlier migration's module, for the SQL its downgrade restores."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"gateway_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _old_admit_sql() -> str:
    """What 0009 left: 0002's ``gateway.admit``, then 0009's ``lookup_key`` (with the
    session's user) and its session wrappers."""
    text: str = _migration("0002_admission.py").UPGRADE_SQL
    owner_rows = _migration("0009_owner_rows.py")
    admit = text[
        text.index("CREATE FUNCTION gateway.admit(") : text.index(
            "CREATE FUNCTION gateway.lookup_key("
        )
    ]
    return admit + owner_rows.LOOKUP_KEY + owner_rows.SESSION_WRAPPERS


def upgrade() -> None:
    op.execute(TABLES)
    values = ",\n".join(
        f"({name!r}, {rate}, {req}, {bw}, {db}, {jobs}, {streams})"
        for name, rate, req, bw, db, jobs, streams in PLANS
    )
    op.execute(
        "INSERT INTO gateway.plans (name, rate_limit_per_minute, requests_per_day, "
        "bandwidth_bytes_monthly, db_size_bytes, job_runs_monthly, realtime_streams) VALUES\n"
        + values
    )
    op.execute(AFTER_SEED)
    op.execute(ADMIT)


def downgrade() -> None:
    op.execute(DOWNGRADE)
    op.execute(_old_admit_sql())
