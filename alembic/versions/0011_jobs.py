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

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
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

-- One job run counted against the project's monthly limit, atomically. The limit is the
-- plan's job_runs_monthly or the project's override (gateway.project_limits, 0010; NULL =
-- unlimited). Returns (used, limit); used is NULL when the limit is reached.
CREATE FUNCTION gateway.count_job_run(p_project uuid)
RETURNS TABLE (used bigint, lim bigint)
LANGUAGE plpgsql
SET search_path = pg_catalog, gateway
AS $fn$
#variable_conflict use_column
DECLARE
    month_key date := (date_trunc('month', now() AT TIME ZONE 'UTC'))::date;
BEGIN
    SELECT l.job_runs_monthly INTO lim FROM gateway.project_limits l
     WHERE l.project_id = p_project;
    IF lim IS NULL THEN
        INSERT INTO gateway.job_usage AS u (project_id, month, used)
        VALUES (p_project, month_key, 1)
        ON CONFLICT (project_id, month) DO UPDATE SET used = u.used + 1
        RETURNING u.used INTO used;
    ELSE
        INSERT INTO gateway.job_usage AS u (project_id, month, used)
        SELECT p_project, month_key, 1 WHERE lim >= 1
        ON CONFLICT (project_id, month) DO UPDATE SET used = u.used + 1 WHERE u.used < lim
        RETURNING u.used INTO used;
    END IF;
    RETURN NEXT;
END
$fn$;

-- Enqueue: idempotency, quota and the insert in one statement. outcome is 'created',
-- 'existing' (the idempotency key's job, no quota used) or 'quota_exceeded' (nothing
-- written: the idempotency row is rolled back by raising).
CREATE FUNCTION gateway.enqueue_job(
    p_project uuid, p_name text, p_payload jsonb, p_run_at timestamptz,
    p_timeout_ms integer, p_max_attempts integer, p_concurrency_key text,
    p_idempotency_key text, p_schedule uuid DEFAULT NULL
) RETURNS TABLE (outcome text, job_id uuid, used bigint, lim bigint,
                created timestamptz, due_at timestamptz, delayed boolean)
LANGUAGE plpgsql
SET search_path = pg_catalog, gateway
AS $fn$
#variable_conflict use_column
DECLARE
    new_id uuid := gen_random_uuid();
    mapped uuid;
    due    timestamptz := coalesce(p_run_at, now());
BEGIN
    IF p_idempotency_key IS NOT NULL THEN
        INSERT INTO gateway.job_idempotency AS i (project_id, key, job_id, expires_at)
        VALUES (p_project, p_idempotency_key, new_id, now() + interval '24 hours')
        ON CONFLICT (project_id, key) DO UPDATE
           SET job_id = excluded.job_id, expires_at = excluded.expires_at
         WHERE i.expires_at <= now()
        RETURNING i.job_id INTO mapped;
        IF mapped IS NULL THEN
            SELECT i.job_id INTO mapped FROM gateway.job_idempotency i
             WHERE i.project_id = p_project AND i.key = p_idempotency_key;
            SELECT c.used, c.lim INTO used, lim FROM (
                SELECT u.used, NULL::bigint AS lim FROM gateway.job_usage u
                 WHERE u.project_id = p_project
                   AND u.month = (date_trunc('month', now() AT TIME ZONE 'UTC'))::date
            ) c;
            outcome := 'existing';
            job_id := mapped;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    SELECT c.used, c.lim INTO used, lim FROM gateway.count_job_run(p_project) c;
    IF used IS NULL THEN
        RAISE EXCEPTION 'job run quota exceeded' USING ERRCODE = 'P0J01',
            DETAIL = coalesce(lim, 0)::text;
    END IF;
    INSERT INTO gateway.jobs (id, project_id, name, payload, run_at, timeout_ms, max_attempts,
                              concurrency_key, idempotency_key, schedule_id)
    VALUES (new_id, p_project, p_name, p_payload, due, p_timeout_ms, p_max_attempts,
            p_concurrency_key, p_idempotency_key, p_schedule);
    created := now();
    due_at := due;
    delayed := due > now();
    IF due <= now() THEN
        PERFORM pg_notify('gateway_jobs', p_project::text);
    END IF;
    outcome := 'created';
    job_id := new_id;
    RETURN NEXT;
END
$fn$;

