"""End-user auth: users, sessions, magic links and the windowed throttle counters.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

``auth_users`` and ``auth_sessions`` are per project (``project_id`` on every row, cascade
on project delete). A session token is 32 random bytes, base64url; only the lower-case hex
SHA-256 of the token string is stored (``token_hash``), as for API keys. A session is valid
while ``revoked_at IS NULL AND expires_at > now()``; the data routes' admission statement
reads exactly these columns, so sign-out and ``gateway auth logout`` take effect on the
next request on every instance (docs/auth.md).

``auth_magic_links`` hold only the SHA-256 of a link token; ``used_at`` makes them single
use (a conditional UPDATE ... RETURNING claims one atomically).

``auth_throttle`` is a windowed counter: one row per (bucket key, window start), bumped by
one ``INSERT ... ON CONFLICT DO UPDATE ... RETURNING count`` so two instances never both
see "under the limit" for the same slot. The maintenance leader deletes past windows.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE gateway.auth_users (
    id                      uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id              uuid        NOT NULL REFERENCES gateway.projects(id) ON DELETE CASCADE,
    email                   text        NOT NULL,
    password_hash           text,
    email_verified          boolean     NOT NULL DEFAULT false,
    provider                text        NOT NULL DEFAULT 'email',
    metadata                jsonb       NOT NULL DEFAULT '{}',
    created_at              timestamptz NOT NULL DEFAULT now(),
    last_sign_in            timestamptz,
    password_reset_required boolean     NOT NULL DEFAULT false,
    UNIQUE (project_id, email)
);
COMMENT ON TABLE gateway.auth_users IS
    'End users of a project''s app. Emails trimmed and lower-cased; password_hash is '
    'argon2id (or the original''s scrypt$N$r$p$salt$hash until the next sign-in).';

CREATE TABLE gateway.auth_sessions (
    id           uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id   uuid        NOT NULL REFERENCES gateway.projects(id) ON DELETE CASCADE,
    user_id      uuid        NOT NULL REFERENCES gateway.auth_users(id) ON DELETE CASCADE,
    token_hash   text        NOT NULL UNIQUE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    ip           inet,
    user_agent   text
);
COMMENT ON COLUMN gateway.auth_sessions.token_hash IS
    'Lower-case hex SHA-256 of the session token string; the token itself is never stored.';
CREATE INDEX auth_sessions_user_id_idx ON gateway.auth_sessions (user_id);
-- cleanup of long-dead sessions by the maintenance leader
CREATE INDEX auth_sessions_expires_at_idx ON gateway.auth_sessions (expires_at);

CREATE TABLE gateway.auth_magic_links (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id uuid        NOT NULL REFERENCES gateway.projects(id) ON DELETE CASCADE,
    email      text        NOT NULL,
    token_hash text        NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX auth_magic_links_expires_at_idx ON gateway.auth_magic_links (expires_at);

CREATE TABLE gateway.auth_throttle (
    bucket       text        NOT NULL,
    window_start timestamptz NOT NULL,
    count        integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (bucket, window_start)
);
CREATE INDEX auth_throttle_window_start_idx ON gateway.auth_throttle (window_start);

REVOKE ALL ON gateway.auth_users, gateway.auth_sessions, gateway.auth_magic_links,
    gateway.auth_throttle FROM PUBLIC;
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS gateway.auth_throttle;
DROP TABLE IF EXISTS gateway.auth_magic_links;
DROP TABLE IF EXISTS gateway.auth_sessions;
DROP TABLE IF EXISTS gateway.auth_users;
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(DOWNGRADE)
