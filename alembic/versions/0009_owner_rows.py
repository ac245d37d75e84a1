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

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOOKUP_KEY = r"""
-- lookup_key is a SQL function: its SELECT must list the new attribute too
CREATE OR REPLACE FUNCTION gateway.lookup_key(p_key_hash text) RETURNS gateway.admission
LANGUAGE sql STABLE AS $fn$
    SELECT CASE WHEN ak.id IS NULL THEN 'invalid_key'
                WHEN ak.status = 'revoked' THEN 'revoked'
                WHEN ak.status <> 'active'
                     OR (ak.expires_at IS NOT NULL AND ak.expires_at <= now()) THEN 'expired'
                WHEN p.status <> 'active' THEN 'suspended'
                ELSE 'admitted' END,
           p.id, p.schema_name, ak.id, ak.key_type, ak.scopes,
           p.rate_limit_per_minute, NULL::double precision, NULL::integer,
           NULL::double precision, NULL::double precision, NULL::integer,
           NULL::bigint, p.requests_limit_daily, NULL::double precision, NULL::uuid
      FROM (SELECT 1) one
      LEFT JOIN gateway.api_keys ak ON ak.key_hash = p_key_hash
      LEFT JOIN gateway.projects p ON p.id = ak.project_id
$fn$;
"""

SESSION_WRAPPERS = r"""
-- The data routes' admission with a session: the 5-argument gateway.admit, then the
-- session. No DEFAULT on p_session_hash, so a 5-argument call is never ambiguous.
CREATE FUNCTION gateway.admit(
    p_key_hash text,
    p_cost integer,
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer,
    p_session_hash text
) RETURNS gateway.admission
LANGUAGE sql AS $fn$
    SELECT gateway.admission_session(
        gateway.admit(p_key_hash, p_cost, p_window_s, p_sliding, p_lock_timeout_ms),
        p_session_hash)
$fn$;

CREATE FUNCTION gateway.lookup_key(p_key_hash text, p_session_hash text)
RETURNS gateway.admission
LANGUAGE sql AS $fn$
    SELECT gateway.admission_session(gateway.lookup_key(p_key_hash), p_session_hash)
$fn$;

REVOKE EXECUTE ON FUNCTION gateway.admission_session(gateway.admission, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION gateway.admit(text, integer, integer, boolean, integer, text)
    FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION gateway.lookup_key(text, text) FROM PUBLIC;
"""

UPGRADE = (
    r"""
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
    + LOOKUP_KEY
    + r"""
-- An admitted answer + a session token's hash -> the answer with the session's user, or
-- the session's refusal. Valid: same project, not revoked, not expired (database clock).
CREATE FUNCTION gateway.admission_session(r gateway.admission, p_session_hash text)
RETURNS gateway.admission
LANGUAGE plpgsql AS $fn$
DECLARE
    s record;
BEGIN
    IF r.outcome IS DISTINCT FROM 'admitted' OR p_session_hash IS NULL THEN
        RETURN r;
    END IF;
    SELECT id, user_id, expires_at, revoked_at, last_used_at INTO s
      FROM gateway.auth_sessions
     WHERE token_hash = p_session_hash AND project_id = r.project_id;
    IF NOT FOUND OR s.revoked_at IS NOT NULL THEN
        r.outcome := 'session_not_found';
        RETURN r;
    ELSIF s.expires_at <= now() THEN
        r.outcome := 'session_expired';
        RETURN r;
    END IF;
    r.user_id := s.user_id;
    -- at most one write a minute per session; never wait for the session's row
    IF s.last_used_at IS NULL OR s.last_used_at < now() - interval '1 minute' THEN
        UPDATE gateway.auth_sessions SET last_used_at = now()
         WHERE id IN (SELECT id FROM gateway.auth_sessions
                       WHERE id = s.id
                         AND (last_used_at IS NULL
                              OR last_used_at < now() - interval '1 minute')
                         FOR NO KEY UPDATE SKIP LOCKED);
    END IF;
    RETURN r;
END
$fn$;

"""
    + SESSION_WRAPPERS
    + r"""
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

CREATE OR REPLACE FUNCTION gateway.capture_change() RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, gateway
AS $fn$
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
$fn$;
REVOKE ALL ON FUNCTION gateway.capture_change() FROM PUBLIC;
"""
)

DOWNGRADE = r"""
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
CREATE OR REPLACE FUNCTION gateway.lookup_key(p_key_hash text) RETURNS gateway.admission
LANGUAGE sql STABLE AS $fn$
    SELECT CASE WHEN ak.id IS NULL THEN 'invalid_key'
                WHEN ak.status = 'revoked' THEN 'revoked'
                WHEN ak.status <> 'active'
                     OR (ak.expires_at IS NOT NULL AND ak.expires_at <= now()) THEN 'expired'
                WHEN p.status <> 'active' THEN 'suspended'
                ELSE 'admitted' END,
           p.id, p.schema_name, ak.id, ak.key_type, ak.scopes,
           p.rate_limit_per_minute, NULL::double precision, NULL::integer,
           NULL::double precision, NULL::double precision, NULL::integer,
           NULL::bigint, p.requests_limit_daily, NULL::double precision
      FROM (SELECT 1) one
      LEFT JOIN gateway.api_keys ak ON ak.key_hash = p_key_hash
      LEFT JOIN gateway.projects p ON p.id = ak.project_id
$fn$;
{capture_0007}
ALTER TABLE gateway.changes DROP COLUMN IF EXISTS owner;
ALTER TABLE gateway.table_registry
    DROP CONSTRAINT IF EXISTS table_registry_owner_column_check,
    DROP CONSTRAINT IF EXISTS table_registry_row_access_check,
    DROP COLUMN IF EXISTS row_access,
    DROP COLUMN IF EXISTS owner_column;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def _capture_function_0007() -> str:
    """0007's capture function (truncate and old rows, no owner), from its own module so
    the downgrade restores exactly what 0007 installed."""
    path = Path(__file__).with_name("0007_realtime_truncate.py")
    spec = importlib.util.spec_from_file_location("_migration_0007", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    function: str = module._FUNCTION.replace("{truncate}", module._TRUNCATE_BRANCH).replace(
        "{update}", module._UPDATE_WITH_OLD
    )
    return function


def downgrade() -> None:
    op.execute(DOWNGRADE.replace("{capture_0007}", _capture_function_0007()))
