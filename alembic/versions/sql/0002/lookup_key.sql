-- gateway.lookup_key as migration 0002 installs it (the 15 columns of the first gateway.admission).
CREATE OR REPLACE FUNCTION gateway.lookup_key(p_key_hash text)
RETURNS gateway.admission
LANGUAGE sql
STABLE
AS $function$
    SELECT CASE WHEN ak.id IS NULL THEN 'invalid_key'
                WHEN ak.status = 'revoked' THEN 'revoked'
                WHEN ak.status <> 'active'
                     OR (ak.expires_at IS NOT NULL AND ak.expires_at <= now()) THEN 'expired'
                WHEN p.status <> 'active' THEN 'suspended'
                ELSE 'admitted' END,
           p.id, p.schema_name, ak.id, ak.key_type, ak.scopes,
           p.rate_limit_per_minute, NULL::double precision, NULL::integer,
           NULL::double precision, NULL::double precision, NULL::integer,
           NULL::bigint, p.requests_limit_daily, NULL::double precision
      FROM (SELECT 1) one
      LEFT JOIN gateway.api_keys ak ON ak.key_hash = p_key_hash
      LEFT JOIN gateway.projects p ON p.id = ak.project_id
$function$;

REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text) FROM PUBLIC;
