"""Job runs this month: the ONE place `gateway project usage` reads them from.

The monthly job-run counter belongs to the jobs capability (branch ``jobs``, being built
at the same time). Until it lands this reader answers None ("unknown"), and the usage
report says ``"source": "unavailable"``. When it lands, replace the body of
``job_runs_this_month`` with a read of that counter for the project and UTC month (one
indexed lookup on the CLI's connection) and set ``SOURCE`` to the table it reads. The
limit itself already exists: ``gateway.plans.job_runs_monthly`` and the project override
``job_runs_limit_monthly``, resolved by the view ``gateway.project_limits``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

SOURCE = "jobs"


def job_runs_this_month(
    conn: psycopg.Connection[Any], project_id: str, month: dt.date
) -> int | None:
    """Job runs of the project in the UTC month starting ``month``; None = not known yet."""
    del conn, project_id, month  # the jobs counter doesn't exist on this branch
    return None
