-- gateway.enqueue_job: enqueue with idempotency, quota and the insert in one statement
-- (docs/jobs.md). outcome is 'created', 'existing' (the idempotency key's job, no quota
-- used) or an error P0J01 'job run quota exceeded' (nothing written: raising rolls the
-- idempotency row back). A p_timeout_ms above the project's job_timeout_ms_max
-- (gateway.project_limits) raises P0J02 with the bound as DETAIL, before anything is
-- written; NULL means the API's default (180,000 ms, rules.TIMEOUT_DEFAULT_MS) capped at
-- the bound. Called by the job queue store (gateway/jobs/).
CREATE OR REPLACE FUNCTION gateway.enqueue_job(
    p_project uuid,
    p_name text,
    p_payload jsonb,
    p_run_at timestamp with time zone,
    p_timeout_ms integer,
    p_max_attempts integer,
    p_concurrency_key text,
    p_idempotency_key text,
    p_schedule uuid DEFAULT NULL::uuid
)
RETURNS TABLE(
    outcome text, job_id uuid, used bigint, lim bigint,
    created timestamp with time zone, due_at timestamp with time zone, delayed boolean
)
LANGUAGE plpgsql
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
#variable_conflict use_column
DECLARE
    new_id uuid := gen_random_uuid();
    mapped uuid;
    due    timestamptz := coalesce(p_run_at, now());
    bound  integer;
    tmo    integer;
BEGIN
    SELECT l.job_timeout_ms_max INTO bound FROM gateway.project_limits l
     WHERE l.project_id = p_project;
    bound := coalesce(bound, 1800000);
    IF p_timeout_ms > bound THEN
        RAISE EXCEPTION 'timeoutMs above the plan''s bound' USING ERRCODE = 'P0J02',
            DETAIL = bound::text;
    END IF;
    tmo := coalesce(p_timeout_ms, least(180000, bound));
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
    VALUES (new_id, p_project, p_name, p_payload, due, tmo, p_max_attempts,
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
$function$;

REVOKE ALL ON FUNCTION gateway.enqueue_job(uuid, text, jsonb, timestamptz, integer,
    integer, text, text, uuid) FROM PUBLIC;
