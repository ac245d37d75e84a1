"""The admission step evaluated level by level: the same decisions at less CPU.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-04

``gateway.admission_step`` is a SQL function of three nested subqueries that the planner
inlines and flattens. Flattened, each reference to an inner column repeats that column's
whole expression, so the decision's expression held the window tests many times over, and
the executor built that tree on every call: a third of ``gateway.admit_many``'s CPU in a
profile. Each level now ends in ``OFFSET 0``, which keeps it a subquery, evaluated once.
Same inputs, same outputs (frozen as ``0019/admission_step``; the downgrade restores
0002's).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(frozen(__file__, "0019/admission_step"))


def downgrade() -> None:
    op.execute(frozen(__file__, "0002/admission_step"))
