"""Admission rules written once: ``gateway.admit`` and ``gateway.admit_many`` share them.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04

Until 0013 the batch admission re-implemented the single admission's key checks, its
quota ``-1`` rule and its outcome report, so a change had to be made twice. Now each rule
is one function in ``admission_rules.sql``, called by both (and the key rule by
``gateway.lookup_key``):

* ``gateway.admission_key_outcome``: invalid_key / revoked / expired / suspended, or NULL;
* ``gateway.admission_quota``: the daily quota a request is decided against, -1 when the
  month's bandwidth or (a growing request) the database size refuses it;
* ``gateway.admission_report``: outcome, rate_used, rate_remaining, reset_at/reset_in,
  quota_used, day_reset_in, month_reset_in from the counter row after the request.

Helpers rather than ``admit`` as ``admit_many`` of one element, by measurement (limiter
scenario, 2026-12-04, docs/admission.md): a decision sent alone through ``admit_many``
costs about 4x the single admit's PostgreSQL time (2.48 against 0.59 ms per decision
with coalescing off), while the helpers cost nothing measurable.

``gateway.admit`` also becomes ONE function: the session overload (0009/0010, a SQL
wrapper) is its last, optional argument, ``p_session_hash text DEFAULT NULL``, so every
call — 2, 4, 6 or 7 arguments — resolves as before and answers the same columns.

Downgrade restores 0010's two overloads, 0013's ``admit_many`` and 0010's
``lookup_key`` from their frozen copies and drops the helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# CREATE OR REPLACE can't merge two overloads: both go, the one admit comes back
DROP_OVERLOADS = """
DROP FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean, text);
DROP FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean);
"""

DROP_MERGED_ADMIT = """
DROP FUNCTION gateway.admit(text, integer, integer, boolean, integer, boolean, text);
"""

DROP_RULES = """
DROP FUNCTION gateway.admission_report(gateway.admission, bigint, integer, integer, bigint,
    boolean, integer, boolean, integer, double precision, date, date);
DROP FUNCTION gateway.admission_quota(bigint, boolean, bigint, bigint, bigint, bigint);
DROP FUNCTION gateway.admission_key_outcome(boolean, text, timestamptz, text);
"""


def upgrade() -> None:
    op.execute(DROP_OVERLOADS)
    op.execute(
        frozen(__file__, "0014/admission_rules", "0014/admit", "0014/admit_many", "0014/lookup_key")
    )


def downgrade() -> None:
    op.execute(DROP_MERGED_ADMIT)
    op.execute(
        frozen(
            __file__,
            "0010/admit",
            "0010/lookup_key",
            "0010/admission_session",
            "0013/admit_many",
        )
    )
    op.execute(DROP_RULES)
