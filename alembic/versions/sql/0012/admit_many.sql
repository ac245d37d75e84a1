-- gateway.admit_many as migration 0012 installs it: a wrapper that calls the single
-- gateway.admit for each element, in (project, arrival) order. Replaced by migration 0013
-- (one counter-row write per project).
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
    e record;
BEGIN
    IF n <> coalesce(array_length(p_costs, 1), 0) THEN
        RAISE EXCEPTION 'admit_many: % key hashes but % costs', n,
              coalesce(array_length(p_costs, 1), 0)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    v_out := array_fill(NULL::gateway.admission, ARRAY[n]);
    -- one total order over (project, arrival) in every statement: no lock cycles between
    -- concurrent batches; arrival order kept within a project
    FOR e IN
        SELECT u.i, u.h, u.c
          FROM unnest(p_key_hashes, p_costs) WITH ORDINALITY AS u(h, c, i)
          LEFT JOIN gateway.api_keys ak ON ak.key_hash = u.h
         ORDER BY ak.project_id NULLS FIRST, u.i
    LOOP
        v_out[e.i] := gateway.admit(e.h, e.c, p_window_s, p_sliding, p_lock_timeout_ms,
                                    coalesce(p_grows[e.i], false), p_session_hashes[e.i]);
    END LOOP;
    FOR i IN 1 .. n LOOP
        RETURN NEXT v_out[i];
    END LOOP;
END
$function$;

COMMENT ON FUNCTION gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[]) IS
    'gateway.admit for many requests in one statement (one row per element, in array '
    'order). Call it in autocommit, like gateway.admit.';

REVOKE EXECUTE ON FUNCTION gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[])
    FROM PUBLIC;
