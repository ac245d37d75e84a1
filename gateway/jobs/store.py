"""The jobs queue's SQL: every statement the API, the workers and retention run on jobs
(enqueue, read, list, cancel, retry, claim, renew, finish, delete the expired).

Schedules and the cron tick that fires them live in ``gateway/jobs/schedules.py``.
Connections come from the instance's pool (autocommit); each function is one round trip
unless it says otherwise. Identifiers are constants of this module; values are always
parameters.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway.jobs import rules
from gateway.jobs.rules import EnqueueRequest, JobsError, ListQuery, invalid

QUOTA_SQLSTATE = "P0J01"
TIMEOUT_BOUND_SQLSTATE = "P0J02"  # timeoutMs above the plan's job_timeout_ms_max
RETENTION_BATCH = 2000
RETENTION_MAX_BATCHES = 20
ERROR_MAX = 2000

JOB_COLUMNS = """
    j.id, j.name, j.payload,
    CASE WHEN j.status = 'pending' AND j.run_at > now() THEN 'delayed' ELSE j.status END
        AS status,
    j.created_at, j.run_at, j.started_at, j.finished_at, j.attempts_made, j.max_attempts,
    j.result, j.error
"""


def job_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "payload": row["payload"],
        "status": row["status"],
        "createdAt": rules.iso(row["created_at"]),
        "runAt": rules.iso(row["run_at"]),
        "startedAt": rules.iso(row["started_at"]),
        "processedAt": rules.iso(row["started_at"]),
        "finishedAt": rules.iso(row["finished_at"]),
        "attemptsMade": row["attempts_made"],
        "maxAttempts": row["max_attempts"],
        "result": rules.decode_result(row["result"]),
        "error": row["error"],
        "failedReason": row["error"] if row["status"] == "failed" else None,
    }


def quota_json(used: int | None, limit: int | None) -> dict[str, Any]:
    used = int(used or 0)
    if limit is None:
        return {"used": used, "limit": None, "remaining": None, "unlimited": True}
    return {
        "used": used,
        "limit": int(limit),
        "remaining": max(0, int(limit) - used),
        "unlimited": False,
    }


# --- the API ------------------------------------------------------------------------------


async def enqueue(
    conn: AsyncConnection[Any],
    project_id: str,
    req: EnqueueRequest,
    *,
    schedule_id: str | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(outcome, job, quota)``; outcome ``created`` or ``existing``. Over the monthly
    limit → ``JobsError`` 429 ``QUOTA_EXCEEDED`` and nothing written."""
    try:
        cur = await conn.cursor(row_factory=dict_row).execute(
            """
            SELECT * FROM gateway.enqueue_job(
                %s, %s, %s,
                coalesce(%s::timestamptz, now() + make_interval(secs => %s)),
                %s, %s, %s, %s, %s)
            """,
            (
                project_id,
                req.name,
                Jsonb(req.payload),
                req.run_at,
                req.delay_ms / 1000.0,
                req.timeout_ms,
                req.max_attempts,
                req.concurrency_key,
                req.idempotency_key,
                schedule_id,
            ),
        )
        row = await cur.fetchone()
    except psycopg.Error as exc:
        if exc.sqlstate == TIMEOUT_BOUND_SQLSTATE:
            raise invalid(
                "VALIDATION_ERROR",
                f"timeoutMs must be at most {int(exc.diag.message_detail or 0)} on this "
                "project's plan",
            ) from None
        if exc.sqlstate != QUOTA_SQLSTATE:
            raise
        limit = int(exc.diag.message_detail or 0)
        raise JobsError(
            "QUOTA_EXCEEDED",
            f"monthly job run quota exceeded ({limit} runs this month)",
            status=429,
            details={"quota": quota_json(limit, limit)},
        ) from None
    assert row is not None
    limit = await _limit(conn, project_id) if row["outcome"] == "existing" else row["lim"]
    quota = quota_json(row["used"], limit)
    if row["outcome"] == "existing":
        job = await get_job(conn, project_id, str(row["job_id"]))
        if job is None:  # the idempotency key's job was deleted: answer what was asked
            raise invalid("NOT_FOUND", "the idempotency key's job no longer exists", 404)
        return "existing", job, quota
    job = {
        "id": str(row["job_id"]),
        "name": req.name,
        "payload": req.payload,
        "status": "delayed" if row["delayed"] else "pending",
        "createdAt": rules.iso(row["created"]),
        "runAt": rules.iso(row["due_at"]),
        "startedAt": None,
        "processedAt": None,
        "finishedAt": None,
        "attemptsMade": 0,
        "maxAttempts": req.max_attempts,
        "result": None,
        "error": None,
        "failedReason": None,
    }
    return "created", job, quota


