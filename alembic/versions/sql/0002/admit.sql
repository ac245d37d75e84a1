-- gateway.admit as migration 0002 installs it: key validity, rate limit and daily
-- quota in one call and one upsert. Replaced by migration 0010 (quotas).
CREATE OR REPLACE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000
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
BEGIN
    -- this call's own transaction only (the gateway runs it in autocommit)
    PERFORM set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true);

    SELECT ak.id, ak.key_type, ak.scopes, ak.status, ak.expires_at, ak.last_used_at,
           p.id AS pid, p.schema_name, p.status AS project_status,
           p.rate_limit_per_minute, p.requests_limit_daily
      INTO k
      FROM gateway.api_keys ak
      JOIN gateway.projects p ON p.id = ak.project_id
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

    -- THE decision: one atomic upsert on the project's row; the row lock serialises
    -- concurrent callers, so the returned state is exact.
    INSERT INTO gateway.admission_counters AS ac
           (project_id, window_s, window_start, window_count, prev_count, day, day_used,
            admitted)
    SELECT k.pid, s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
           s.day_used, s.admitted
      FROM gateway.admission_step(NULL, NULL, NULL, NULL, NULL, NULL,
                                  p_window_s, v_window_start, v_epoch, v_today, p_sliding,
                                  p_cost, k.rate_limit_per_minute,
                                  k.requests_limit_daily) s
    ON CONFLICT (project_id) DO UPDATE
       SET (window_s, window_start, window_count, prev_count, day, day_used, admitted) =
           (SELECT s.window_s, s.window_start, s.window_count, s.prev_count, s.day,
                   s.day_used, s.admitted
              FROM gateway.admission_step(ac.window_s, ac.window_start, ac.window_count,
                                          ac.prev_count, ac.day, ac.day_used,
                                          p_window_s, v_window_start, v_epoch, v_today,
                                          p_sliding, p_cost, k.rate_limit_per_minute,
                                          k.requests_limit_daily) s)
     WHERE (SELECT s.changed
              FROM gateway.admission_step(ac.window_s, ac.window_start, ac.window_count,
                                          ac.prev_count, ac.day, ac.day_used,
                                          p_window_s, v_window_start, v_epoch, v_today,
                                          p_sliding, p_cost, k.rate_limit_per_minute,
                                          k.requests_limit_daily) s)
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
    r.quota_limit := k.requests_limit_daily;
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
    RETURN r;
END
$function$;

COMMENT ON FUNCTION gateway.admit(text, integer, integer, boolean, integer) IS
    'Key check + rate limit + daily quota in one call. Call it in autocommit: it sets '
    'synchronous_commit=off and lock_timeout for its own transaction.';
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer) FROM PUBLIC;
