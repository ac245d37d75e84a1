-- gateway.admit_many: the admission of a batch of requests in ONE statement, deciding
-- exactly as gateway.admit would for the same requests sent one by one in arrival order,
-- with one counter-row write per project (docs/admission.md).
-- Called by gateway/admission/admitter.py with every admission waiting at one moment on
-- an instance (gateway/admission/coalescer.py). One row per element, in array order.
-- Call it in autocommit, like gateway.admit.
-- The rules it shares with gateway.admit are written once, in admission_rules.sql and
-- admission_step.sql; tests/test_admission_aggregate.py compares the two functions on
-- random batches.
CREATE OR REPLACE FUNCTION gateway.admit_many(
    p_key_hashes text[],
    p_costs integer[],
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000,
    p_grows boolean[] DEFAULT NULL::boolean[],      -- NULL: false for every element
    p_session_hashes text[] DEFAULT NULL::text[]    -- NULL: no session for any element
)
RETURNS SETOF gateway.admission
LANGUAGE plpgsql
AS $function$
DECLARE
    n integer := coalesce(array_length(p_key_hashes, 1), 0);
    v_out gateway.admission[];
    v_quotas bigint[];            -- per element: the daily quota, -1 = refused by a quota
    v_order integer[] := '{}';    -- elements that reach a counter row, (project, arrival)
    v_pids uuid[] := '{}';        -- their projects, parallel to v_order
    v_touch uuid[] := '{}';       -- keys whose last_used_at is due
    r gateway.admission;
    k record;
    s record;
    v_epoch double precision := extract(epoch FROM now())::double precision;
    v_window_start bigint;
    v_today date := (now() AT TIME ZONE 'UTC')::date;
    v_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    m integer;
    i integer;
    j integer;
    g integer;
    v_pid uuid;
    -- the project's counter row, in memory (c_exists = false: no row yet)
    c_exists boolean;
    c_found boolean;
    c_write boolean;
    c_window_s integer;
    c_window_start bigint;
    c_count integer;
    c_prev integer;
    c_day date;
    c_used bigint;
    c_admitted boolean;
