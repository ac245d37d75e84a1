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

The three quota blocks of this revision's ``gateway.admit`` (``sql/0010/admit.sql``) are
marked ``-- quotas (0010)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

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
"""

# once gateway.notify_plans_changed exists
PLAN_TRIGGERS = r"""
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

ADMIT_PREPARE = r"""
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
    op.execute(frozen(__file__, "0010/notify_plans_changed"))
    op.execute(PLAN_TRIGGERS)
    op.execute(ADMIT_PREPARE)
    op.execute(frozen(__file__, "0010/admit", "0010/lookup_key", "0010/admission_session"))


def downgrade() -> None:
    op.execute(DOWNGRADE)
    # what 0009 left: 0002's admit, 0009's lookup_key and session functions
    op.execute(frozen(__file__, "0002/admit", "0009/lookup_key", "0009/admission_session"))
