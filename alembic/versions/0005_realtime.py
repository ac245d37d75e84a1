"""Realtime capture: one changes table, a definer trigger function, a retention watermark.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26

Every project table with realtime on has an AFTER INSERT/UPDATE/DELETE FOR EACH ROW
trigger calling ``gateway.capture_change(<project id>, <pk column>...)``. The function
appends one row to ``gateway.changes`` stamped with the writing transaction's id
(``xid8``, ``pg_current_xact_id()``) and a bigserial id. Readers order by ``(xid, id)``
and only read rows with ``xid < pg_snapshot_xmin(pg_current_snapshot())``: every
transaction below that bound has finished, so no row can ever appear behind a cursor
(see docs/realtime.md). There is deliberately NO ``NOTIFY`` per write: a notifying
commit takes a database-wide lock.

The function is ``SECURITY DEFINER`` (owned by the migrating role, fixed search_path):
project roles have no privilege on schema ``gateway`` or on ``gateway.changes`` and can
write a change only by writing their own table. EXECUTE is revoked from PUBLIC, so a
project role can't attach the function to a table of its own with a forged project id
(PostgreSQL checks EXECUTE when a trigger is created, not when it fires).

``gateway.changes_pruned`` keeps, per project, the largest ``(xid, id)`` retention has
deleted: a resume cursor below it would have a gap, so the stream answers ``reset``.

Downgrade drops the function with CASCADE, which drops every capture trigger on project
tables with it, and marks all tables realtime = false in the registry.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = r"""
CREATE TABLE gateway.changes (
    xid        xid8        NOT NULL DEFAULT pg_current_xact_id(),
    id         bigserial   NOT NULL,
    project_id uuid        NOT NULL,
    table_name text        NOT NULL,
    op         text        NOT NULL CHECK (op IN ('insert', 'update', 'delete')),
    pk         jsonb       NOT NULL,
    row        jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, id)
);
COMMENT ON TABLE gateway.changes IS
    'Realtime change log, appended by gateway.capture_change(); read in (xid, id) order '
    'below pg_snapshot_xmin; pruned by retention.';
-- the instance poller scans the primary key (xid, id); a resuming subscriber's catch-up
-- reads one project's table from its cursor; retention deletes by age.
CREATE INDEX changes_project_cursor_idx ON gateway.changes (project_id, table_name, xid, id);
CREATE INDEX changes_created_at_idx ON gateway.changes (created_at);

CREATE TABLE gateway.changes_pruned (
    project_id uuid        PRIMARY KEY,
    xid        xid8        NOT NULL,
    id         bigint      NOT NULL,
    pruned_at  timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE gateway.changes_pruned IS
    'Per project, the largest (xid, id) retention deleted: older resume cursors get reset.';

-- A per-project registry version, bumped by any change to the project's tables or
-- columns (also by plain SQL). The poller reads it with each page of changes, in the same
-- snapshot, and reloads the project's catalog before sending when it moved: a column made
-- sensitive before a write is gone from that write's event, on every instance.
CREATE TABLE gateway.registry_versions (
    project_id uuid   PRIMARY KEY,
    version    bigint NOT NULL DEFAULT 1
);
"""

# the registry-version triggers (their function exists by now) and the tables' privileges
GRANTS_AND_TRIGGERS = r"""
CREATE TRIGGER realtime_registry_version
    AFTER INSERT OR UPDATE OR DELETE ON gateway.table_registry
    FOR EACH ROW EXECUTE FUNCTION gateway.bump_registry_version();
CREATE TRIGGER realtime_registry_version
    AFTER INSERT OR UPDATE OR DELETE ON gateway.column_registry
    FOR EACH ROW EXECUTE FUNCTION gateway.bump_registry_version();

REVOKE ALL ON gateway.changes, gateway.changes_pruned, gateway.registry_versions FROM PUBLIC;
REVOKE ALL ON SEQUENCE gateway.changes_id_seq FROM PUBLIC;
"""

DOWNGRADE = r"""
-- CASCADE: every project table's capture trigger depends on the function.
DROP FUNCTION IF EXISTS gateway.capture_change() CASCADE;
UPDATE gateway.table_registry SET realtime = false WHERE realtime;
DROP TRIGGER IF EXISTS realtime_registry_version ON gateway.column_registry;
DROP TRIGGER IF EXISTS realtime_registry_version ON gateway.table_registry;
DROP FUNCTION IF EXISTS gateway.bump_registry_version();
DROP TABLE IF EXISTS gateway.registry_versions;
DROP TABLE IF EXISTS gateway.changes_pruned;
DROP TABLE IF EXISTS gateway.changes;
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(frozen(__file__, "0005/bump_registry_version"))
    op.execute(GRANTS_AND_TRIGGERS)
    op.execute(frozen(__file__, "0005/capture_change"))


def downgrade() -> None:
    op.execute(DOWNGRADE)