async def _limit(conn: AsyncConnection[Any], project_id: str) -> int | None:
    cur = await conn.execute(
        """
        SELECT job_runs_monthly FROM gateway.project_limits WHERE project_id = %s
        """,
        (project_id,),
    )
    row = await cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


async def get_job(
    conn: AsyncConnection[Any], project_id: str, job_id: str
) -> dict[str, Any] | None:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {JOB_COLUMNS} FROM gateway.jobs j WHERE j.project_id = %s AND j.id = %s",
        (project_id, job_id),
    )
    row = await cur.fetchone()
    return None if row is None else job_json(row)


async def list_jobs(
    conn: AsyncConnection[Any], project_id: str, q: ListQuery
) -> tuple[list[dict[str, Any]], int]:
    where = [sql.SQL("j.project_id = %(project)s")]
    params: dict[str, Any] = {"project": project_id, "limit": q.limit, "offset": q.offset}
    if q.name is not None:
        where.append(sql.SQL("j.name = %(name)s"))
        params["name"] = q.name
    if q.status == "delayed":
        where.append(sql.SQL("j.status = 'pending' AND j.run_at > now()"))
    elif q.status == "pending":
        where.append(sql.SQL("j.status = 'pending' AND j.run_at <= now()"))
    elif q.status is not None:
        where.append(sql.SQL("j.status = %(status)s"))
        params["status"] = q.status
    direction = sql.SQL("DESC") if q.descending else sql.SQL("ASC")
    query = sql.SQL(
        "SELECT {cols}, count(*) OVER () AS total FROM gateway.jobs j WHERE {where} "
        "ORDER BY {order} {dir} NULLS LAST, j.id {dir} LIMIT %(limit)s OFFSET %(offset)s"
    ).format(
        cols=sql.SQL(JOB_COLUMNS),
        where=sql.SQL(" AND ").join(where),
        order=sql.Identifier("j", q.order_by),
        dir=direction,
    )
    cur = await conn.cursor(row_factory=dict_row).execute(query, params)
    rows = await cur.fetchall()
    if rows:
        return [job_json(r) for r in rows], int(rows[0]["total"])
    if q.offset == 0:
        return [], 0
    count_query = sql.SQL("SELECT count(*) FROM gateway.jobs j WHERE {where}").format(
        where=sql.SQL(" AND ").join(where)
    )
    cur2 = await conn.execute(count_query, params)
    total = await cur2.fetchone()
    return [], int(total[0]) if total else 0


async def cancel_job(conn: AsyncConnection[Any], project_id: str, job_id: str) -> dict[str, Any]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"""
        WITH c AS (
            UPDATE gateway.jobs SET status = 'cancelled', finished_at = now()
             WHERE project_id = %s AND id = %s AND status = 'pending'
            RETURNING *
        )
        SELECT {JOB_COLUMNS} FROM c j
        """,
        (project_id, job_id),
    )
    row = await cur.fetchone()
    if row is not None:
        return job_json(row)
    current = await get_job(conn, project_id, job_id)
    if current is None:
        raise invalid("NOT_FOUND", "no such job", 404)
    raise invalid(
        "VALIDATION_ERROR",
        f"only pending or delayed jobs can be cancelled (this one is {current['status']})",
    )


