-- gateway.lookup_key: key validation only (no rate limit, no quota, nothing written),
-- for the bench-only switch GATEWAY_BENCH_DISABLE_ADMISSION (gateway/admission/admitter.py).
-- The same key rule (admission_rules.sql), outcomes and columns as gateway.admit.
CREATE OR REPLACE FUNCTION gateway.lookup_key(p_key_hash text)
RETURNS gateway.admission
LANGUAGE sql
STABLE
AS $function$
    SELECT coalesce(gateway.admission_key_outcome(ak.id IS NOT NULL, ak.status, ak.expires_at,
                                                  p.status),
                    'admitted'),
           p.id, p.schema_name, ak.id, ak.key_type, ak.scopes,
           l.rate_limit_per_minute, NULL::double precision, NULL::integer,
           NULL::double precision, NULL::double precision, NULL::integer,
           NULL::bigint, l.requests_per_day, NULL::double precision, NULL::uuid,
           NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::double precision
      FROM (SELECT 1) one
      LEFT JOIN gateway.api_keys ak ON ak.key_hash = p_key_hash
      LEFT JOIN gateway.projects p ON p.id = ak.project_id
      LEFT JOIN gateway.project_limits l ON l.project_id = p.id
$function$;

REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text) FROM PUBLIC;

-- key validation with a session (bench only)
CREATE OR REPLACE FUNCTION gateway.lookup_key(
    p_key_hash text, p_session_hash text
)
RETURNS gateway.admission
LANGUAGE sql
AS $function$
    SELECT gateway.admission_session(gateway.lookup_key(p_key_hash), p_session_hash)
$function$;

REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text, text) FROM PUBLIC;
