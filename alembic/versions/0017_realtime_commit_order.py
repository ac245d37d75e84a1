"""Realtime delivery in commit order: a commit stamp and a commit barrier.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04

Until now the hub delivered only changes with ``xid < pg_snapshot_xmin``: one open
transaction anywhere in the database (another tenant's slow write) held every tenant's
events back until it ended. Now each transaction that writes changes is numbered when it
COMMITS:

* ``gateway.commits (xid, seq)`` and the sequence ``gateway.commit_seq``;
* the deferred constraint trigger ``gateway_commit_stamp`` on ``gateway.changes`` runs
  ``gateway.stamp_commit()`` at commit time: shared advisory lock (the barrier), then one
  ``(xid, nextval)`` row per transaction;
* ``gateway.realtime_horizon()`` takes the barrier exclusively and returns the last number:
  every number up to it belongs to a finished transaction (docs/realtime.md).

Cursors stay ``<a>-<b>``; ``a`` is now the commit number. Existing cursors keep working:
every existing change is committed, so its transaction is backfilled with ``seq = xid``
(xid order was the old delivery order), and the sequence starts above every xid issued so
far. ``changes_pruned`` keeps ``(seq, id)`` (its ``xid`` column becomes ``seq``, same
values). The upgrade holds ``gateway.changes`` in SHARE ROW EXCLUSIVE mode while it
backfills and creates the trigger: writers in flight finish first, later ones wait and then
fire the new trigger, so no committed change is left without a number.

Downgrade drops the trigger, the functions, the table and the sequence, and turns
``changes_pruned.seq`` back into ``xid`` (numbers above the last xid become meaningless
there; retention marks are only ever compared with later cursors).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = r"""
LOCK TABLE gateway.changes IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE gateway.commits (
    xid xid8   PRIMARY KEY,
    seq bigint NOT NULL UNIQUE
);
COMMENT ON TABLE gateway.commits IS
    'Realtime commit order: one row per transaction that wrote gateway.changes, numbered '
    'at commit (gateway.stamp_commit); read up to gateway.realtime_horizon().';
CREATE SEQUENCE gateway.commit_seq AS bigint;

INSERT INTO gateway.commits (xid, seq)
SELECT DISTINCT xid, xid::text::bigint FROM gateway.changes;
SELECT setval('gateway.commit_seq', pg_current_xact_id()::text::bigint);

ALTER TABLE gateway.changes_pruned RENAME COLUMN xid TO seq;
ALTER TABLE gateway.changes_pruned ALTER COLUMN seq TYPE bigint USING seq::text::bigint;
COMMENT ON TABLE gateway.changes_pruned IS
    'Per project, the largest (seq, id) retention deleted: older resume cursors get reset.';

REVOKE ALL ON gateway.commits FROM PUBLIC;
REVOKE ALL ON SEQUENCE gateway.commit_seq FROM PUBLIC;
"""

TRIGGER = r"""
CREATE CONSTRAINT TRIGGER gateway_commit_stamp
    AFTER INSERT ON gateway.changes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION gateway.stamp_commit();
"""

DOWNGRADE = r"""
LOCK TABLE gateway.changes IN SHARE ROW EXCLUSIVE MODE;
DROP TRIGGER IF EXISTS gateway_commit_stamp ON gateway.changes;
DROP FUNCTION IF EXISTS gateway.stamp_commit();
DROP FUNCTION IF EXISTS gateway.realtime_horizon();
ALTER TABLE gateway.changes_pruned
    ALTER COLUMN seq TYPE xid8 USING least(seq, pg_current_xact_id()::text::bigint)::text::xid8;
ALTER TABLE gateway.changes_pruned RENAME COLUMN seq TO xid;
DROP TABLE IF EXISTS gateway.commits;
DROP SEQUENCE IF EXISTS gateway.commit_seq;
"""


def upgrade() -> None:
    op.execute(TABLES)
    op.execute(frozen(__file__, "0017/stamp_commit", "0017/realtime_horizon"))
    op.execute(TRIGGER)


def downgrade() -> None:
    op.execute(DOWNGRADE)
