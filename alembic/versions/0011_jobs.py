"""Background jobs: the queue, schedules, per-project settings, monthly usage, and the
two functions that must be atomic (enqueue with idempotency and quota; fair claiming).

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

Design (docs/jobs.md has the reasons):

- ``gateway.jobs``: one row per job. Stored states are ``pending`` (``delayed`` is a
  pending job whose ``run_at`` is in the future, as BullMQ shows a job waiting out its
  backoff), ``active``, ``completed``, ``failed``, ``cancelled``. A claimed job carries
  ``locked_by`` and ``lease_until``; a lease that runs out puts the job back.
- ``gateway.job_keys``: the running job of a (project, concurrencyKey). A claim inserts
  the row with ``ON CONFLICT DO NOTHING`` — the unique index, not a snapshot, decides, so
  two instances can never run two jobs of one key at once. Finishing deletes the row.
- ``gateway.job_idempotency``: (project, idempotencyKey) → job for 24 hours.
- ``gateway.job_usage``: job runs per project per UTC month; the enqueue's
  ``INSERT … ON CONFLICT DO UPDATE … WHERE used < limit`` is the exact, cross-instance
  quota decision.
- ``gateway.job_projects``: where a project's jobs are delivered, the signing secret
  (an HMAC key must be usable to sign, so it can't be stored hashed: it lives in schema
  ``gateway``, which project roles can't read, and is shown once). The monthly run
  limit is the plan's (``gateway.project_limits``, 0010).
- ``gateway.job_schedules`` and ``gateway.job_schedule_fires``: cron schedules; the
  unique (schedule, fire time) row makes each fire happen exactly once, whoever leads.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = r"""
CREATE TABLE gateway.job_projects (
    project_id        uuid PRIMARY KEY REFERENCES gateway.projects (id) ON DELETE CASCADE,
    endpoint_url      text,
    signing_secret    text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateway.jobs (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id      uuid        NOT NULL REFERENCES gateway.projects (id) ON DELETE CASCADE,
    name            text        NOT NULL,
    payload         jsonb       NOT NULL DEFAULT 'null'::jsonb,
    status          text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'active', 'completed', 'failed', 'cancelled')),
    run_at          timestamptz NOT NULL DEFAULT now(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz,
    attempts_made   integer     NOT NULL DEFAULT 0,
    max_attempts    integer     NOT NULL DEFAULT 3 CHECK (max_attempts >= 1),
    timeout_ms      integer     NOT NULL DEFAULT 180000 CHECK (timeout_ms >= 1),
    concurrency_key text,
    idempotency_key text,
    schedule_id     uuid,
    result          text,
    error           text,
    locked_by       text,
    lease_until     timestamptz
);
-- claiming: per project, due jobs in run_at order (also the loose scan over projects)
CREATE INDEX jobs_pending_idx ON gateway.jobs (project_id, run_at, id) WHERE status = 'pending';
-- lease reaping
CREATE INDEX jobs_active_idx ON gateway.jobs (lease_until) WHERE status = 'active';
-- the list route
CREATE INDEX jobs_project_created_idx ON gateway.jobs (project_id, created_at DESC, id);
-- retention
CREATE INDEX jobs_finished_idx ON gateway.jobs (finished_at) WHERE finished_at IS NOT NULL;

CREATE TABLE gateway.job_keys (
    project_id uuid NOT NULL,
    key        text NOT NULL,
    job_id     uuid NOT NULL,
    PRIMARY KEY (project_id, key)
);

CREATE TABLE gateway.job_idempotency (
    project_id uuid        NOT NULL,
    key        text        NOT NULL,
    job_id     uuid        NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (project_id, key)
);
CREATE INDEX job_idempotency_expires_idx ON gateway.job_idempotency (expires_at);

CREATE TABLE gateway.job_usage (
    project_id uuid   NOT NULL,
    month      date   NOT NULL,
    used       bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, month)
) WITH (fillfactor = 70);

CREATE TABLE gateway.job_schedules (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id  uuid        NOT NULL REFERENCES gateway.projects (id) ON DELETE CASCADE,
    name        text        NOT NULL,
    cron        text        NOT NULL,
    payload     jsonb       NOT NULL DEFAULT 'null'::jsonb,
    timezone    text        NOT NULL DEFAULT 'UTC',
    active      boolean     NOT NULL DEFAULT true,
    description text,
    next_run_at timestamptz,
    last_run_at timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (project_id, name)
);
CREATE INDEX job_schedules_due_idx ON gateway.job_schedules (next_run_at) WHERE active;

CREATE TABLE gateway.job_schedule_fires (
    schedule_id uuid        NOT NULL REFERENCES gateway.job_schedules (id) ON DELETE CASCADE,
    fire_time   timestamptz NOT NULL,
    job_id      uuid,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule_id, fire_time)
);
CREATE INDEX job_schedule_fires_created_idx ON gateway.job_schedule_fires (created_at);

REVOKE ALL ON gateway.job_projects, gateway.jobs, gateway.job_keys, gateway.job_idempotency,
    gateway.job_usage, gateway.job_schedules, gateway.job_schedule_fires FROM PUBLIC;
"""

DOWNGRADE = r"""
DROP FUNCTION IF EXISTS gateway.claim_jobs(text, integer, integer, double precision, jsonb);
DROP FUNCTION IF EXISTS gateway.enqueue_job(uuid, text, jsonb, timestamptz, integer,
    integer, text, text, uuid);
DROP FUNCTION IF EXISTS gateway.count_job_run(uuid);
DROP TABLE IF EXISTS gateway.job_schedule_fires;
DROP TABLE IF EXISTS gateway.job_schedules;
DROP TABLE IF EXISTS gateway.job_usage;
DROP TABLE IF EXISTS gateway.job_idempotency;
DROP TABLE IF EXISTS gateway.job_keys;
DROP TABLE IF EXISTS gateway.jobs;
DROP TABLE IF EXISTS gateway.job_projects;
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(frozen(__file__, "0011/count_job_run", "0011/enqueue_job", "0011/claim_jobs"))


def downgrade() -> None:
    op.execute(DOWNGRADE)
