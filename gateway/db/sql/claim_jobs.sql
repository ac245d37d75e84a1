-- gateway.claim_jobs: claim up to p_limit due jobs for worker p_worker, fairly across
-- projects (docs/jobs.md). Called by the job workers (gateway/jobs/).
-- 1. reap: active jobs whose lease ran out go back to pending (or fail when that was
--    their last attempt), and free their concurrency key;
-- 2. pass 1 gives every project with a due job ONE job, the project whose oldest due job
--    waited longest first; pass 2 fills the remaining slots the same way.
-- p_running maps project id -> jobs this worker runs already; no project gets more than
-- p_per_project in total. A job whose concurrencyKey is running is skipped (job_keys).
CREATE OR REPLACE FUNCTION gateway.claim_jobs(
    p_worker text,
    p_limit integer,
    p_per_project integer,
    p_lease_s double precision,
    p_running jsonb
)
RETURNS SETOF gateway.jobs
LANGUAGE plpgsql
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
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
$function$;

REVOKE ALL ON FUNCTION gateway.claim_jobs(text, integer, integer, double precision, jsonb)
    FROM PUBLIC;
