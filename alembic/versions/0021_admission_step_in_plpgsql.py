"""The counter's step is a PL/pgSQL function, assigned rather than selected.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05

``gateway.admit`` and ``gateway.admit_many`` took each step with ``SELECT * INTO s FROM
gateway.admission_step(...)``: the SQL function was inlined into that statement, and the
executor started its tree of three subqueries (migration 0019) again for every step, a
fifth of ``admit_many``'s PostgreSQL CPU. The step is now a PL/pgSQL function with OUT
parameters that both callers assign (``s := gateway.admission_step(...)``), one of
PL/pgSQL's simple expressions: no executor start-up per step. Same inputs, same outputs,
the same computation in the same order. Its result type changes (a record, not a set),
so the old function is dropped first; the callers are replaced in the same migration.
Frozen as ``0021/*``; the downgrade restores 0019's step, 0020's admit and 0014's
admit_many.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROP_STEP = """
DROP FUNCTION gateway.admission_step(integer, bigint, integer, integer, date, bigint,
    integer, bigint, double precision, date, boolean, integer, integer, bigint);
"""


def upgrade() -> None:
    op.execute(DROP_STEP)
    op.execute(frozen(__file__, "0021/admission_step", "0021/admit", "0021/admit_many"))


def downgrade() -> None:
    op.execute(DROP_STEP)
    op.execute(frozen(__file__, "0019/admission_step", "0020/admit", "0014/admit_many"))
