-- gateway.capture_change: the realtime capture trigger (docs/realtime.md). Appends to
-- gateway.changes, stamped with the writing transaction's xid8: one row per inserted,
-- updated or deleted row (an update that changes the primary key or the owner becomes a
-- delete and an insert), and one 'truncate' row per truncated table. No NOTIFY per write.
-- gateway/control/realtime_capture.py attaches it to every realtime table:
--   FOR EACH ROW (gateway_realtime_capture): the project id, the primary-key columns, and
--     'owner:<column>' for an owner table (each change carries its row's owner);
--   FOR EACH STATEMENT, AFTER TRUNCATE (gateway_realtime_truncate): the project id.
-- SECURITY DEFINER with EXECUTE revoked from PUBLIC: a project role writes a change only by
-- writing its own table, and can't attach the function with a forged project id.
CREATE OR REPLACE FUNCTION gateway.capture_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
DECLARE
    project   uuid := TG_ARGV[0]::uuid;
    new_row   jsonb;
    old_row   jsonb;
    new_pk    jsonb := '{}'::jsonb;
    old_pk    jsonb := '{}'::jsonb;
    owner_col text;
    new_owner uuid;
    old_owner uuid;
    i         int;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        -- statement level (0007): one change for the whole table, no key, row or owner
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row)
        VALUES (project, TG_TABLE_NAME, 'truncate', '{}'::jsonb, NULL);
        RETURN NULL;
    END IF;
    IF TG_OP <> 'DELETE' THEN
        new_row := to_jsonb(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := to_jsonb(OLD);
    END IF;
    FOR i IN 1 .. TG_NARGS - 1 LOOP
        IF TG_ARGV[i] LIKE 'owner:%' THEN
            -- column names never contain ':' (tabledef.NAME_RE), so this is unambiguous
            owner_col := substr(TG_ARGV[i], 7);
            CONTINUE;
        END IF;
        IF new_row IS NOT NULL THEN
            new_pk := new_pk || jsonb_build_object(TG_ARGV[i], new_row -> TG_ARGV[i]);
        END IF;
        IF old_row IS NOT NULL THEN
            old_pk := old_pk || jsonb_build_object(TG_ARGV[i], old_row -> TG_ARGV[i]);
        END IF;
    END LOOP;
    IF owner_col IS NOT NULL THEN
        new_owner := (new_row ->> owner_col)::uuid;
        old_owner := (old_row ->> owner_col)::uuid;
    END IF;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row, owner)
        VALUES (project, TG_TABLE_NAME, 'insert', new_pk, new_row, new_owner);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row, owner)
        VALUES (project, TG_TABLE_NAME, 'delete', old_pk, NULL, old_owner);
    ELSIF new_pk = old_pk AND new_owner IS NOT DISTINCT FROM old_owner THEN
        -- the old image tells the hub whether the row left a subscriber's filter (0007)
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row, old_row, owner)
        VALUES (project, TG_TABLE_NAME, 'update', new_pk, new_row, old_row, new_owner);
    ELSE
        -- the primary key or the owner changed: subscribers see the old row go and the
        -- new row come (each to its own owner's streams)
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row, owner)
        VALUES (project, TG_TABLE_NAME, 'delete', old_pk, NULL, old_owner),
               (project, TG_TABLE_NAME, 'insert', new_pk, new_row, new_owner);
    END IF;
    RETURN NULL;
END
$function$;

COMMENT ON FUNCTION gateway.capture_change() IS
    'Realtime capture trigger. Arguments: project id, then the primary-key column names '
    '(row triggers); the project id alone for the statement-level TRUNCATE trigger.';
REVOKE ALL ON FUNCTION gateway.capture_change() FROM PUBLIC;
