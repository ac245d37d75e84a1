"""The schedules' SQL: a project's cron schedules (the API) and the cron tick that turns
their due fire times into jobs.

Apart from the queue (``gateway/jobs/store.py``) because a schedule is a different
thing with its own table and life: it never runs, it enqueues. Its jobs go through the
queue's own ``enqueue``, so a fired job obeys the monthly quota and the idempotency rules
like any other. Connections come from the instance's pool (autocommit); identifiers are
constants of this module; values are always parameters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from gateway.jobs import rules
from gateway.jobs.rules import EnqueueRequest, JobsError, ScheduleInput, invalid
from gateway.jobs.store import enqueue

SCHEDULE_COLUMNS = """
    s.id, s.name, s.cron, s.payload, s.timezone, s.active, s.description,
    s.next_run_at, s.last_run_at, s.created_at, s.updated_at
"""


def schedule_json(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "name": row["name"],
        "cron": row["cron"],
        "payload": row["payload"],
        "timezone": row["timezone"],
        "active": row["active"],
        "description": row["description"],
        "nextRunAt": rules.iso(row["next_run_at"]) if row["active"] else None,
        "lastRunAt": rules.iso(row["last_run_at"]),
        "createdAt": rules.iso(row["created_at"]),
        "updatedAt": rules.iso(row["updated_at"]),
    }


# --- the API ----------------------------------------------------------------------------


def _first_fire(cron: str, timezone: str) -> dt.datetime:
    return rules.next_fire(cron, timezone, dt.datetime.now(dt.UTC))


def _name_taken(name: str | None) -> JobsError:
    """409: a schedule's name is unique in its project (on create and on rename)."""
    return invalid("VALIDATION_ERROR", f"a schedule named {name!r} already exists", 409)


async def create_schedule(
    conn: AsyncConnection[Any], project_id: str, s: ScheduleInput
) -> dict[str, Any]:
    assert s.name is not None and s.cron is not None and s.timezone is not None
    try:
        cur = await conn.cursor(row_factory=dict_row).execute(
            f"""
            INSERT INTO gateway.job_schedules AS s
                (project_id, name, cron, payload, timezone, active, description, next_run_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
            RETURNING {SCHEDULE_COLUMNS}
            """,
            (
                project_id,
                s.name,
                s.cron,
                Jsonb(s.payload),
                s.timezone,
                True if s.active is None else s.active,
                s.description,
                _first_fire(s.cron, s.timezone),
            ),
        )
    except psycopg.errors.UniqueViolation:
        raise _name_taken(s.name) from None
    row = await cur.fetchone()
    assert row is not None
    return schedule_json(row)


async def list_schedules(conn: AsyncConnection[Any], project_id: str) -> list[dict[str, Any]]:
    cur = await conn.cursor(row_factory=dict_row).execute(
        f"SELECT {SCHEDULE_COLUMNS} FROM gateway.job_schedules s WHERE s.project_id = %s "
        "ORDER BY s.created_at, s.id",
        (project_id,),
    )
    return [schedule_json(r) for r in await cur.fetchall()]


async def update_schedule(
    conn: AsyncConnection[Any], project_id: str, schedule_id: str, s: ScheduleInput
) -> dict[str, Any]:
    async with conn.transaction():
        cur = await conn.cursor(row_factory=dict_row).execute(
            "SELECT * FROM gateway.job_schedules WHERE project_id = %s AND id = %s FOR UPDATE",
            (project_id, schedule_id),
        )
        current = await cur.fetchone()
        if current is None:
            raise invalid("NOT_FOUND", "no such schedule", 404)
        cron = s.cron or current["cron"]
        timezone = s.timezone or current["timezone"]
        active = current["active"] if s.active is None else s.active
        timing_changed = (
            cron != current["cron"]
            or timezone != current["timezone"]
            or (active and not current["active"])
        )
        next_run = _first_fire(cron, timezone) if timing_changed else current["next_run_at"]
        try:
            cur = await conn.cursor(row_factory=dict_row).execute(
                f"""
                UPDATE gateway.job_schedules s
                   SET name = %s, cron = %s, timezone = %s, active = %s,
                       payload = %s, description = %s, next_run_at = %s, updated_at = now()
                 WHERE s.id = %s
                RETURNING {SCHEDULE_COLUMNS}
                """,
                (
                    s.name or current["name"],
                    cron,
                    timezone,
                    active,
                    Jsonb(s.payload if s.has_payload else current["payload"]),
                    s.description if s.has_description else current["description"],
                    next_run,
                    schedule_id,
                ),
            )
        except psycopg.errors.UniqueViolation:
            raise _name_taken(s.name) from None
        row = await cur.fetchone()
    assert row is not None
    return schedule_json(row)


