-- gateway.notify_plans_changed: a change of gateway.plans notifies '*' (all projects) on
-- the metadata channel, so every instance drops its local denies and its catalog cache.
-- Statement trigger gateway_plans_notify (AFTER UPDATE OR DELETE ON gateway.plans).
CREATE OR REPLACE FUNCTION gateway.notify_plans_changed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path TO 'pg_catalog', 'pg_temp'
AS $function$
BEGIN
    PERFORM pg_notify('gateway_metadata', '*');
    RETURN NULL;
END
$function$;

REVOKE ALL ON FUNCTION gateway.notify_plans_changed() FROM PUBLIC;