-- Claim up to p_limit due jobs for worker p_worker, fairly across projects:
-- 1. reap: active jobs whose lease ran out go back to pending (or fail when that was
--    their last attempt), and free their concurrency key;
-- 2. pass 1 gives every project with a due job ONE job, the project whose oldest due
--    job waited longest first; pass 2 fills the remaining slots the same way.
-- p_running maps project id → jobs this worker runs already; no project gets more than
-- p_per_project in total. A job whose concurrencyKey is running is skipped (job_keys).
CREATE FUNCTION gateway.claim_jobs(
    p_worker text, p_limit integer, p_per_project integer, p_lease_s double precision,
    p_running jsonb
) RETURNS SETOF gateway.jobs
LANGUAGE plpgsql
SET search_path = pg_catalog, gateway
AS $fn$
#variable_conflict use_column
DECLARE
    r        record;
    proj     record;
    j        gateway.jobs;
    taken    integer := 0;
    want     integer;
    counts   jsonb := coalesce(p_running, '{}'::jsonb);
    pass     integer;
BEGIN
    FOR r IN
        SELECT a.id, a.project_id, a.concurrency_key, a.attempts_made, a.max_attempts
          FROM gateway.jobs a
         WHERE a.status = 'active' AND a.lease_until < now()
         ORDER BY a.lease_until
         LIMIT 100
           FOR UPDATE SKIP LOCKED
    LOOP
        UPDATE gateway.jobs
           SET status = CASE WHEN r.attempts_made >= r.max_attempts
                             THEN 'failed' ELSE 'pending' END,
               finished_at = CASE WHEN r.attempts_made >= r.max_attempts THEN now() END,
               run_at = now(), lease_until = NULL, locked_by = NULL,
               error = 'the worker running the job stopped (lease expired)'
         WHERE id = r.id;
        IF r.concurrency_key IS NOT NULL THEN
            DELETE FROM gateway.job_keys k
             WHERE k.project_id = r.project_id AND k.key = r.concurrency_key AND k.job_id = r.id;
        END IF;
    END LOOP;

    IF p_limit <= 0 THEN
        RETURN;
    END IF;
    FOR pass IN 1 .. 2 LOOP
        FOR proj IN
            WITH RECURSIVE p (project_id) AS (
                (SELECT x.project_id FROM gateway.jobs x WHERE x.status = 'pending'
                  ORDER BY x.project_id LIMIT 1)
                UNION ALL
                SELECT (SELECT x.project_id FROM gateway.jobs x
                         WHERE x.status = 'pending' AND x.project_id > p.project_id
                         ORDER BY x.project_id LIMIT 1)
                  FROM p WHERE p.project_id IS NOT NULL
            )
            SELECT p.project_id,
                   (SELECT min(x.run_at) FROM gateway.jobs x
                     WHERE x.status = 'pending' AND x.project_id = p.project_id) AS first_due
              FROM p
             WHERE p.project_id IS NOT NULL
             ORDER BY 2
        LOOP
            EXIT WHEN taken >= p_limit OR proj.first_due > now();
            want := p_per_project - coalesce((counts ->> proj.project_id::text)::integer, 0);
            IF pass = 1 THEN
                want := least(want, 1);
            END IF;
            want := least(want, p_limit - taken);
            CONTINUE WHEN want <= 0;
            FOR j IN
                SELECT * FROM gateway.jobs x
                 WHERE x.status = 'pending' AND x.project_id = proj.project_id
                   AND x.run_at <= now()
                 ORDER BY x.run_at, x.id
                 LIMIT want + 20
                   FOR UPDATE SKIP LOCKED
            LOOP
                EXIT WHEN want <= 0;
                IF j.concurrency_key IS NOT NULL THEN
                    INSERT INTO gateway.job_keys (project_id, key, job_id)
                    VALUES (j.project_id, j.concurrency_key, j.id)
                    ON CONFLICT DO NOTHING;
                    CONTINUE WHEN NOT FOUND;
                END IF;
                UPDATE gateway.jobs
                   SET status = 'active', attempts_made = attempts_made + 1,
                       started_at = now(), lease_until = now() + make_interval(secs => p_lease_s),
                       locked_by = p_worker, error = NULL
                 WHERE id = j.id
                RETURNING * INTO j;
                RETURN NEXT j;
                taken := taken + 1;
                want := want - 1;
                counts := jsonb_set(counts, ARRAY[j.project_id::text],
                    to_jsonb(coalesce((counts ->> j.project_id::text)::integer, 0) + 1));
            END LOOP;
        END LOOP;
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION gateway.count_job_run(uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gateway.enqueue_job(uuid, text, jsonb, timestamptz, integer,
    integer, text, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION gateway.claim_jobs(text, integer, integer, double precision, jsonb)
    FROM PUBLIC;
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
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
