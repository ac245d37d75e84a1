"""Admin API: the nonce table that makes a signed request single-use across instances.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

Every signed admin request carries a nonce; the instance that receives it records the
nonce with ONE ``INSERT … ON CONFLICT (nonce) DO NOTHING`` — the primary key decides,
so two instances receiving the same captured request can't both accept it. A row is
kept until ``expires_at`` (the request's timestamp plus 10 minutes, well past the
±120 s window in which a timestamp is accepted at all); the maintenance leader deletes
expired rows (``gateway/control/nonces.py``). The table is logged: a crash must not
forget the nonces of the last seconds, or a captured request could be replayed right
after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE gateway.admin_nonces (
            nonce text PRIMARY KEY,
            expires_at timestamptz NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX admin_nonces_expires_at_idx ON gateway.admin_nonces (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS gateway.admin_nonces")
