"""Coalesced admission, aggregated: ONE counter-row write per project per batch.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

Why (issue 16, part 1: "requests of the same project are decided in arrival order against
ONE counter-row update")
------------------------------------------------------------------------------------------
0012's ``gateway.admit_many`` called the single ``gateway.admit`` once per element: exact by
construction, but one row version (and one upsert with its index probe and lock check) per
admitted request. On a hot project the batch's cost grew with its size while it held the
row lock. This version keeps the signature and the output rows, and decides the batch as
the single admit would have decided the same requests sent one by one in arrival order:

* Per element, exactly as ``gateway.admit`` (0010): the key lookup (one join for the whole
  batch: key, project, ``gateway.project_limits``, ``gateway.quota_usage``), the
  invalid/revoked/expired/suspended outcomes, the bandwidth and database-size rule (the
  element's quota becomes -1, so it is denied without consuming anything), and the
  ``last_used_at`` rule (one ``SKIP LOCKED`` update for every key that needs it).
* Per project present in the batch, in project-id order (the same total order in every
  batch, so two batches never wait on each other in a cycle): its
  ``gateway.admission_counters`` row is locked ONCE (``SELECT … FOR UPDATE``), the
  project's elements are walked in arrival order through ``gateway.admission_step`` IN
  MEMORY (the same pure function the single admit's upsert uses, so every window roll,
  sliding estimate, denial and quota decision is the same floating-point computation), and
  the final state is written in ONE ``UPDATE`` — or none, when nothing changed (every
  element denied in the same window and day: the single admit does not write then either).
* A project without a row: the walk starts from "no row" and its final state is INSERTed
  (``ON CONFLICT DO NOTHING``). If another batch created the row meanwhile, that insert
  waits for it and does nothing; the row is then locked and the walk redone from its
  state (a new snapshot: the function is VOLATILE), still one write.
* Each element's reported numbers (outcome, rate_used, remaining, reset_at/reset_in,
  day_reset_in, quota_used, the bandwidth and database fields, month_reset_in) are
  computed from the state after its own step, as the single admit computes them from its
  upsert's ``RETURNING`` (or its re-read of the unchanged row).
* Then each admitted element with a session hash goes through
  ``gateway.admission_session`` (0009), as before.

The ``admitted`` column of the row ends as the single admit would leave it: the decision
of the last element that wrote. ``tests/test_admission_aggregate.py`` compares this
function with the single admit applied sequentially on random batches, and counts the
writes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(frozen(__file__, "0013/admit_many"))


def downgrade() -> None:
    """0012's wrapper over the single admit (same signature: replaced in place)."""
    op.execute(frozen(__file__, "0012/admit_many"))
