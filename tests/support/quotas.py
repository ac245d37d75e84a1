"""Setting a project's quota inputs directly: usage rows and per-project overrides."""

from __future__ import annotations

from typing import Any

import psycopg

from gateway.control.projects import Project, connect, set_limits


def set_usage(
    db: psycopg.Connection[Any],
    project_id: str,
    *,
    bandwidth: int = 0,
    db_size: int | None = None,
    months_ago: int = 0,
) -> None:
    """Usage as the meters would have stored it (``months_ago``: an older month's row)."""
    db.execute(
        """
        INSERT INTO gateway.quota_usage (project_id, bandwidth_month, bandwidth_bytes,
                                         db_size_bytes, db_size_sampled_at)
        VALUES (%s, (date_trunc('month', now() AT TIME ZONE 'UTC')
                     - make_interval(months => %s))::date, %s, %s, now())
        ON CONFLICT (project_id) DO UPDATE
           SET bandwidth_month = excluded.bandwidth_month,
               bandwidth_bytes = excluded.bandwidth_bytes,
               db_size_bytes = excluded.db_size_bytes
        """,
        [project_id, months_ago, bandwidth, db_size],
    )


def override(pg_url: str, project_id: str, **values: int | None) -> Project:
    """Per-project limits over the plan's (``None`` clears one), as the CLI sets them."""
    with connect(pg_url) as conn:
        return set_limits(conn, project_id, overrides=values)
