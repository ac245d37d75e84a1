"""Realtime capture of TRUNCATE, and the old row of an UPDATE.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

* **TRUNCATE.** Row triggers don't fire for ``TRUNCATE``, so a truncated table used to
  vanish from subscribers' views without a word. Every captured table now also has a
  statement-level ``AFTER TRUNCATE`` trigger (``gateway_realtime_truncate``) calling the
  same ``gateway.capture_change(<project id>)``, which appends ONE change row with
  ``op = 'truncate'`` (``pk = {}``, no row) per truncated table, whatever the row count.
  The upgrade installs it on every table that has the row capture trigger today (found in
  ``pg_trigger``, the truth, rather than in the registry flag).
* **Rows leaving a filter.** An update row now also carries ``old_row``, the whole old
  row (``to_jsonb(OLD)``, which the function computed anyway): the hub evaluates each
  subscriber's filter on it too and sends ``leave`` (primary key only) to a subscriber
  whose filter the row matched before and doesn't any more. Inserts and deletes have
  ``NULL``. The whole old row rather than only the changed columns: a diff needs a query
  inside the trigger (``jsonb_each``), measured at +40 to 100 % of the trigger's CPU per
  update on this machine, while storing the image already computed costs about nothing
  there; the price is bytes (an update's change row is about twice as large, for the
  retention period).

``op`` accepts ``'truncate'``. The new CHECK is added ``NOT VALID``: every existing row
satisfied the old, stricter one, and skipping the scan keeps this migration's exclusive
lock on ``gateway.changes`` short (every captured write waits on it).

Downgrade drops the TRUNCATE triggers and the truncate rows, restores 0005's function and
CHECK, and drops ``old_row``.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

from gateway.db.sql import frozen

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = r"""
ALTER TABLE gateway.changes ADD COLUMN old_row jsonb;
COMMENT ON COLUMN gateway.changes.old_row IS
    'For an update: the row before it (to tell subscribers a row left their filter); '
    'NULL otherwise.';
ALTER TABLE gateway.changes DROP CONSTRAINT changes_op_check;
ALTER TABLE gateway.changes ADD CONSTRAINT changes_op_check
    CHECK (op IN ('insert', 'update', 'delete', 'truncate')) NOT VALID;
"""

# every table captured today gets the TRUNCATE trigger too (same project id argument)
TRUNCATE_TRIGGERS = r"""
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS rel,
               split_part(encode(tg.tgargs, 'escape'), '\000', 1)::uuid AS project
          FROM pg_trigger tg
         WHERE tg.tgname = 'gateway_realtime_capture' AND NOT tg.tgisinternal
           AND tg.tgfoid = 'gateway.capture_change()'::regprocedure
    LOOP
        EXECUTE format(
            'CREATE TRIGGER gateway_realtime_truncate AFTER TRUNCATE ON %s '
            'FOR EACH STATEMENT EXECUTE FUNCTION gateway.capture_change(%L)',
            t.rel, t.project);
    END LOOP;
END
$do$;
"""

DROP_TRUNCATE_TRIGGERS = r"""
DO $do$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT tg.tgrelid::regclass AS rel FROM pg_trigger tg
         WHERE tg.tgname = 'gateway_realtime_truncate' AND NOT tg.tgisinternal
    LOOP
        EXECUTE format('DROP TRIGGER gateway_realtime_truncate ON %s', t.rel);
    END LOOP;
END
$do$;
DELETE FROM gateway.changes WHERE op = 'truncate';
"""

DROP_COLUMNS = r"""
ALTER TABLE gateway.changes DROP CONSTRAINT changes_op_check;
ALTER TABLE gateway.changes ADD CONSTRAINT changes_op_check
    CHECK (op IN ('insert', 'update', 'delete'));
ALTER TABLE gateway.changes DROP COLUMN old_row;
"""


def upgrade() -> None:
    op.execute(COLUMNS)
    op.execute(frozen(__file__, "0007/capture_change"))
    op.execute(TRUNCATE_TRIGGERS)


def downgrade() -> None:
    op.execute(DROP_TRUNCATE_TRIGGERS)
    op.execute(frozen(__file__, "0005/capture_change"))
    op.execute(DROP_COLUMNS)
