"""Session families: refresh rotates within a family, and a family ends as one.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04

A sign-up, a sign-in or a magic-link verification starts a FAMILY
(``auth_session_families``); every session a refresh mints from it joins the same family
(``auth_sessions.family_id``). Ending a family (sign-out, refresh-token reuse, a password
change, the address's owner taking over an unverified account, ``gateway auth logout``)
sets the family's ``revoked_at`` and, in the same statement, every member session's; the
admission statement (``gateway.admission_session``) reads the family too, so a session a
refresh in flight minted after the revoking statement began is refused as well.

``auth_sessions.via`` says how a session was created (``sign_up``, ``password``,
``magic_link``, ``refresh``): a ``magic_link`` session less than 10 minutes old may set a
new password without the current one (the reset flow). ``rotated_at`` marks a session a
refresh replaced: presented to refresh again after its grace, it is refresh-token reuse.

Every existing session becomes a family of its own (same id, same revocation).
Downgrade restores the ``admission_session`` 0015 replaces and drops the columns and the
table. That definition is frozen here as ``0015/0014_admission_session`` because 0010's
copy also holds the ``admit`` overload 0014 merged away (loading it would fail).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE gateway.auth_session_families (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    project_id     uuid        NOT NULL REFERENCES gateway.projects(id) ON DELETE CASCADE,
    user_id        uuid        NOT NULL REFERENCES gateway.auth_users(id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text
);
COMMENT ON TABLE gateway.auth_session_families IS
    'One sign-in and every session refresh minted from it; revoked as one.';
CREATE INDEX auth_session_families_user_id_idx ON gateway.auth_session_families (user_id);
REVOKE ALL ON gateway.auth_session_families FROM PUBLIC;

ALTER TABLE gateway.auth_sessions
    ADD COLUMN family_id  uuid REFERENCES gateway.auth_session_families(id) ON DELETE CASCADE,
    ADD COLUMN via        text NOT NULL DEFAULT 'password',
    ADD COLUMN rotated_at timestamptz;
INSERT INTO gateway.auth_session_families (id, project_id, user_id, created_at, revoked_at)
SELECT id, project_id, user_id, created_at, revoked_at FROM gateway.auth_sessions;
UPDATE gateway.auth_sessions SET family_id = id;
ALTER TABLE gateway.auth_sessions ALTER COLUMN family_id SET NOT NULL;
CREATE INDEX auth_sessions_family_id_idx ON gateway.auth_sessions (family_id);
"""

DOWNGRADE = r"""
ALTER TABLE gateway.auth_sessions
    DROP COLUMN family_id, DROP COLUMN via, DROP COLUMN rotated_at;
DROP TABLE gateway.auth_session_families;
"""


def upgrade() -> None:
    op.execute(UPGRADE)
    op.execute(frozen(__file__, "0015/admission_session"))


def downgrade() -> None:
    op.execute(frozen(__file__, "0015/0014_admission_session"))
    op.execute(DOWNGRADE)
