-- gateway.notify_directory: a change of the cell directory (control database) tells every
-- instance which cached routes to drop, on channel 'gateway_directory':
--   'cells'                 a cell was added, changed or removed (gateway.cells)
--   'project:<uuid>'        a project was placed, moved or removed (gateway.project_cells)
--   'key:<sha256 hex>'      a key of a project off the home cell was added or removed
--                           (gateway.key_cells)
-- Row triggers gateway_cells_notify, gateway_project_cells_notify, gateway_key_cells_notify.
CREATE OR REPLACE FUNCTION gateway.notify_directory()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
DECLARE
    changed record;
BEGIN
    IF TG_OP = 'DELETE' THEN
        changed := OLD;
    ELSE
        changed := NEW;
    END IF;
    IF TG_TABLE_NAME = 'cells' THEN
        PERFORM pg_notify('gateway_directory', 'cells');
    ELSIF TG_TABLE_NAME = 'project_cells' THEN
        PERFORM pg_notify('gateway_directory', 'project:' || changed.project_id::text);
    ELSE
        PERFORM pg_notify('gateway_directory', 'key:' || changed.key_hash);
    END IF;
    RETURN NULL;
END
$function$;

REVOKE ALL ON FUNCTION gateway.notify_directory() FROM PUBLIC;