async def retry_job(conn: AsyncConnection[Any], project_id: str, job_id: str) -> dict[str, Any]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"""
        WITH r AS (
            UPDATE gateway.jobs
               SET status = 'pending', run_at = now(), attempts_made = 0, error = NULL,
                   result = NULL, finished_at = NULL, started_at = NULL
             WHERE project_id = %s AND id = %s AND status = 'failed'
            RETURNING *
        ), n AS (
            SELECT pg_notify('gateway_jobs', project_id::text) FROM r
        )
        SELECT {JOB_COLUMNS} FROM r j, (SELECT count(*) FROM n) AS notified
        """,
        (project_id, job_id),
    )
    row = await cur.fetchone()
    if row is not None:
        return job_json(row)
    current = await get_job(conn, project_id, job_id)
    if current is None:
        raise invalid("NOT_FOUND", "no such job", 404)
    raise invalid(
        "VALIDATION_ERROR", f"only failed jobs can be retried (this one is {current['status']})"
    )


# --- the workers --------------------------------------------------------------------------


async def claim(
    conn: AsyncConnection[Any],
    worker: str,
    limit: int,
    per_project: int,
    lease_s: float,
    running: dict[str, int],
) -> list[dict[str, Any]]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        "SELECT * FROM gateway.claim_jobs(%s, %s, %s, %s, %s::jsonb)",
        (worker, limit, per_project, lease_s, orjson.dumps(running).decode()),
    )
    return await cur.fetchall()


async def renew(conn: AsyncConnection[Any], worker: str, job_ids: list[Any], lease_s: float) -> int:
    if not job_ids:
        return 0
    cur = await conn.execute(
        """
        UPDATE gateway.jobs SET lease_until = now() + make_interval(secs => %s)
         WHERE id = ANY(%s) AND status = 'active' AND locked_by = %s
        """,
        (lease_s, job_ids, worker),
    )
    return cur.rowcount


FINISH_MANY_SQL = """
WITH input AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(attempts)s::integer[], %(statuses)s::text[],
                         %(finals)s::boolean[], %(backoffs)s::double precision[],
                         %(results)s::text[], %(errors)s::text[])
        AS t (id, attempt, status, final, backoff, result, error)
), done AS (
    UPDATE gateway.jobs j
       SET status = i.status, finished_at = CASE WHEN i.final THEN now() END,
           run_at = CASE WHEN i.final THEN j.run_at
                         ELSE now() + make_interval(secs => i.backoff) END,
           result = i.result, error = i.error, lease_until = NULL, locked_by = NULL
      FROM input i
     WHERE j.id = i.id AND j.status = 'active' AND j.locked_by = %(worker)s
       AND j.attempts_made = i.attempt
    RETURNING j.id, j.project_id, j.concurrency_key, i.status
), freed AS (
    DELETE FROM gateway.job_keys k USING done
     WHERE k.project_id = done.project_id AND k.key = done.concurrency_key
       AND k.job_id = done.id
)
SELECT id, status FROM done
"""


def outcome_row(
    job: dict[str, Any],
    *,
    ok: bool,
    result: str | None,
    error: str | None,
    backoff_s: float,
) -> tuple[Any, int, str, bool, float, str | None, str | None]:
    """One attempt's outcome for ``finish_many``: completed, pending again (a retry after
    the backoff), or failed (that was the last attempt)."""
    if ok:
        status, final = "completed", True
    elif job["attempts_made"] >= job["max_attempts"]:
        status, final = "failed", True
    else:
        status, final = "pending", False
    return (
        job["id"],
        job["attempts_made"],
        status,
        final,
        backoff_s,
        result,
        None if error is None else error[:ERROR_MAX],
    )


async def finish_many(
    conn: AsyncConnection[Any], worker: str, rows: list[tuple[Any, ...]]
) -> dict[Any, str]:
    """Record many attempts' outcomes in ONE statement, fenced by (worker, attempt): a
    worker that lost a lease can't record over the attempt that replaced it. Returns job
    id → ``completed`` | ``retried`` | ``failed`` for the rows that were still ours."""
    if not rows:
        return {}
    columns = list(zip(*rows, strict=True))
    cur = await conn.execute(
        FINISH_MANY_SQL,
        {
            "ids": list(columns[0]),
            "attempts": list(columns[1]),
            "statuses": list(columns[2]),
            "finals": list(columns[3]),
            "backoffs": list(columns[4]),
            "results": list(columns[5]),
            "errors": list(columns[6]),
            "worker": worker,
        },
    )
    return {row[0]: ("retried" if row[1] == "pending" else row[1]) for row in await cur.fetchall()}


