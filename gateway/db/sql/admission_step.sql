-- gateway.admission_step: one step of the counter state machine of
-- gateway.admission_counters (rate-limit window + the UTC day's usage).
-- In: the project's row as stored and one request (its window, clock, cost, rate limit
-- and daily quota; a quota of -1 refuses without consuming anything). Out: the row to
-- store, the decision (admitted), and whether the row changed: a denial in the same
-- window and day writes nothing. The window and the day roll forward here.
-- Pure. Called as an assignment (s := gateway.admission_step(...)) by gateway.admit, which
-- steps one request from the locked row, and by gateway.admit_many, which walks a batch
-- through it in memory. PL/pgSQL with OUT parameters, not a SQL function in a SELECT, so
-- that each call is one of PL/pgSQL's simple expressions: no executor start-up per step.
-- As an inlined SELECT each step built its subquery tree again (migration 0021: a batch
-- of 4 cost 30 % less PostgreSQL CPU, a single admit about 10 %).
CREATE OR REPLACE FUNCTION gateway.admission_step(
    -- the project's counter row as stored (NULLs: no row yet)
    c_window_s integer, c_window_start bigint, c_count integer, c_prev integer,
    c_day date, c_used bigint,
    -- the request
    p_window_s integer, p_window_start bigint, p_epoch double precision, p_today date,
    p_sliding boolean, p_cost integer, p_limit integer, p_quota bigint,
    -- the row to store, the decision, and whether the row changed
    OUT window_s integer, OUT window_start bigint, OUT window_count integer,
    OUT prev_count integer, OUT day date, OUT day_used bigint, OUT admitted boolean,
    OUT changed boolean
)
RETURNS record
LANGUAGE plpgsql
IMMUTABLE PARALLEL SAFE
AS $function$
DECLARE
    -- the stored window is ours, or newer (another call already rolled it while this one
    -- waited for the row): count into the stored window
    v_same boolean := coalesce(c_window_s = p_window_s AND c_window_start >= p_window_start,
                               false);
    v_day_same boolean := coalesce(c_day >= p_today, false);
BEGIN
    window_s := p_window_s;
    IF v_same THEN
        window_start := c_window_start;
        window_count := c_count;
        prev_count := c_prev;
    ELSE
        window_start := p_window_start;
        window_count := 0;
        -- the stored window is the one just before: it becomes the previous window
        prev_count := CASE WHEN coalesce(c_window_s = p_window_s
                                         AND c_window_start = p_window_start - p_window_s,
                                         false)
                           THEN c_count ELSE 0 END;
    END IF;
    IF v_day_same THEN
        day := c_day;
        day_used := c_used;
    ELSE
        day := p_today;
        day_used := 0;
    END IF;
    admitted := gateway.admission_estimate(prev_count, window_count, window_start,
                                           p_window_s, p_epoch, p_sliding) + p_cost <= p_limit
                AND day_used + p_cost <= p_quota;
    IF admitted THEN
        window_count := window_count + p_cost;
        day_used := day_used + p_cost;
    END IF;
    changed := admitted OR NOT v_same OR NOT v_day_same;
END
$function$;
