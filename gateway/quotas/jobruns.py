"""Job runs this month: the ONE place `gateway project usage` reads them from.

The counter belongs to the jobs capability: ``gateway.job_usage`` (project, UTC month,
used), incremented atomically at enqueue by ``gateway.count_job_run`` against the limit
this package resolves (``gateway.project_limits.job_runs_monthly``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg.rows import tuple_row

SOURCE = "gateway.job_usage"


def job_runs_this_month(
    conn: psycopg.Connection[Any], project_id: str, month: dt.date
) -> int | None:
    """Job runs of the project in the UTC month starting ``month`` (0 when none yet)."""
    cur = conn.cursor(row_factory=tuple_row)
    row = cur.execute(
        "SELECT used FROM gateway.job_usage WHERE project_id = %s AND month = %s",
        (project_id, month),
    ).fetchone()
    return int(row[0]) if row else 0
