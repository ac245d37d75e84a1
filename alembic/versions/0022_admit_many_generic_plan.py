"""gateway.admit_many runs its key join on the generic plan.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

Under ``plan_cache_mode = auto`` PostgreSQL keeps a PL/pgSQL query's generic plan only
when it costs no more than the custom plans it has seen plus an allowance for planning.
The key join of ``admit_many`` is costed for the 10 elements PostgreSQL assumes of an
array parameter, and its batches hold 1 to 4: once a database held ~1,000 projects (each
index one level deeper), the custom plans won, and every call planned the join again
(``perf`` on a backend: the planner's path functions and ``copyObject`` at the top).
``admit_many`` cost 271 against 541-612 µs per call of 3 elements, and under load its
execution time per read tripled. The function now sets ``plan_cache_mode`` to
``force_generic_plan`` for its own transaction, as it already sets
``synchronous_commit`` and ``lock_timeout``; the generic plan is index lookups for any
batch. Frozen as ``0022/admit_many``; the downgrade restores 0021's.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(frozen(__file__, "0022/admit_many"))


def downgrade() -> None:
    op.execute(frozen(__file__, "0021/admit_many"))
