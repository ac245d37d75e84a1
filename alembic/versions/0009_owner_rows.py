"""Rows that belong to users: sessions in admission, owner tables, realtime tickets.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

* ``gateway.admit(key_hash, cost, window_s, sliding, lock_timeout_ms, session_hash)`` — a
  6-argument overload. It calls the 5-argument ``gateway.admit`` (unchanged: key, rate
  limit and quota) and, only when that admitted the request, resolves the session in
  ``gateway.admission_session``: the same statement, so an admitted select with a
  session is still two round trips. The answer gains one column, ``user_id``
  (``ALTER TYPE gateway.admission ADD ATTRIBUTE``), and two outcomes,
  ``session_not_found`` and ``session_expired``. Nothing about a session is cached by an
  instance: a sign-out or ``gateway auth logout`` is seen by the very next request on
  every instance. A request with a bad session was still a request: it counts, as one
  with a bad body does.
* ``table_registry.owner_column`` / ``row_access`` (``all`` | ``owner`` | ``public_read``).
  The compiler adds the owner condition; the row-level security policies that provisioning
  installs on the project table enforce it again (docs/auth.md).
* ``gateway.realtime_tickets``: single-use, 60 s tickets for ``EventSource`` (which can't
  send headers). Only the SHA-256 of a ticket is stored; a ticket is consumed by one
  ``DELETE ... RETURNING``, so it is single use across instances.
* ``gateway.changes.owner``: the capture trigger of an owner table gets an extra argument
  ``owner:<column>`` and stamps each change with the row's owner (the old row's for a
  delete), so a stream can carry only its subscriber's rows, deletes included. An update
  that changes the owner is captured as a delete (old owner) and an insert (new owner).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = r"""
ALTER TABLE gateway.table_registry
    ADD COLUMN owner_column text,
    ADD COLUMN row_access text NOT NULL DEFAULT 'all',
    ADD CONSTRAINT table_registry_row_access_check
        CHECK (row_access IN ('all', 'owner', 'public_read')),
    ADD CONSTRAINT table_registry_owner_column_check
        CHECK (row_access = 'all' OR owner_column IS NOT NULL);

-- the session's user, for the data routes (NULL without a session)
ALTER TYPE gateway.admission ADD ATTRIBUTE user_id uuid;
"""

TICKETS_AND_OWNER = r"""
CREATE TABLE gateway.realtime_tickets (
    ticket_hash  text        PRIMARY KEY,   -- SHA-256 hex of the ticket; never the ticket
    project_id   uuid        NOT NULL REFERENCES gateway.projects (id) ON DELETE CASCADE,
    key_hash     text        NOT NULL,      -- the key the ticket was asked for (its hash)
    session_hash text,                      -- the session's token hash, if one was sent
    expires_at   timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX realtime_tickets_expires_at_idx ON gateway.realtime_tickets (expires_at);
COMMENT ON TABLE gateway.realtime_tickets IS
    'Single-use tickets for opening a realtime stream from EventSource; consumed by '
    'DELETE ... RETURNING; expired rows are deleted by the ticket route itself.';
REVOKE ALL ON gateway.realtime_tickets FROM PUBLIC;

ALTER TABLE gateway.changes ADD COLUMN owner uuid;
"""

# then the session functions go and the admission type loses user_id (lookup_key, a SQL
# function that lists the type's attributes, is a stub until 0002's copy replaces it)
DROP_POLICIES_AND_SESSIONS = r"""
-- owner tables go back to every row for every key: their policies are dropped (the code
-- before 0008 sets no gateway.* settings, so the policies would hide every row)
DO $do$
DECLARE
    t record;
    policy text;
BEGIN
    FOR t IN SELECT p.schema_name, r.name
               FROM gateway.table_registry r JOIN gateway.projects p ON p.id = r.project_id
              WHERE r.row_access <> 'all'
                AND to_regclass(format('%I.%I', p.schema_name, r.name)) IS NOT NULL
    LOOP
        FOREACH policy IN ARRAY ARRAY['gateway_rows_select', 'gateway_rows_insert',
                                      'gateway_rows_update', 'gateway_rows_delete']
        LOOP
            EXECUTE format('DROP POLICY IF EXISTS %I ON %I.%I', policy, t.schema_name, t.name);
        END LOOP;
        EXECUTE format('ALTER TABLE %I.%I NO FORCE ROW LEVEL SECURITY', t.schema_name, t.name);
        EXECUTE format('ALTER TABLE %I.%I DISABLE ROW LEVEL SECURITY', t.schema_name, t.name);
    END LOOP;
END
$do$;
DROP TABLE IF EXISTS gateway.realtime_tickets;
DROP FUNCTION IF EXISTS gateway.lookup_key(text, text);
DROP FUNCTION IF EXISTS gateway.admit(text, integer, integer, boolean, integer, text);
DROP FUNCTION IF EXISTS gateway.admission_session(gateway.admission, text);
CREATE OR REPLACE FUNCTION gateway.lookup_key(p_key_hash text) RETURNS gateway.admission
LANGUAGE sql STABLE AS $fn$ SELECT NULL::gateway.admission $fn$;
ALTER TYPE gateway.admission DROP ATTRIBUTE user_id;
"""

DROP_COLUMNS = r"""
ALTER TABLE gateway.changes DROP COLUMN IF EXISTS owner;
ALTER TABLE gateway.table_registry
    DROP CONSTRAINT IF EXISTS table_registry_owner_column_check,
    DROP CONSTRAINT IF EXISTS table_registry_row_access_check,
    DROP COLUMN IF EXISTS row_access,
    DROP COLUMN IF EXISTS owner_column;
"""


def upgrade() -> None:
    op.execute(COLUMNS)
    op.execute(frozen(__file__, "0009/lookup_key", "0009/admission_session"))
    op.execute(TICKETS_AND_OWNER)
    op.execute(frozen(__file__, "0009/capture_change"))


def downgrade() -> None:
    op.execute(DROP_POLICIES_AND_SESSIONS)
    op.execute(frozen(__file__, "0002/lookup_key", "0007/capture_change"))
    op.execute(DROP_COLUMNS)
