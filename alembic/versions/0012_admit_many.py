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

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE_SQL = r"""
CREATE FUNCTION gateway.admit_many(
    p_key_hashes text[],
    p_costs integer[],
    p_window_s integer,
    p_sliding boolean,
    p_lock_timeout_ms integer DEFAULT 1000,
    p_grows boolean[] DEFAULT NULL,
    p_session_hashes text[] DEFAULT NULL
) RETURNS SETOF gateway.admission
LANGUAGE plpgsql AS $fn$
DECLARE
    n integer := coalesce(array_length(p_key_hashes, 1), 0);
    v_out gateway.admission[];
    e record;
BEGIN
    IF n <> coalesce(array_length(p_costs, 1), 0) THEN
        RAISE EXCEPTION 'admit_many: % key hashes but % costs', n,
              coalesce(array_length(p_costs, 1), 0)
              USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF n = 0 THEN
        RETURN;
    END IF;
    v_out := array_fill(NULL::gateway.admission, ARRAY[n]);
    -- one total order over (project, arrival) in every statement: no lock cycles between
    -- concurrent batches; arrival order kept within a project
    FOR e IN
        SELECT u.i, u.h, u.c
          FROM unnest(p_key_hashes, p_costs) WITH ORDINALITY AS u(h, c, i)
          LEFT JOIN gateway.api_keys ak ON ak.key_hash = u.h
         ORDER BY ak.project_id NULLS FIRST, u.i
    LOOP
        v_out[e.i] := gateway.admit(e.h, e.c, p_window_s, p_sliding, p_lock_timeout_ms,
                                    coalesce(p_grows[e.i], false), p_session_hashes[e.i]);
    END LOOP;
    FOR i IN 1 .. n LOOP
        RETURN NEXT v_out[i];
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[]) IS
    'gateway.admit for many requests in one statement (one row per element, in array '
    'order). Call it in autocommit, like gateway.admit.';

REVOKE EXECUTE ON FUNCTION gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[])
    FROM PUBLIC;
"""

DOWNGRADE_SQL = """
DROP FUNCTION IF EXISTS gateway.admit_many(
    text[], integer[], integer, boolean, integer, boolean[], text[]);
"""


def upgrade() -> None:
    op.execute(UPGRADE_SQL)


def downgrade() -> None:
    op.execute(DOWNGRADE_SQL)
