-- Sessions in admission (docs/auth.md). gateway.admission_session: an admitted answer +
-- a session token's hash -> the answer with the session's user_id, or the session's
-- refusal (session_not_found, session_expired). Valid: same project, not revoked, not
-- expired (database clock). Nothing about a session is cached by an instance: a sign-out
-- is seen by the very next request on every instance.
-- Called by gateway.admit and gateway.admit_many for an admitted request that carries a
-- session, and by gateway.lookup_key(key_hash, session_hash).
CREATE OR REPLACE FUNCTION gateway.admission_session(
    r gateway.admission, p_session_hash text
)
RETURNS gateway.admission
LANGUAGE plpgsql
AS $function$
DECLARE
    s record;
BEGIN
    IF r.outcome IS DISTINCT FROM 'admitted' OR p_session_hash IS NULL THEN
        RETURN r;
    END IF;
    SELECT id, user_id, expires_at, revoked_at, last_used_at INTO s
      FROM gateway.auth_sessions
     WHERE token_hash = p_session_hash AND project_id = r.project_id;
    IF NOT FOUND OR s.revoked_at IS NOT NULL THEN
        r.outcome := 'session_not_found';
        RETURN r;
    ELSIF s.expires_at <= now() THEN
        r.outcome := 'session_expired';
        RETURN r;
    END IF;
    r.user_id := s.user_id;
    -- at most one write a minute per session; never wait for the session's row
    IF s.last_used_at IS NULL OR s.last_used_at < now() - interval '1 minute' THEN
        UPDATE gateway.auth_sessions SET last_used_at = now()
         WHERE id IN (SELECT id FROM gateway.auth_sessions
                       WHERE id = s.id
                         AND (last_used_at IS NULL
                              OR last_used_at < now() - interval '1 minute')
                         FOR NO KEY UPDATE SKIP LOCKED);
    END IF;
    RETURN r;
END
$function$;

REVOKE EXECUTE ON FUNCTION gateway.admission_session(gateway.admission, text) FROM PUBLIC;
