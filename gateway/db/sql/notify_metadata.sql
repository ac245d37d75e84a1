-- Metadata notifications (docs/metadata.md): NOTIFY gateway_metadata, payload = the
-- project id, whenever something an instance's metadata cache depends on changes. The
-- listener (gateway/metadata/) drops that project's catalog and local denies. NOTIFY is
-- transactional and folded per transaction.
-- Row trigger functions (triggers created by migrations 0003 and 0010):
--   notify_metadata_project_row: gateway.table_registry (every change), gateway.projects
--     (limits, status, tier, schema, overrides; deletes), gateway.api_keys (anything but
--     last_used_at, which admission bumps)
--   notify_metadata_column_row: gateway.column_registry (the project of the column's table)
-- Event trigger functions, for DDL in project schemas (p_ + 12 hex), installed when the
-- migrating role may create event triggers: notify_metadata_ddl (ddl_command_end) and
-- notify_metadata_sql_drop (sql_drop). They run for every DDL command in the database:
-- cheap, and never failing.
CREATE OR REPLACE FUNCTION gateway.notify_metadata_project_row()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    -- table_registry and api_keys carry project_id; projects is the project itself.
    IF TG_TABLE_NAME = 'projects' THEN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('gateway_metadata', OLD.id::text);
        ELSE
            PERFORM pg_notify('gateway_metadata', NEW.id::text);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('gateway_metadata', OLD.project_id::text);
    ELSE
        PERFORM pg_notify('gateway_metadata', NEW.project_id::text);
        IF TG_OP = 'UPDATE' AND OLD.project_id IS DISTINCT FROM NEW.project_id THEN
            PERFORM pg_notify('gateway_metadata', OLD.project_id::text);
        END IF;
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION gateway.notify_metadata_column_row()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    pid uuid;
BEGIN
    -- A column's project is its table's. When the table itself is being deleted (the
    -- cascade), the lookup finds nothing: the table's own trigger has notified.
    IF TG_OP <> 'INSERT' THEN
        SELECT t.project_id INTO pid FROM gateway.table_registry t WHERE t.id = OLD.table_id;
        IF pid IS NOT NULL THEN
            PERFORM pg_notify('gateway_metadata', pid::text);
        END IF;
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.table_id IS DISTINCT FROM OLD.table_id) THEN
        SELECT t.project_id INTO pid FROM gateway.table_registry t WHERE t.id = NEW.table_id;
        IF pid IS NOT NULL THEN
            PERFORM pg_notify('gateway_metadata', pid::text);
        END IF;
    END IF;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE FUNCTION gateway.notify_metadata_ddl()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    pid uuid;
BEGIN
    -- Runs for every DDL command in the database: keep it cheap and never fail.
    IF to_regclass('gateway.projects') IS NULL THEN
        RETURN;
    END IF;
    FOR pid IN
        SELECT DISTINCT p.id
          FROM pg_event_trigger_ddl_commands() c
          JOIN gateway.projects p
            ON p.schema_name = CASE WHEN c.object_type = 'schema' THEN c.object_identity
                                    ELSE c.schema_name END
         WHERE p.schema_name ~ '^p_[0-9a-f]{12}$'
    LOOP
        PERFORM pg_notify('gateway_metadata', pid::text);
    END LOOP;
END
$function$;

CREATE OR REPLACE FUNCTION gateway.notify_metadata_sql_drop()
RETURNS event_trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    pid uuid;
BEGIN
    IF to_regclass('gateway.projects') IS NULL THEN
        RETURN;
    END IF;
    FOR pid IN
        SELECT DISTINCT p.id
          FROM pg_event_trigger_dropped_objects() d
          JOIN gateway.projects p
            ON p.schema_name = CASE WHEN d.object_type = 'schema' THEN d.object_identity
                                    ELSE d.schema_name END
         WHERE p.schema_name ~ '^p_[0-9a-f]{12}$'
    LOOP
        PERFORM pg_notify('gateway_metadata', pid::text);
    END LOOP;
END
$function$;

REVOKE ALL ON FUNCTION gateway.notify_metadata_project_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION gateway.notify_metadata_column_row() FROM PUBLIC;
REVOKE ALL ON FUNCTION gateway.notify_metadata_ddl() FROM PUBLIC;
REVOKE ALL ON FUNCTION gateway.notify_metadata_sql_drop() FROM PUBLIC;
