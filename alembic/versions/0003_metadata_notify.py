"""Metadata notifications: every change the metadata cache depends on sends a NOTIFY.

Channel ``gateway_metadata``, payload = the project id (uuid text); ``*`` means "all
projects" (sent by an operator, never by these triggers). NOTIFY is transactional, so
listeners hear about a change only when it commits, and PostgreSQL folds identical
notifications of one transaction into one — a migration of 50 statements on one project
sends one notification.

Sources:
- ``gateway.table_registry`` and ``gateway.column_registry`` (the column's project is
  found through its table): every INSERT/UPDATE/DELETE — also plain SQL from any service.
- ``gateway.projects``: UPDATEs that change limits, status, tier or schema, and DELETEs
  (admission drops its local rate-limit deny on these).
- ``gateway.api_keys``: INSERT, DELETE, and UPDATEs of anything but ``last_used_at`` (which
  admission bumps about once a minute per key and must stay cheap: no NOTIFY, whose commit
  takes a database-wide lock).
- A DDL event trigger (``ddl_command_end`` and ``sql_drop``) for objects in project schemas
  (``p_`` + 12 hex), mapped to the project through ``gateway.projects.schema_name``.
  Creating event triggers needs superuser (or, on Neon, a role allowed to); when the
  migrating role may not, the migration skips it and logs why.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from alembic import op
from sqlalchemy import text

from gateway.db.sql import frozen

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic")

EVENT_TRIGGERS = ("gateway_metadata_ddl", "gateway_metadata_sql_drop")

TRIGGERS = """
CREATE TRIGGER gateway_metadata_notify
    AFTER INSERT OR UPDATE OR DELETE ON gateway.table_registry
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_metadata_project_row();

CREATE TRIGGER gateway_metadata_notify
    AFTER INSERT OR UPDATE OR DELETE ON gateway.column_registry
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_metadata_column_row();

CREATE TRIGGER gateway_metadata_notify_update
    AFTER UPDATE ON gateway.projects
    FOR EACH ROW
    WHEN (OLD.rate_limit_per_minute IS DISTINCT FROM NEW.rate_limit_per_minute
       OR OLD.requests_limit_daily IS DISTINCT FROM NEW.requests_limit_daily
       OR OLD.status IS DISTINCT FROM NEW.status
       OR OLD.tier IS DISTINCT FROM NEW.tier
       OR OLD.schema_name IS DISTINCT FROM NEW.schema_name
       OR OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION gateway.notify_metadata_project_row();

CREATE TRIGGER gateway_metadata_notify_delete
    AFTER DELETE ON gateway.projects
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_metadata_project_row();

CREATE TRIGGER gateway_metadata_notify_insert_delete
    AFTER INSERT OR DELETE ON gateway.api_keys
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_metadata_project_row();

CREATE TRIGGER gateway_metadata_notify_update
    AFTER UPDATE ON gateway.api_keys
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
       OR OLD.expires_at IS DISTINCT FROM NEW.expires_at
       OR OLD.scopes IS DISTINCT FROM NEW.scopes
       OR OLD.key_type IS DISTINCT FROM NEW.key_type
       OR OLD.key_hash IS DISTINCT FROM NEW.key_hash
       OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
       OR OLD.project_id IS DISTINCT FROM NEW.project_id)
    EXECUTE FUNCTION gateway.notify_metadata_project_row();
"""

# Tried in a DO block so that a role without the privilege skips with a NOTICE instead of
# failing the whole migration. Event triggers are database-wide; they fire on every DDL
# command, and the functions above return at once unless a project schema is involved.
EVENT_TRIGGER_DDL = """
DO $do$
BEGIN
    CREATE EVENT TRIGGER gateway_metadata_ddl ON ddl_command_end
        EXECUTE FUNCTION gateway.notify_metadata_ddl();
    CREATE EVENT TRIGGER gateway_metadata_sql_drop ON sql_drop
        EXECUTE FUNCTION gateway.notify_metadata_sql_drop();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'gateway: DDL event trigger not installed: % (role %)', SQLERRM, current_user;
END
$do$;
"""


def _event_trigger_count() -> int:
    bind = op.get_bind()
    return int(
        bind.execute(
            text("SELECT count(*) FROM pg_event_trigger WHERE evtname = ANY(:names)"),
            {"names": list(EVENT_TRIGGERS)},
        ).scalar_one()
    )


def upgrade() -> None:
    op.execute(frozen(__file__, "0003/notify_metadata"))
    op.execute(TRIGGERS)
    bind = op.get_bind()
    role, is_super = bind.execute(
        text("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
    ).one()
    op.execute(EVENT_TRIGGER_DDL)
    if _event_trigger_count() == len(EVENT_TRIGGERS):
        log.info("gateway: DDL event triggers installed (role %s)", role)
    else:
        log.warning(
            "gateway: skipped the DDL event triggers: role %s may not create event triggers "
            "(superuser=%s). Registry changes still notify; DDL made outside the gateway CLI "
            "reaches the cache through the TTL only. See docs/metadata.md to enable it.",
            role,
            is_super,
        )


def downgrade() -> None:
    # Dropping the functions with CASCADE takes the (event) triggers with them, whoever
    # created those; DROP EVENT TRIGGER alone would need ownership of the trigger.
    op.execute(
        """
        DROP FUNCTION IF EXISTS gateway.notify_metadata_ddl() CASCADE;
        DROP FUNCTION IF EXISTS gateway.notify_metadata_sql_drop() CASCADE;
        DROP TRIGGER IF EXISTS gateway_metadata_notify_update ON gateway.api_keys;
        DROP TRIGGER IF EXISTS gateway_metadata_notify_insert_delete ON gateway.api_keys;
        DROP TRIGGER IF EXISTS gateway_metadata_notify_delete ON gateway.projects;
        DROP TRIGGER IF EXISTS gateway_metadata_notify_update ON gateway.projects;
        DROP TRIGGER IF EXISTS gateway_metadata_notify ON gateway.column_registry;
        DROP TRIGGER IF EXISTS gateway_metadata_notify ON gateway.table_registry;
        DROP FUNCTION IF EXISTS gateway.notify_metadata_column_row();
        DROP FUNCTION IF EXISTS gateway.notify_metadata_project_row();
        """
    )
