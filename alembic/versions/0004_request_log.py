"""Request log: one row per keyed request, written in batches with COPY.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26

A plain (unpartitioned) table with retention by batched DELETE, not daily partitions:

- COPY into a partitioned table fails for the whole batch when the day's partition does
  not exist yet, so partitioning needs a job that creates partitions ahead of time on
  every deployment and a recovery path when it didn't run; a plain table can always take
  rows.
- The maintenance leader deletes expired rows in bounded statements (5,000 rows each,
  found through the ``created_at`` index), so no statement holds locks or produces WAL
  without bound and autovacuum reclaims the space gradually.
- At this log's volume (one row per API request, 30 days) the DELETE cost is modest; if
  it ever dominates, converting to range partitions on ``created_at`` is a contained
  change (the writer and ``gateway stats`` only use ``created_at`` ranges).

No foreign keys: a deleted project must not cascade a huge DELETE, and COPY should not
pay for FK checks. ``created_at`` is the request's arrival time on the instance (rows
reach the table up to a flush interval later).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE gateway.request_log (
            id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now(),
            project_id uuid,
            api_key_id uuid,
            instance_id text NOT NULL,
            request_id text,
            method text NOT NULL,
            path text NOT NULL,
            table_name text,
            status_code smallint NOT NULL,
            error_code text,
            duration_ms real NOT NULL,
            response_size_bytes integer,
            row_count integer,
            client_ip inet,
            user_agent text
        )
        """
    )
    op.execute("CREATE INDEX request_log_created_at_idx ON gateway.request_log (created_at)")
    op.execute(
        "CREATE INDEX request_log_project_created_at_idx "
        "ON gateway.request_log (project_id, created_at)"
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS gateway.request_log")
