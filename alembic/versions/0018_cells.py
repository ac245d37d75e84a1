"""Cells: the directory of which PostgreSQL database ("cell") holds each project.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04

The database the gateway was configured with (``DATABASE_URL``) is the CONTROL database
and also the cell named ``home``. Every other cell is a full gateway database migrated to
the same head, holding everything the request path needs for its projects (keys,
counters, sessions, users, owner rows, change log, jobs). These tables are created in
every database but used only in the control database (docs/cells.md):

* ``gateway.cells``: one row per cell; ``home`` has no URLs (it is the control database).
* ``gateway.project_cells``: the projects that live OFF the home cell, and where. A
  project without a row lives on ``home``: a single-database deployment has no rows and
  works exactly as before.
* ``gateway.key_cells``: the hashes of those projects' API keys, so an instance routes a
  key to its cell with one lookup on a cache miss (a hash that is not here is ``home``'s).
* ``gateway.cell_moves``: the state of each online move of a project between cells, so an
  interrupted move can be resumed or rolled back.

A change of the first three notifies ``gateway_directory`` (``gateway.notify_directory``):
instances drop the cached routes it names.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = r"""
CREATE TABLE gateway.cells (
    name            text        PRIMARY KEY
        CONSTRAINT cells_name_check CHECK (name ~ '^[a-z][a-z0-9_-]{0,31}$'),
    database_url    text,
    direct_url      text,
    max_connections integer
        CONSTRAINT cells_max_connections_check CHECK (max_connections > 0),
    status          text        NOT NULL DEFAULT 'active'
        CONSTRAINT cells_status_check CHECK (status IN ('active', 'draining')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cells_home_check CHECK ((name = 'home') = (database_url IS NULL))
);
COMMENT ON TABLE gateway.cells IS
    'The PostgreSQL databases projects are placed on; home is the control database itself '
    '(no URL). Read by every instance at start and on NOTIFY gateway_directory ''cells''.';
INSERT INTO gateway.cells (name) VALUES ('home');

CREATE TABLE gateway.project_cells (
    project_id uuid        PRIMARY KEY,
    name       text        NOT NULL UNIQUE,
    cell       text        NOT NULL REFERENCES gateway.cells (name),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT project_cells_not_home_check CHECK (cell <> 'home')
);
CREATE INDEX project_cells_cell_idx ON gateway.project_cells (cell);
COMMENT ON TABLE gateway.project_cells IS
    'The directory: projects placed off the home cell. No row = the project lives on home.';

CREATE TABLE gateway.key_cells (
    key_hash   text PRIMARY KEY
        CONSTRAINT key_cells_hash_check CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    project_id uuid NOT NULL REFERENCES gateway.project_cells (project_id) ON DELETE CASCADE
);
CREATE INDEX key_cells_project_idx ON gateway.key_cells (project_id);
COMMENT ON TABLE gateway.key_cells IS
    'Hashes of the API keys of projects off the home cell: key -> project -> cell. A hash '
    'that is not here routes to home.';

CREATE TABLE gateway.cell_moves (
    project_id  uuid        PRIMARY KEY,
    source      text        NOT NULL REFERENCES gateway.cells (name),
    target      text        NOT NULL REFERENCES gateway.cells (name),
    state       text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT cell_moves_distinct_check CHECK (source <> target)
);
COMMENT ON TABLE gateway.cell_moves IS
    'Online moves of a project between cells in progress (a state machine, docs/cells.md).';

REVOKE ALL ON gateway.cells, gateway.project_cells, gateway.key_cells, gateway.cell_moves
    FROM PUBLIC;
"""

TRIGGERS = r"""
CREATE TRIGGER gateway_cells_notify
    AFTER INSERT OR UPDATE OR DELETE ON gateway.cells
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_directory();
CREATE TRIGGER gateway_project_cells_notify
    AFTER INSERT OR UPDATE OR DELETE ON gateway.project_cells
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_directory();
CREATE TRIGGER gateway_key_cells_notify
    AFTER INSERT OR UPDATE OR DELETE ON gateway.key_cells
    FOR EACH ROW EXECUTE FUNCTION gateway.notify_directory();
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS gateway.cell_moves;
DROP TABLE IF EXISTS gateway.key_cells;
DROP TABLE IF EXISTS gateway.project_cells;
DROP TABLE IF EXISTS gateway.cells;
DROP FUNCTION IF EXISTS gateway.notify_directory();
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(frozen(__file__, "0018/notify_directory"))
    op.execute(TRIGGERS)


def downgrade() -> None:
    op.execute(DOWNGRADE)
