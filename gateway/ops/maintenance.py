"""The maintenance leader: periodic jobs that exactly one instance runs at a time.

Every ``GATEWAY_MAINTENANCE_INTERVAL_S`` each instance opens ONE transaction on a pool
connection and asks ``pg_try_advisory_xact_lock(LOCK_KEY)``. The instance that gets the
lock runs the due jobs inside that transaction; the others see ``false`` at once and
skip the tick. The lock is released by COMMIT/ROLLBACK, so it works through a
transaction pooler (a session lock would not) and a crashed leader never holds it.
Leadership is therefore per tick, not sticky: whoever asks first while nobody holds the
lock runs that tick's jobs — jobs must be idempotent and bounded (they are).

Other features add jobs with ``register(name, fn, every_s=None)``; ``fn(conn)`` is an
async callable that gets the connection (inside the locked transaction) and returns a
count (rows deleted, …) or None. Each job runs in its own savepoint, so one failing job
rolls back only its own work.

Built-in jobs (see ``install_default_jobs``):
- ``request_log_retention``: delete request-log rows older than
  ``GATEWAY_LOG_RETENTION_DAYS``, ``RETENTION_BATCH`` rows per statement, at most
  ``RETENTION_MAX_BATCHES`` statements or ``RETENTION_BUDGET_S`` seconds per tick;
- ``db_connections``: count the gateway's connections in ``pg_stat_activity`` per
  instance (``application_name`` ``gateway:<instance id>``) for the metrics;
- ``admin_nonce_cleanup``: delete the expired nonces of signed admin requests
  (``gateway/control/nonces.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.control import nonces
from gateway.settings import Settings

logger = logging.getLogger("gateway.maintenance")

# A fixed advisory-lock key, shared by every instance of the gateway ("gw-maint").
LOCK_KEY = 0x67772D6D61696E74
TICK_STATEMENT_TIMEOUT_MS = 30_000

RETENTION_BATCH = 5000
RETENTION_MAX_BATCHES = 20
RETENTION_BUDGET_S = 2.0
ACTIVITY_EVERY_S = 15.0

JobFn = Callable[[AsyncConnection[Any]], Awaitable[int | None]]


@dataclass
class JobStatus:
    name: str
    fn: JobFn
    every_s: float | None = None
    runs: int = 0
    errors: int = 0
    last_run_at: dt.datetime | None = None
    last_count: int | None = None
    last_duration_ms: float | None = None
    last_error: str | None = None
    _last_started: float = field(default=-1e18, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "errors": self.errors,
            "last_run_at": self.last_run_at.isoformat() if self.last_run_at else None,
            "last_count": self.last_count,
            "last_duration_ms": self.last_duration_ms,
            "last_error": self.last_error,
        }


class Maintenance:
    """One instance's maintenance loop; ``is_leader`` is True while it held the lock on
    its last tick."""

    def __init__(
        self,
        settings: Settings,
        pool: AsyncConnectionPool | None,
        *,
        interval_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.interval_s = interval_s if interval_s is not None else settings.maintenance_interval_s
        self.jobs: dict[str, JobStatus] = {}
        self.is_leader = False
        self.ticks = 0
        self.ticks_led = 0
        self.tick_errors = 0
        self.last_tick_at: dt.datetime | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def register(self, name: str, fn: JobFn, *, every_s: float | None = None) -> None:
        """Add a job; ``every_s`` None means every tick. Re-registering replaces it."""
        self.jobs[name] = JobStatus(name=name, fn=fn, every_s=every_s)

    def stats(self) -> dict[str, Any]:
        return {
            "is_leader": self.is_leader,
            "ticks": self.ticks,
            "ticks_led": self.ticks_led,
            "tick_errors": self.tick_errors,
            "jobs": {name: job.as_json() for name, job in self.jobs.items()},
        }

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="maintenance")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self.is_leader = False

    async def _run(self) -> None:
        while not self._stop.is_set():
            await self.tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.interval_s)

    # --- one tick ----------------------------------------------------------------------

    async def tick(self) -> bool:
        """Try to lead this tick and run the due jobs. Returns whether this instance led.
        Never raises (a database outage just means nobody leads)."""
        self.ticks += 1
        self.last_tick_at = dt.datetime.now(dt.UTC)
        try:
            if self.pool is None:
                raise RuntimeError("maintenance has no pool yet")
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute(
                    f"SET LOCAL statement_timeout = {int(TICK_STATEMENT_TIMEOUT_MS)}"
                )
                cur = await conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (LOCK_KEY,))
                row = await cur.fetchone()
                self.is_leader = bool(row and row[0])
                if not self.is_leader:
                    return False
                self.ticks_led += 1
                for job in list(self.jobs.values()):
                    if job.every_s is not None and (
                        time.monotonic() - job._last_started < job.every_s
                    ):
                        continue
                    await self._run_job(conn, job)
            return True
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.is_leader = False
            self.tick_errors += 1
            logger.warning("maintenance tick failed: %s", _first_line(exc))
            return False

    async def _run_job(self, conn: AsyncConnection[Any], job: JobStatus) -> None:
        job._last_started = time.monotonic()
        started = time.perf_counter()
        try:
            async with conn.transaction():  # a savepoint: a failing job undoes only itself
                count = await job.fn(conn)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            job.errors += 1
            job.last_error = _first_line(exc)
            logger.warning("maintenance job %s failed: %s", job.name, job.last_error)
        else:
            job.last_count = count
            job.last_error = None
        job.runs += 1
        job.last_run_at = dt.datetime.now(dt.UTC)
        job.last_duration_ms = round((time.perf_counter() - started) * 1000, 3)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


# --- built-in jobs ------------------------------------------------------------------------


async def delete_expired_request_log(
    conn: AsyncConnection[Any],
    retention_days: float,
    *,
    batch: int = RETENTION_BATCH,
    max_batches: int = RETENTION_MAX_BATCHES,
    budget_s: float = RETENTION_BUDGET_S,
) -> int:
    """Delete rows older than the retention, ``batch`` rows per statement. Returns the
    number deleted this tick (the rest waits for the next tick)."""
    deleted = 0
    started = time.monotonic()
    for _ in range(max_batches):
        cur = await conn.execute(
            """
            DELETE FROM gateway.request_log
            WHERE id IN (
                SELECT id FROM gateway.request_log
                WHERE created_at < now() - make_interval(secs => %s)
                LIMIT %s
            )
            """,
            (float(retention_days) * 86400.0, batch),
        )
        deleted += cur.rowcount
        if cur.rowcount < batch or time.monotonic() - started >= budget_s:
            break
    return deleted


class ConnectionSampler:
    """The last ``pg_stat_activity`` sample: connections per gateway instance."""

    def __init__(self) -> None:
        self.by_instance: dict[str, int] = {}
        self.sampled_at: float | None = None

    async def sample(self, conn: AsyncConnection[Any]) -> int:
        cur = await conn.execute(
            """
            SELECT substr(application_name, 9) AS instance_id, count(*)::int
            FROM pg_stat_activity
            WHERE application_name LIKE 'gateway:%'
            GROUP BY 1
            """
        )
        self.by_instance = {str(row[0]): int(row[1]) for row in await cur.fetchall()}
        self.sampled_at = time.monotonic()
        return sum(self.by_instance.values())

    def current(self, max_age_s: float) -> dict[str, int]:
        """The sample, or nothing when it is older than ``max_age_s`` (this instance
        stopped leading, so another one reports)."""
        if self.sampled_at is None or time.monotonic() - self.sampled_at > max_age_s:
            return {}
        return dict(self.by_instance)


def install_default_jobs(maintenance: Maintenance, sampler: ConnectionSampler) -> None:
    retention_days = maintenance.settings.log_retention_days

    async def retention(conn: AsyncConnection[Any]) -> int:
        # Not in the leader's transaction: a DELETE takes an xid, and every open xid holds
        # realtime delivery back, so each batch commits on its own (autocommit) connection.
        async with maintenance.pool.connection() as own:
            return await delete_expired_request_log(own, retention_days)

    maintenance.register("request_log_retention", retention)
    maintenance.register(
        "db_connections",
        sampler.sample,
        every_s=ACTIVITY_EVERY_S * 0.9,  # a 15 s tick must not skip a sample on jitter
    )
    # the admin API: expired nonces of signed admin requests
    nonces.register_maintenance(maintenance)
