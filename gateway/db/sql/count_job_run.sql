-- gateway.count_job_run: one job run counted against the project's monthly limit,
-- atomically (docs/jobs.md). The limit is the plan's job_runs_monthly or the project's
-- override (gateway.project_limits; NULL = unlimited). Returns (used, limit); used is
-- NULL when the limit is reached. Called by gateway.enqueue_job.
CREATE OR REPLACE FUNCTION gateway.count_job_run(p_project uuid)
RETURNS TABLE(used bigint, lim bigint)
LANGUAGE plpgsql
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
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
$function$;

REVOKE ALL ON FUNCTION gateway.count_job_run(uuid) FROM PUBLIC;