async def endpoints(
    conn: AsyncConnection[Any], project_ids: list[Any]
) -> dict[str, tuple[str, str, int]]:
    """Per project: ``(url, signing secret, the plan's job_timeout_ms_max)``. The bound
    also caps jobs stored before it existed (or before the plan changed)."""
    cur = await conn.execute(
        """
        SELECT jp.project_id, jp.endpoint_url, jp.signing_secret, l.job_timeout_ms_max
          FROM gateway.job_projects jp
          LEFT JOIN gateway.project_limits l ON l.project_id = jp.project_id
         WHERE jp.project_id = ANY(%s) AND jp.endpoint_url IS NOT NULL
        """,
        (project_ids,),
    )
    return {
        str(r[0]): (r[1], r[2], int(r[3] if r[3] is not None else rules.TIMEOUT_MAX_MS))
        for r in await cur.fetchall()
    }


# --- retention ----------------------------------------------------------------------------


async def delete_expired(
    conn: AsyncConnection[Any], retention_days: float, *, budget_s: float = 2.0
) -> int:
    """Finished jobs (completed, failed, cancelled) older than the retention, and expired
    idempotency keys and fire records, in bounded batches (each commits on its own)."""
    deleted = 0
    started = time.monotonic()
    seconds = float(retention_days) * 86400.0
    for _ in range(RETENTION_MAX_BATCHES):
        cur = await conn.execute(
            """
            DELETE FROM gateway.jobs WHERE id IN (
                SELECT id FROM gateway.jobs
                 WHERE finished_at < now() - make_interval(secs => %s)
                   AND status IN ('completed', 'failed', 'cancelled')
                 LIMIT %s)
            """,
            (seconds, RETENTION_BATCH),
        )
        deleted += cur.rowcount
        if cur.rowcount < RETENTION_BATCH or time.monotonic() - started > budget_s:
            break
    await conn.execute(
        """
        DELETE FROM gateway.job_idempotency WHERE (project_id, key) IN (
            SELECT project_id, key FROM gateway.job_idempotency
             WHERE expires_at < now() LIMIT %s)
        """,
        (RETENTION_BATCH,),
    )
    await conn.execute(
        """
        DELETE FROM gateway.job_schedule_fires WHERE (schedule_id, fire_time) IN (
            SELECT schedule_id, fire_time FROM gateway.job_schedule_fires
             WHERE created_at < now() - make_interval(secs => %s) LIMIT %s)
        """,
        (max(seconds, 86400.0), RETENTION_BATCH),
    )
    return deleted


# --- figures ------------------------------------------------------------------------------

DEPTH_SQL = """
SELECT
    (SELECT count(*) FROM gateway.jobs WHERE status = 'pending' AND run_at <= now()) AS pending,
    (SELECT count(*) FROM gateway.jobs WHERE status = 'pending' AND run_at > now()) AS delayed,
    (SELECT count(*) FROM gateway.jobs WHERE status = 'active') AS active,
    (SELECT count(*) FROM gateway.jobs WHERE status = 'completed') AS completed,
    (SELECT count(*) FROM gateway.jobs WHERE status = 'failed') AS failed,
    (SELECT count(*) FROM gateway.jobs WHERE status = 'cancelled') AS cancelled,
    (SELECT coalesce(extract(epoch FROM now() - min(run_at)), 0)
       FROM gateway.jobs WHERE status = 'pending' AND run_at <= now()) AS oldest_pending_s
"""


async def depth(conn: AsyncConnection[Any]) -> dict[str, float]:
    cur = await conn.cursor(row_factory=dict_row).execute(DEPTH_SQL)
    row = await cur.fetchone()
    return {k: float(v) for k, v in (row or {}).items()}
