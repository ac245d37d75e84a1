-- gateway.admission_step: one step of the counter state machine of
-- gateway.admission_counters (rate-limit window + the UTC day's usage).
-- In: the project's row as stored and one request (its window, clock, cost, rate limit
-- and daily quota; a quota of -1 refuses without consuming anything). Out: the row to
-- store, the decision (admitted), and whether the row changed: a denial in the same
-- window and day writes nothing. The window and the day roll forward here.
-- Pure and a single SELECT, so the planner inlines it. Each level ends in OFFSET 0, a fence
-- that keeps it a subquery: flattened, every reference to an inner column repeated that
-- column's whole expression (the decision three times over, each with the window tests),
-- and the executor built that tree again on every call (a third of admit_many's CPU).
-- Called by gateway.admit, which steps one request from the locked row, and by
-- gateway.admit_many, which walks a batch through it in memory.
CREATE OR REPLACE FUNCTION gateway.admission_step(
    -- the project's counter row as stored (NULLs: no row yet)
    c_window_s integer, c_window_start bigint, c_count integer, c_prev integer,
    c_day date, c_used bigint,
    -- the request
    p_window_s integer, p_window_start bigint, p_epoch double precision, p_today date,
    p_sliding boolean, p_cost integer, p_limit integer, p_quota bigint
)
RETURNS TABLE(
    window_s integer, window_start bigint, window_count integer, prev_count integer,
    day date, day_used bigint, admitted boolean, changed boolean
)
LANGUAGE sql
IMMUTABLE PARALLEL SAFE ROWS 1
AS $function$
    SELECT p_window_s,
           r.ws,
           r.cur + CASE WHEN r.ok THEN p_cost ELSE 0 END,
           r.prev,
           r.d,
           r.used + CASE WHEN r.ok THEN p_cost ELSE 0 END,
           r.ok,
           r.ok OR NOT r.same OR NOT r.dsame
    FROM (
        SELECT q.*,
               gateway.admission_estimate(q.prev, q.cur, q.ws, p_window_s, p_epoch, p_sliding)
                   + p_cost <= p_limit
               AND q.used + p_cost <= p_quota AS ok
        FROM (
            SELECT s.same, s.dsame,
                   CASE WHEN s.same THEN c_window_start ELSE p_window_start END AS ws,
                   CASE WHEN s.same THEN c_count ELSE 0 END AS cur,
                   CASE WHEN s.same THEN c_prev
                        WHEN s.adjacent THEN c_count
                        ELSE 0 END AS prev,
                   CASE WHEN s.dsame THEN c_day ELSE p_today END AS d,
                   CASE WHEN s.dsame THEN c_used ELSE 0 END AS used
            FROM (
                SELECT
                    -- the stored window is ours, or newer (another call already rolled it
                    -- while this one waited for the row): count into the stored window
                    coalesce(c_window_s = p_window_s AND c_window_start >= p_window_start,
                             false) AS same,
                    coalesce(c_window_s = p_window_s
                             AND c_window_start = p_window_start - p_window_s,
                             false) AS adjacent,
                    coalesce(c_day >= p_today, false) AS dsame
            OFFSET 0) s
        OFFSET 0) q
    OFFSET 0) r
$function$;
