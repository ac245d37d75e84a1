-- gateway.admit: THE admission of one keyed request, in one call and one locked counter
-- row: key validity, the rate limit, the daily request quota, the monthly bandwidth and
-- database-size quotas, and the request's session (docs/admission.md).
-- Called by gateway/admission/admitter.py for a request decided alone; a batch goes to
-- gateway.admit_many, which applies the same rules (admission_rules.sql,
-- admission_step.sql) with one counter-row write per project.
-- Call it in autocommit: it sets synchronous_commit = off and lock_timeout for its own
-- transaction.
CREATE OR REPLACE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000,
    p_grows boolean DEFAULT false,              -- the request inserts or updates
    p_session_hash text DEFAULT NULL::text      -- the session token's hash, if any
)
RETURNS gateway.admission
LANGUAGE plpgsql
AS $function$
DECLARE
    r gateway.admission;
    k record;
    c record;
    s record;
    v_found boolean;
    v_epoch double precision := extract(epoch FROM now())::double precision;
    v_window_start bigint;
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    v_quota bigint;
BEGIN
    -- this call's own transaction only (the gateway runs it in autocommit)
    PERFORM set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true);

    SELECT ak.id, ak.key_type, ak.scopes, ak.status, ak.expires_at, ak.last_used_at,
           p.id AS pid, p.schema_name, p.status AS project_status,
           -- effective limits (plan + overrides) and the usage row
           l.rate_limit_per_minute,
           l.requests_per_day,
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

    r.outcome := gateway.admission_key_outcome(FOUND, k.status, k.expires_at,
                                               k.project_status);
    r.project_id := k.pid;
    r.schema_name := k.schema_name;
    r.key_id := k.id;
    r.key_type := k.key_type;
    r.scopes := k.scopes;
    IF r.outcome IS NOT NULL THEN
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
    v_quota := gateway.admission_quota(k.requests_per_day, p_grows, k.bw_used, k.bw_limit,
                                       k.db_used, k.db_limit);

    -- THE decision, on the project's counter row: lock it, take one step, write the step
    -- only if it changed the row (a denial in the same window and day writes nothing).
    -- The lock serialises concurrent callers, so the decision is exact. This is
    -- gateway.admit_many's walk, for one request and without its arrays.
    LOOP
        SELECT ac.window_s, ac.window_start, ac.window_count, ac.prev_count, ac.day,
               ac.day_used
          INTO c
          FROM gateway.admission_counters ac
         WHERE ac.project_id = k.pid
           FOR UPDATE;
        v_found := FOUND;  -- no row yet: c is all NULLs, the step starts one
        s := gateway.admission_step(c.window_s, c.window_start, c.window_count, c.prev_count,
                                    c.day, c.day_used,
                                    p_window_s, v_window_start, v_epoch, v_today, p_sliding,
                                    p_cost, k.rate_limit_per_minute, v_quota);
        IF v_found THEN
            IF s.changed THEN
                UPDATE gateway.admission_counters
                   SET (window_s, window_start, window_count, prev_count, day, day_used,
                        admitted) =
                       (s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
                        s.day_used, s.admitted)
                 WHERE project_id = k.pid;
            END IF;
            EXIT;
        END IF;
        INSERT INTO gateway.admission_counters
               (project_id, window_s, window_start, window_count, prev_count, day,
                day_used, admitted)
        VALUES (k.pid, s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
                s.day_used, s.admitted)
        ON CONFLICT (project_id) DO NOTHING;
        EXIT WHEN FOUND;
        -- another call created the row meanwhile: lock it and step from it
    END LOOP;

    r.rate_limit := k.rate_limit_per_minute;
    r.quota_limit := k.requests_per_day;  -- NULL = unlimited
    r.bandwidth_used := k.bw_used;
    r.bandwidth_limit := k.bw_limit;
    r.db_size_used := k.db_used;
    r.db_size_limit := k.db_limit;
    -- the answer, from the row after the step (unchanged by a denial: the step's output
    -- is the stored row then, the decision aside)
    r := gateway.admission_report(r, s.window_start, s.window_count, s.prev_count,
                                  s.day_used, s.admitted, p_window_s, p_sliding, p_cost,
                                  v_epoch, v_today, v_month);
    IF p_session_hash IS NOT NULL THEN
        r := gateway.admission_session(r, p_session_hash);
    END IF;
    RETURN r;
END
$function$;

COMMENT ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean, text) IS
    'Key check + rate limit + daily quota + bandwidth/database quotas + session in one call. '
    'Call it in autocommit: it sets synchronous_commit=off and lock_timeout for its own '
    'transaction.';
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean, text)
    FROM PUBLIC;
