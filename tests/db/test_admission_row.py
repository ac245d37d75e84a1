"""The admission row is read by name: ``AdmissionRow`` must name the columns of the
``gateway.admission`` composite type in the database's own order (a migration that adds,
drops or reorders one must move the NamedTuple with it)."""

from __future__ import annotations

from typing import Any

from gateway.admission.decision import AdmissionRow


def test_admission_row_names_the_composite_type_in_order(db: Any) -> None:
    columns = [
        r["attname"]
        for r in db.execute(
            "SELECT attname FROM pg_attribute"
            " WHERE attrelid = 'gateway.admission'::regclass AND attnum > 0"
            " AND NOT attisdropped ORDER BY attnum"
        )
    ]
    assert list(AdmissionRow._fields) == columns