BEGIN
    IF n <> coalesce(array_length(p_costs, 1), 0) THEN
        RAISE EXCEPTION 'admit_many: % key hashes but % costs', n,
              coalesce(array_length(p_costs, 1), 0)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    -- this call's own transaction only (the gateway runs it in autocommit). The generic
    -- plan of the key join, always: it is index lookups for any batch, but it is costed
    -- for the 10 elements PostgreSQL assumes of an array parameter, and so, under
    -- plan_cache_mode = auto, lost to the custom plans of small batches once a database
    -- held ~1,000 projects: the join was planned again on every call, which tripled this
    -- function's cost (docs/performance.md, "The key join planned on every call").
    PERFORM set_config('synchronous_commit', 'off', true),
            set_config('lock_timeout', greatest(p_lock_timeout_ms, 1)::text || 'ms', true),
            set_config('plan_cache_mode', 'force_generic_plan', true);
    v_out := array_fill(NULL::gateway.admission, ARRAY[n]);
    v_quotas := array_fill(NULL::bigint, ARRAY[n]);

    -- 1. every key of the batch in one join; outcomes that never reach a counter row
    FOR k IN
        SELECT u.i::integer AS i, ak.id, ak.key_type, ak.scopes, ak.status, ak.expires_at,
               ak.last_used_at, p.id AS pid, p.schema_name, p.status AS project_status,
               l.rate_limit_per_minute,
               l.requests_per_day,
               l.bandwidth_bytes_monthly AS bw_limit,
               CASE WHEN q.bandwidth_month = v_month THEN q.bandwidth_bytes ELSE 0 END
                   AS bw_used,
               l.db_size_bytes AS db_limit,
               q.db_size_bytes AS db_used
          FROM unnest(p_key_hashes) WITH ORDINALITY AS u(h, i)
          LEFT JOIN (gateway.api_keys ak
                     JOIN gateway.projects p ON p.id = ak.project_id
                     JOIN gateway.project_limits l ON l.project_id = p.id
                     LEFT JOIN gateway.quota_usage q ON q.project_id = p.id)
                 ON ak.key_hash = u.h
         ORDER BY p.id NULLS FIRST, u.i
    LOOP
        r := NULL;
        r.outcome := gateway.admission_key_outcome(k.id IS NOT NULL, k.status, k.expires_at,
                                                   k.project_status);
        r.project_id := k.pid;
        r.schema_name := k.schema_name;
        r.key_id := k.id;
        r.key_type := k.key_type;
        r.scopes := k.scopes;
        IF r.outcome IS NOT NULL THEN
            v_out[k.i] := r;
            CONTINUE;
        END IF;
        IF k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' THEN
            v_touch := v_touch || k.id;
        END IF;
        r.rate_limit := k.rate_limit_per_minute;
        r.quota_limit := k.requests_per_day;  -- NULL = unlimited
        r.bandwidth_used := k.bw_used;
        r.bandwidth_limit := k.bw_limit;
        r.db_size_used := k.db_used;
        r.db_size_limit := k.db_limit;
        v_out[k.i] := r;
        v_quotas[k.i] := gateway.admission_quota(k.requests_per_day, p_grows[k.i],
                                                 k.bw_used, k.bw_limit, k.db_used,
                                                 k.db_limit);
        v_order := v_order || k.i;
        v_pids := v_pids || k.pid;
    END LOOP;

    -- 2. at most one write a minute per key; never wait for a key's row
    IF cardinality(v_touch) > 0 THEN
        UPDATE gateway.api_keys SET last_used_at = now()
         WHERE id IN (SELECT id FROM gateway.api_keys
                       WHERE id = ANY (v_touch)
                         AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
                         FOR NO KEY UPDATE SKIP LOCKED);
    END IF;

    -- 3. per project (project-id order): lock the row once, walk its elements in arrival
    -- order in memory, write the final state once
    m := cardinality(v_order);
    IF m > 0 THEN
        v_window_start := floor(v_epoch / p_window_s)::bigint * p_window_s;
    END IF;
    j := 1;
    WHILE j <= m LOOP
        v_pid := v_pids[j];
        g := j;
        WHILE g < m AND v_pids[g + 1] = v_pid LOOP
            g := g + 1;
        END LOOP;
        LOOP
            SELECT ac.window_s, ac.window_start, ac.window_count, ac.prev_count, ac.day,
                   ac.day_used, ac.admitted
              INTO c_window_s, c_window_start, c_count, c_prev, c_day, c_used, c_admitted
              FROM gateway.admission_counters ac
             WHERE ac.project_id = v_pid
               FOR UPDATE;
            c_found := FOUND;
            c_exists := c_found;
            c_write := false;
            FOR e IN j .. g LOOP
                i := v_order[e];
                r := v_out[i];
                s := gateway.admission_step(
                           CASE WHEN c_exists THEN c_window_s END,
                           CASE WHEN c_exists THEN c_window_start END,
                           CASE WHEN c_exists THEN c_count END,
                           CASE WHEN c_exists THEN c_prev END,
                           CASE WHEN c_exists THEN c_day END,
                           CASE WHEN c_exists THEN c_used END,
                           p_window_s, v_window_start, v_epoch, v_today, p_sliding,
                           p_costs[i], r.rate_limit, v_quotas[i]);
                -- the single admit writes when it inserts the row or when the step changed
                -- it; otherwise the row (= the step's output, admitted aside) stays as is
                IF s.changed OR NOT c_exists THEN
                    c_window_s := s.window_s;
                    c_window_start := s.window_start;
                    c_count := s.window_count;
                    c_prev := s.prev_count;
                    c_day := s.day;
                    c_used := s.day_used;
                    c_admitted := s.admitted;
                    c_exists := true;
                    c_write := true;
                END IF;

                -- the element's answer, as the single admit reports it from its row
                r := gateway.admission_report(r, s.window_start, s.window_count,
                                              s.prev_count, s.day_used, s.admitted,
                                              p_window_s, p_sliding, p_costs[i], v_epoch,
                                              v_today, v_month);
                v_out[i] := r;
            END LOOP;

            IF c_found THEN
                IF c_write THEN
                    UPDATE gateway.admission_counters
                       SET (window_s, window_start, window_count, prev_count, day, day_used,
                            admitted) =
                           (c_window_s, c_window_start, c_count, c_prev, c_day, c_used,
                            c_admitted)
                     WHERE project_id = v_pid;
                END IF;
                EXIT;
            END IF;
            INSERT INTO gateway.admission_counters
                   (project_id, window_s, window_start, window_count, prev_count, day,
                    day_used, admitted)
            VALUES (v_pid, c_window_s, c_window_start, c_count, c_prev, c_day, c_used,
                    c_admitted)
            ON CONFLICT (project_id) DO NOTHING;
            EXIT WHEN FOUND;
            -- another batch created the row meanwhile: lock it and walk again from it
        END LOOP;
        j := g + 1;
    END LOOP;

    -- 4. sessions, for the admitted elements that carry one
    IF p_session_hashes IS NOT NULL THEN
        FOR i IN 1 .. n LOOP
            IF p_session_hashes[i] IS NOT NULL AND (v_out[i]).outcome = 'admitted' THEN
                v_out[i] := gateway.admission_session(v_out[i], p_session_hashes[i]);
            END IF;
        END LOOP;
    END IF;

    FOR i IN 1 .. n LOOP
        RETURN NEXT v_out[i];
    END LOOP;
END
$function$;

COMMENT ON FUNCTION gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[]) IS
    'gateway.admit for many requests in one statement (one row per element, in array '
    'order), with one counter-row write per project. Call it in autocommit, like '
    'gateway.admit.';

REVOKE EXECUTE ON FUNCTION gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[])
    FROM PUBLIC;