async def delete_schedule(conn: AsyncConnection[Any], project_id: str, schedule_id: str) -> None:
    cur = await conn.execute(
        "DELETE FROM gateway.job_schedules WHERE project_id = %s AND id = %s",
        (project_id, schedule_id),
    )
    if cur.rowcount == 0:
        raise invalid("NOT_FOUND", "no such schedule", 404)


# --- cron ---------------------------------------------------------------------------------

CRON_LOCK_KEY = 0x67772D6A6F6273  # "gw-jobs": one cron tick at a time, cluster-wide
CRON_BATCH = 200


async def fire_due_schedules(conn: AsyncConnection[Any], grace_s: float) -> int:
    """Enqueue every due schedule's fire times; returns the number of jobs enqueued.

    Runs inside ONE transaction that holds ``pg_try_advisory_xact_lock(CRON_LOCK_KEY)``
    (the caller's), so normally one instance fires; even if two did, the unique
    (schedule, fire time) row lets only one of them enqueue a given fire.
    """
    cur = await conn.cursor(row_factory=dict_row).execute(
        """
        SELECT s.id, s.project_id, s.name, s.cron, s.payload, s.timezone, s.next_run_at,
               now() AS now
          FROM gateway.job_schedules s
         WHERE s.active AND s.next_run_at <= now()
         ORDER BY s.next_run_at
         LIMIT %s
           FOR UPDATE SKIP LOCKED
        """,
        (CRON_BATCH,),
    )
    due = await cur.fetchall()
    fired = 0
    for s in due:
        now: dt.datetime = s["now"]
        after = s["next_run_at"] - dt.timedelta(microseconds=1)
        try:
            times = rules.fire_times_between(s["cron"], s["timezone"], after, now)
            to_run = rules.fires_to_run(times, now, grace_s)
            next_run = rules.next_fire(s["cron"], s["timezone"], now)
        except Exception:
            # an expression that no longer parses (edited by hand): park the schedule
            await conn.execute(
                "UPDATE gateway.job_schedules SET active = false WHERE id = %s", (s["id"],)
            )
            continue
        for fire_time in to_run:
            cur2 = await conn.execute(
                """
                INSERT INTO gateway.job_schedule_fires (schedule_id, fire_time)
                VALUES (%s, %s) ON CONFLICT DO NOTHING
                """,
                (s["id"], fire_time),
            )
            if cur2.rowcount != 1:
                continue  # fired already (by an earlier leader)
            req = EnqueueRequest(
                name=s["name"],
                payload=s["payload"],
                run_at=None,
                delay_ms=0,
                timeout_ms=None,  # the default, capped at the plan's bound
                max_attempts=rules.ATTEMPTS_DEFAULT,
                concurrency_key=None,
                idempotency_key=None,
            )
            try:
                async with conn.transaction():
                    _, job, _ = await enqueue(
                        conn, str(s["project_id"]), req, schedule_id=str(s["id"])
                    )
            except JobsError:
                continue  # over quota: this fire is recorded and skipped
            await conn.execute(
                "UPDATE gateway.job_schedule_fires SET job_id = %s "
                "WHERE schedule_id = %s AND fire_time = %s",
                (job["id"], s["id"], fire_time),
            )
            fired += 1
        await conn.execute(
            """
            UPDATE gateway.job_schedules
               SET next_run_at = %s, last_run_at = coalesce(%s, last_run_at)
             WHERE id = %s
            """,
            (next_run, to_run[-1] if to_run else None, s["id"]),
        )
    return fired
