"""Plans bound a job's ``timeoutMs``: ``plans.job_timeout_ms_max`` and its override.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04

A job's ``timeoutMs`` was any value up to 30 minutes on every plan, so a free project with
a hanging endpoint held a delivery slot for half an hour per attempt. Each plan now has a
bound (free 60 s, starter 5 min, growth 10 min, scale 15 min, enterprise the original's
30 min), a project may override it (``projects.job_timeout_ms_limit``, NULL = the plan's),
and ``gateway.project_limits`` resolves it (``job_timeout_ms_max``, never unlimited). The
enqueue refuses a larger ``timeoutMs`` and the worker runs a stored job with
min(its timeout, the bound) (docs/jobs.md). ``gateway.enqueue_job`` reads the bound from
the same view in the same statement (frozen as ``0016/enqueue_job``; the downgrade
restores 0011's).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BOUNDS = (
    ("free", 60_000),
    ("starter", 300_000),
    ("growth", 600_000),
    ("scale", 900_000),
    ("enterprise", 1_800_000),
)

UPGRADE = r"""
ALTER TABLE gateway.plans
    ADD COLUMN job_timeout_ms_max integer NOT NULL DEFAULT 1800000
        CONSTRAINT plans_job_timeout_ms_max_check
        CHECK (job_timeout_ms_max BETWEEN 1000 AND 1800000);
ALTER TABLE gateway.plans ALTER COLUMN job_timeout_ms_max DROP DEFAULT;
ALTER TABLE gateway.projects
    ADD COLUMN job_timeout_ms_limit integer
        CONSTRAINT projects_job_timeout_ms_limit_check
        CHECK (job_timeout_ms_limit BETWEEN 1000 AND 1800000);

CREATE OR REPLACE VIEW gateway.project_limits AS
SELECT p.id AS project_id,
       p.tier AS plan,
       coalesce(p.rate_limit_per_minute, pl.rate_limit_per_minute) AS rate_limit_per_minute,
       nullif(coalesce(p.requests_limit_daily, pl.requests_per_day), -1) AS requests_per_day,
       nullif(coalesce(p.bandwidth_limit_monthly, pl.bandwidth_bytes_monthly), -1)
           AS bandwidth_bytes_monthly,
       nullif(coalesce(p.db_size_limit_bytes, pl.db_size_bytes), -1) AS db_size_bytes,
       nullif(coalesce(p.job_runs_limit_monthly, pl.job_runs_monthly), -1) AS job_runs_monthly,
       nullif(coalesce(p.realtime_streams_limit, pl.realtime_streams), -1) AS realtime_streams,
       coalesce(p.job_timeout_ms_limit, pl.job_timeout_ms_max) AS job_timeout_ms_max
  FROM gateway.projects p
  JOIN gateway.plans pl ON pl.name = p.tier;
"""

DOWNGRADE = r"""
DROP VIEW gateway.project_limits;
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
ALTER TABLE gateway.projects DROP COLUMN job_timeout_ms_limit;
ALTER TABLE gateway.plans DROP COLUMN job_timeout_ms_max;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    for name, bound in BOUNDS:
        op.execute(f"UPDATE gateway.plans SET job_timeout_ms_max = {bound:d} WHERE name = '{name}'")
    op.execute(frozen(__file__, "0016/enqueue_job"))


def downgrade() -> None:
    op.execute(frozen(__file__, "0011/enqueue_job"))
    op.execute(DOWNGRADE)
