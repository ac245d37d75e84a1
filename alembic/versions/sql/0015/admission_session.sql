-- Sessions in admission (docs/auth.md). gateway.admission_session: an admitted answer +
-- a session token's hash -> the answer with the session's user_id, or the session's
-- refusal (session_not_found, session_expired). Valid: same project, neither the session
-- nor its family revoked, not expired (database clock). The family is read here (one
-- primary-key lookup) because a family revocation (sign-out, refresh-token reuse, a
-- password change, a takeover by the address's owner) must also end a session that a
-- refresh in flight minted after the revoking statement began. Nothing about a session is
-- cached by an instance: a sign-out is seen by the very next request on every instance.
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
    SELECT ss.id, ss.user_id, ss.expires_at, ss.revoked_at, ss.last_used_at,
           f.revoked_at AS family_revoked_at INTO s
      FROM gateway.auth_sessions ss
      JOIN gateway.auth_session_families f ON f.id = ss.family_id
     WHERE ss.token_hash = p_session_hash AND ss.project_id = r.project_id;
    IF NOT FOUND OR s.revoked_at IS NOT NULL OR s.family_revoked_at IS NOT NULL THEN
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
