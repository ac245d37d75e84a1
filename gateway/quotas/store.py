"""Plans and usage in the database: what ``gateway plan …`` and ``gateway project usage``
do. Synchronous psycopg (the CLI's connection, one transaction per command).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import sql

from gateway.control.errors import ProvisioningError
from gateway.quotas import jobruns
from gateway.quotas.plans import PLAN_FIELDS, PLAN_NAME_RE, UNLIMITED, percent


class QuotaError(ProvisioningError):
    """Input we refuse; one line for the person at the terminal (the CLI prints
    ProvisioningErrors that way)."""


def _plan_json(row: dict[str, Any]) -> dict[str, Any]:
    # -1 is stored; the JSON says null = unlimited, like the effective limits
    plan: dict[str, Any] = {"name": row["name"]}
    for field in PLAN_FIELDS:
        plan[field] = None if row[field] == UNLIMITED else row[field]
    return plan


def list_plans(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """Every plan, cheapest first (by rate limit, then age), with how many projects use it."""
    rows = conn.execute(
        """
        SELECT pl.*, (SELECT count(*) FROM gateway.projects p WHERE p.tier = pl.name)::int
                     AS projects
          FROM gateway.plans pl
         ORDER BY pl.rate_limit_per_minute, pl.created_at, pl.name
        """
    ).fetchall()
    return [{**_plan_json(r), "projects": r["projects"]} for r in rows]


def set_plan(
    conn: psycopg.Connection[Any],
    name: str,
    values: dict[str, int],
    *,
    create: bool = False,
) -> dict[str, Any]:
    """Change a plan's limits (``values``: plan field → number, -1 = unlimited). With
    ``create``, a missing plan is created from the ``free`` plan's values. Every project
    on the plan gets the new limits on its next request, on every instance (the change
    notifies ``*`` on the metadata channel)."""
    unknown = sorted(set(values) - set(PLAN_FIELDS))
    if unknown:
        raise QuotaError(f"unknown plan field {unknown[0]!r}")
    with conn.transaction():
        exists = conn.execute(
            "SELECT 1 FROM gateway.plans WHERE name = %s FOR UPDATE", [name]
        ).fetchone()
        if exists is None:
            if not create:
                names = [r["name"] for r in conn.execute("SELECT name FROM gateway.plans")]
                raise QuotaError(
                    f"no plan {name!r} (plans: {', '.join(sorted(names))}; "
                    "--create makes a new one)"
                )
            if not PLAN_NAME_RE.match(name):
                raise QuotaError(
                    f"plan name {name!r} is not valid (a-z, 0-9, _ and -, at most 32 characters)"
                )
            conn.execute(
                """
                INSERT INTO gateway.plans (name, rate_limit_per_minute, requests_per_day,
                    bandwidth_bytes_monthly, db_size_bytes, job_runs_monthly, realtime_streams,
                    job_timeout_ms_max)
                SELECT %s, rate_limit_per_minute, requests_per_day, bandwidth_bytes_monthly,
                       db_size_bytes, job_runs_monthly, realtime_streams, job_timeout_ms_max
                  FROM gateway.plans WHERE name = 'free'
                """,
                [name],
            )
        if values:
            conn.execute(
                sql.SQL("UPDATE gateway.plans SET {}, updated_at = now() WHERE name = %s").format(
                    sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(f)) for f in values)
                ),
                [*values.values(), name],
            )
        row = conn.execute("SELECT * FROM gateway.plans WHERE name = %s", [name]).fetchone()
    assert row is not None
    return _plan_json(row)


# --- usage ----------------------------------------------------------------------------------

USAGE_SQL = """
SELECT p.id, p.name, p.tier AS plan,
       l.rate_limit_per_minute, l.requests_per_day, l.bandwidth_bytes_monthly,
       l.db_size_bytes AS db_size_limit, l.job_runs_monthly, l.realtime_streams,
       l.job_timeout_ms_max,
       (now() AT TIME ZONE 'UTC')::date AS today,
       date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month,
       CASE WHEN ac.day = (now() AT TIME ZONE 'UTC')::date THEN ac.day_used ELSE 0 END
           AS requests_today,
       CASE WHEN u.bandwidth_month = date_trunc('month', now() AT TIME ZONE 'UTC')::date
            THEN u.bandwidth_bytes ELSE 0 END AS bandwidth_month_bytes,
       u.db_size_bytes, u.db_size_sampled_at
  FROM gateway.projects p
  JOIN gateway.project_limits l ON l.project_id = p.id
  LEFT JOIN gateway.admission_counters ac ON ac.project_id = p.id
  LEFT JOIN gateway.quota_usage u ON u.project_id = p.id
 WHERE p.id = %s
"""


def _item(used: int | None, limit: int | None, **extra: Any) -> dict[str, Any]:
    return {
        "used": used,
        "limit": limit,
        "unlimited": limit is None,
        "percent_used": None if used is None else percent(used, limit),
        **extra,
    }


def usage(conn: psycopg.Connection[Any], project_id: str) -> dict[str, Any]:
    """The numbers a billing page needs: requests today (UTC), bandwidth this UTC month,
    the last database-size sample, job runs this UTC month — each with its limit and
    percentage (``limit`` None = unlimited; ``used`` None = not known).

    Bandwidth is what the instances have flushed (each holds at most one flush interval);
    the database size is the maintenance leader's last sample.
    """
    row = conn.execute(USAGE_SQL, [project_id]).fetchone()
    if row is None:
        raise QuotaError(f"no project {project_id!r}")
    month: dt.date = row["month"]
    job_runs = jobruns.job_runs_this_month(conn, str(row["id"]), month)
    sampled_at: dt.datetime | None = row["db_size_sampled_at"]
    return {
        "project_id": str(row["id"]),
        "project": row["name"],
        "plan": row["plan"],
        "day": row["today"].isoformat(),
        "month": month.isoformat()[:7],
        "requests_today": _item(int(row["requests_today"]), row["requests_per_day"]),
        "bandwidth_month": _item(
            int(row["bandwidth_month_bytes"]), row["bandwidth_bytes_monthly"], unit="bytes"
        ),
        "database_size": _item(
            None if row["db_size_bytes"] is None else int(row["db_size_bytes"]),
            row["db_size_limit"],
            unit="bytes",
            sampled_at=sampled_at.isoformat() if sampled_at else None,
        ),
        "job_runs_month": _item(
            job_runs,
            row["job_runs_monthly"],
            source=jobruns.SOURCE if job_runs is not None else "unavailable",
        ),
        "rate_limit_per_minute": row["rate_limit_per_minute"],
        "realtime_streams": row["realtime_streams"],
        "job_timeout_ms_max": row["job_timeout_ms_max"],
    }
