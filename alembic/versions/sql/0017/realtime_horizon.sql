-- gateway.realtime_horizon: the commit barrier's exclusive side (docs/realtime.md, "Commit
-- order"). Run as its own autocommit statement before each realtime poll: once the
-- exclusive advisory lock is granted, every transaction that took a commit number before
-- has released its shared lock (gateway.stamp_commit), which PostgreSQL does only after
-- its commit became visible (or it aborted); numbers taken later are larger. So every
-- number <= the result belongs to a finished transaction, and a new snapshot taken after
-- this statement sees all of their rows. Returns the sequence's last issued number (0
-- before the first), or NULL when the lock was not granted within 250 ms: a transaction
-- that fired the stamp early (SET CONSTRAINTS ALL IMMEDIATE) holds the shared side until
-- it ends, and waiting longer would queue every other committing writer behind us.
CREATE OR REPLACE FUNCTION gateway.realtime_horizon()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
BEGIN
    PERFORM set_config('lock_timeout', '250ms', true);
    BEGIN
        PERFORM pg_advisory_xact_lock(113668262294385);  -- "gatesq": the commit barrier
    EXCEPTION WHEN lock_not_available THEN
        RETURN NULL;
    END;
    RETURN (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM gateway.commit_seq);
END
$function$;

COMMENT ON FUNCTION gateway.realtime_horizon() IS
    'Realtime commit barrier: the largest commit number whose transaction has finished '
    '(NULL if the barrier was not granted within 250 ms).';
REVOKE ALL ON FUNCTION gateway.realtime_horizon() FROM PUBLIC;
