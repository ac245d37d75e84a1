-- gateway.capture_change as migration 0007 installs it (+ TRUNCATE and the old row of an update; no owner).
CREATE OR REPLACE FUNCTION gateway.capture_change()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
DECLARE
    project uuid := TG_ARGV[0]::uuid;
    new_row jsonb;
    old_row jsonb;
    new_pk  jsonb := '{}'::jsonb;
    old_pk  jsonb := '{}'::jsonb;
    i       int;
BEGIN

    IF TG_OP = 'TRUNCATE' THEN
        -- statement level: one change for the whole table, no key, no row
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
        IF new_row IS NOT NULL THEN
            new_pk := new_pk || jsonb_build_object(TG_ARGV[i], new_row -> TG_ARGV[i]);
        END IF;
        IF old_row IS NOT NULL THEN
            old_pk := old_pk || jsonb_build_object(TG_ARGV[i], old_row -> TG_ARGV[i]);
        END IF;
    END LOOP;

    IF TG_OP = 'INSERT' THEN
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row)
        VALUES (project, TG_TABLE_NAME, 'insert', new_pk, new_row);
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row)
        VALUES (project, TG_TABLE_NAME, 'delete', old_pk, NULL);
    ELSIF new_pk = old_pk THEN

        -- the old image tells the hub whether the row left a subscriber's filter
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row, old_row)
        VALUES (project, TG_TABLE_NAME, 'update', new_pk, new_row, old_row);
    ELSE
        -- the primary key changed: subscribers see the old key go and the new row come
        INSERT INTO gateway.changes (project_id, table_name, op, pk, row)
        VALUES (project, TG_TABLE_NAME, 'delete', old_pk, NULL),
               (project, TG_TABLE_NAME, 'insert', new_pk, new_row);
    END IF;
    RETURN NULL;
END
$function$;

COMMENT ON FUNCTION gateway.capture_change() IS
    'Realtime capture trigger. Arguments: project id, then the primary-key column names '
    '(row triggers); the project id alone for the statement-level TRUNCATE trigger.';
REVOKE ALL ON FUNCTION gateway.capture_change() FROM PUBLIC;
