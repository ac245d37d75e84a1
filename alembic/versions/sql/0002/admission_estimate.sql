-- gateway.admission_estimate: a project's request count as the rate limit sees it.
-- Sliding mode: the previous window's count x (1 - elapsed/window) + the current count;
-- fixed mode: the current count.
-- Called by gateway.admission_step (the decision) and by gateway.admit and
-- gateway.admit_many (the rate_used they report), so the decision and the report are the
-- exact same floating-point computation.
CREATE OR REPLACE FUNCTION gateway.admission_estimate(
    p_prev integer, p_count integer, p_window_start bigint, p_window_s integer,
    p_epoch double precision, p_sliding boolean
)
RETURNS double precision
LANGUAGE sql
IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT CASE WHEN p_sliding AND p_prev > 0
                THEN p_prev * (1.0 - least(1.0, greatest(0.0,
                         (p_epoch - p_window_start) / p_window_s::double precision)))
                ELSE 0.0 END
           + p_count
$function$;
