-- The admission rules that gateway.admit and gateway.admit_many share, each written once:
-- which keys may pass, the daily quota a request is decided against (-1 when a monthly
-- bandwidth or database-size quota refuses it), and the numbers an answer reports.
-- docs/admission.md has the design.

-- gateway.admission_key_outcome: the refusal of a key that may not pass (invalid_key,
-- revoked, expired, suspended), or NULL when it may. A SQL expression, so the planner
-- inlines it wherever it is called: gateway.admit, gateway.admit_many, gateway.lookup_key.
CREATE OR REPLACE FUNCTION gateway.admission_key_outcome(
    p_key_found boolean,
    p_key_status text,
    p_key_expires_at timestamp with time zone,
    p_project_status text
)
RETURNS text
LANGUAGE sql
STABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN NOT p_key_found THEN 'invalid_key'
                WHEN p_key_status = 'revoked' THEN 'revoked'
                WHEN p_key_status <> 'active'
                     OR (p_key_expires_at IS NOT NULL AND p_key_expires_at <= now())
                THEN 'expired'
                WHEN p_project_status <> 'active' THEN 'suspended' END
$function$;

-- gateway.admission_quota: the daily quota a request is decided against. Over the month's
-- bandwidth, or a growing request (insert, update) over the database size -> -1, which
-- gateway.admission_step refuses without consuming anything (the rate limit is still
-- decided first). Otherwise the daily request quota (NULL = unlimited -> 2^62).
CREATE OR REPLACE FUNCTION gateway.admission_quota(
    p_requests_per_day bigint,
    p_grows boolean,
    p_bandwidth_used bigint,
    p_bandwidth_limit bigint,
    p_db_size_used bigint,
    p_db_size_limit bigint
)
RETURNS bigint
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN (p_bandwidth_limit IS NOT NULL AND p_bandwidth_used >= p_bandwidth_limit)
                  OR (p_grows AND p_db_size_limit IS NOT NULL
                      AND coalesce(p_db_size_used, 0) >= p_db_size_limit)
                THEN -1 ELSE coalesce(p_requests_per_day, 4611686018427387904) END
$function$;

-- gateway.admission_report: an answer (key, project and limits filled in) + the project's
-- counter row after this request's step -> the answer with its outcome (admitted,
-- rate_limited, quota_exceeded) and the numbers the headers and a 429 report: rate_used,
-- rate_remaining, reset_at/reset_in, quota_used, day_reset_in, month_reset_in.
CREATE OR REPLACE FUNCTION gateway.admission_report(
    r gateway.admission,
    -- the counter row after the step
    p_window_start bigint,
    p_window_count integer,
    p_prev_count integer,
    p_day_used bigint,
    p_admitted boolean,
    -- the request
    p_window_s integer,
    p_sliding boolean,
    p_cost integer,
    p_epoch double precision,
    p_today date,
    p_month date
)
RETURNS gateway.admission
LANGUAGE plpgsql
AS $function$
DECLARE
    v_clock double precision;
    v_reset double precision;
BEGIN
    r.window_s := p_window_s;
    r.quota_used := p_day_used;
    r.rate_used := gateway.admission_estimate(p_prev_count, p_window_count, p_window_start,
                                              p_window_s, p_epoch, p_sliding);
    r.rate_remaining := greatest(0, floor(r.rate_limit - r.rate_used))::integer;
    IF p_admitted THEN
        r.outcome := 'admitted';
    ELSIF r.rate_used + p_cost > r.rate_limit THEN
        r.outcome := 'rate_limited';
    ELSE
        r.outcome := 'quota_exceeded';
    END IF;

    -- reset: the end of the current fixed window; for a sliding 429 with no room even for
    -- one request, the moment the estimate lets one request through
    v_reset := p_window_start + p_window_s;
    IF r.outcome = 'rate_limited' AND p_sliding AND r.rate_used + 1 > r.rate_limit THEN
        IF p_window_count + 1 <= r.rate_limit AND p_prev_count > 0 THEN
            -- prev x (1 - e/w) + count + 1 <= limit  <=>  e >= w x (1 - (limit-count-1)/prev)
            v_reset := p_window_start + p_window_s
                       * (1.0 - (r.rate_limit - p_window_count - 1)::double precision
                                / p_prev_count);
        ELSIF r.rate_limit >= 1 AND p_window_count > 0 THEN
            -- next window, where this window's count becomes "previous"
            v_reset := p_window_start + p_window_s + p_window_s
                       * greatest(0.0, 1.0 - (r.rate_limit - 1)::double precision
                                             / p_window_count);
        END IF;
    END IF;
    v_clock := extract(epoch FROM clock_timestamp())::double precision;
    r.reset_at := v_reset;
    r.reset_in := greatest(0.0, v_reset - v_clock);
    r.day_reset_in := extract(epoch FROM ((p_today + 1)::timestamp AT TIME ZONE 'UTC'))
                      ::double precision - v_clock;
    r.month_reset_in := extract(epoch FROM ((p_month + interval '1 month')::timestamp
                                            AT TIME ZONE 'UTC'))::double precision - v_clock;
    RETURN r;
END
$function$;

REVOKE EXECUTE ON FUNCTION gateway.admission_key_outcome(boolean, text, timestamptz, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION gateway.admission_quota(bigint, boolean, bigint, bigint, bigint,
    bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION gateway.admission_report(gateway.admission, bigint, integer, integer,
    bigint, boolean, integer, boolean, integer, double precision, date, date) FROM PUBLIC;
