-- gateway.stamp_commit: numbers a transaction that wrote realtime changes in COMMIT order
-- (docs/realtime.md, "Commit order"). A deferred constraint trigger on gateway.changes
-- (gateway_commit_stamp, migration 0017) calls it for every change row at COMMIT time. The
-- transaction's first firing takes the SHARED side of the commit barrier, then inserts
-- (its xid, nextval) into gateway.commits; the transaction-local setting
-- gateway.commit_stamped (the xid it stamped) makes every later row one comparison. The
-- shared lock is held until the transaction ends, i.e. until its rows are visible:
-- gateway.realtime_horizon() takes the exclusive side, so when it returns every number up
-- to the value it reads belongs to a finished transaction.
CREATE OR REPLACE FUNCTION gateway.stamp_commit()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
DECLARE
    me text := pg_current_xact_id()::text;
BEGIN
    IF current_setting('gateway.commit_stamped', true) IS NOT DISTINCT FROM me THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock_shared(113668262294385);  -- "gatesq": the commit barrier
    INSERT INTO gateway.commits (xid, seq)
    VALUES (pg_current_xact_id(), nextval('gateway.commit_seq'))
    ON CONFLICT (xid) DO NOTHING;  -- a second stamp (setting reset by hand) keeps the first
    PERFORM set_config('gateway.commit_stamped', me, true);
    RETURN NULL;
END
$function$;

COMMENT ON FUNCTION gateway.stamp_commit() IS
    'Realtime commit stamp: deferred trigger on gateway.changes, numbers the transaction '
    'in commit order under the shared side of the commit barrier.';
REVOKE ALL ON FUNCTION gateway.stamp_commit() FROM PUBLIC;
