-- gateway.bump_registry_version: any change to a project's rows of
-- gateway.table_registry or gateway.column_registry (also by plain SQL) bumps its row of
-- gateway.registry_versions. The realtime poller reads the version with each page of
-- changes, in the same snapshot, and reloads the project's catalog before sending when it
-- moved: a column made sensitive before a write is gone from that write's event.
-- Triggers realtime_registry_version on both registry tables.
CREATE OR REPLACE FUNCTION gateway.bump_registry_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path TO 'pg_catalog', 'gateway'
AS $function$
DECLARE
    project uuid;
    tid     bigint;
BEGIN
    IF TG_TABLE_NAME = 'table_registry' THEN
        IF TG_OP = 'DELETE' THEN project := OLD.project_id; ELSE project := NEW.project_id; END IF;
    ELSE
        IF TG_OP = 'DELETE' THEN tid := OLD.table_id; ELSE tid := NEW.table_id; END IF;
        SELECT t.project_id INTO project FROM gateway.table_registry t WHERE t.id = tid;
    END IF;
    IF project IS NOT NULL THEN
        INSERT INTO gateway.registry_versions AS v (project_id) VALUES (project)
        ON CONFLICT (project_id) DO UPDATE SET version = v.version + 1;
    END IF;
    RETURN NULL;
END
$function$;
