-- gateway.admit: THE admission of one keyed request, in one call and one upsert: key
-- validity, the rate limit, the daily request quota, and the monthly bandwidth and
-- database-size quotas (docs/admission.md).
-- Called by gateway/admission/admitter.py for a request decided alone (a batch goes to
-- gateway.admit_many), directly or through the session overload (admission_session.sql).
-- Call it in autocommit: it sets synchronous_commit = off and lock_timeout for its own
-- transaction. The three quota blocks are marked "-- quotas (0010)".
CREATE OR REPLACE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000,
    p_grows boolean DEFAULT false     -- the request inserts or updates
)
RETURNS gateway.admission
LANGUAGE plpgsql
AS $function$
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
$function$;

COMMENT ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean) IS
    'Key check + rate limit + daily quota + bandwidth/database quotas in one call. Call it '
    'in autocommit: it sets synchronous_commit=off and lock_timeout for its own transaction.';
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean)
    FROM PUBLIC;
