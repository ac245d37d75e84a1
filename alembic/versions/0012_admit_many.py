"""Coalesced admission: ``gateway.admit_many`` decides many requests in one statement.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

Why (issue 16, part 1)
----------------------
Each gateway instance sends every admission waiting at one moment as ONE statement
(``gateway/admission/coalescer.py``): one round trip, one transaction, one commit and one
lock acquisition per project row for the whole batch, instead of one of each per request.

``gateway.admit_many(key_hashes, costs, window_s, sliding, lock_timeout_ms, grows,
session_hashes)`` returns one ``gateway.admission`` row per element, in the order of the
arrays (= arrival order). ``grows`` (0010: the request inserts or updates) and
``session_hashes`` (0009: the request's session token hash, NULL = no session) are
per-element arrays; NULL arrays mean "false" / "no session" for every element.

Design shipped: a wrapper over the single ``gateway.admit`` (migration 0002). Each element
is decided by ``gateway.admit`` itself, inside the one statement, so every outcome,
window rule, quota rule, header number and error code is the single admit's BY
CONSTRUCTION — the plan limits, the bandwidth and database-size refusals (0010) and the
session resolution with its outcomes and ``user_id`` (0009) included — and the function
follows any later change of ``gateway.admit``: only the argument lists here change. It
calls the 7-argument ``gateway.admit`` (0010's session wrapper), which with a NULL
session hash is the plain admission.

* Requests of one project are decided in arrival order (their order in the arrays): the
  second sees the first's count, and a denial consumes nothing (``gateway.admit``'s
  ``WHERE`` skips the write).
* Deadlocks: the batch holds every counter row it touched until its commit, and other
  instances' batches do the same; so the elements are visited in the order
  (project id, arrival), the same total order in every statement, and two batches can
  never wait on each other in a cycle. Unknown keys (no project) go first; they touch no
  counter row.
* The cost: one row version per ADMITTED element (HOT, no index touched) rather than one
  per project per batch; the lock, the commit and the WAL flush are paid once per batch.
  docs/admission.md has the figures.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DOWNGRADE_SQL = """
DROP FUNCTION IF EXISTS gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[]);
"""


def upgrade() -> None:
    op.execute(frozen(__file__, "0012/admit_many"))


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
