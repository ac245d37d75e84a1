"""A single admission locks its counter row and takes one step, as a batch does.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05

``gateway.admit`` decided with ``INSERT … ON CONFLICT DO UPDATE``, whose insert branch,
update branch and update condition each evaluated ``gateway.admission_step``: three
inlined subquery trees built by the executor on every call. It now does what
``gateway.admit_many`` does for each project of a batch: lock the row (``FOR UPDATE``),
take the step once, and update the row only when the step changed it (insert it when
there is none yet). Same decisions, same answers, the same lock held until the commit;
about 15 µs (a tenth) less PostgreSQL CPU per call. Frozen as ``0020/admit``; the
downgrade restores 0014's.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(frozen(__file__, "0020/admit"))


def downgrade() -> None:
    op.execute(frozen(__file__, "0014/admit"))
