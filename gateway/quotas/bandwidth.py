"""Bandwidth metering: response body bytes per project, added up in memory and written to
``gateway.quota_usage`` in ONE statement per flush interval per instance.

The request path calls ``add(project_id, n)`` (O(1), no await, never raises) from the
observation middleware, which sits OUTSIDE the gzip middleware: the bytes counted are the
bytes sent, after compression. A background task flushes every
``GATEWAY_BANDWIDTH_FLUSH_MS`` (default 1000): one ``INSERT … ON CONFLICT DO UPDATE`` for
all projects that sent something, adding to the row's UTC month (the database's clock; a
new month starts from zero). No round trip per request, ever.

The price is the overshoot: admission compares the month's stored bytes with the limit,
so while an instance's bytes wait in memory the other instances (and itself) don't see
them. A project can therefore get past its limit by at most what all instances answered
for it within one flush interval (plus the flush's own duration, plus answers to
requests that were already admitted when the limit was reached):

    overshoot <= sum over instances of (flush interval + flush time) x that instance's
                 byte rate for the project, + one answer per request in flight

docs/quotas.md has the derivation; tests/test_quotas_cluster.py measures it.

When the database can't take a flush, the bytes are merged back and retried with the
next flush (the map is bounded by the number of projects); ``stop()`` flushes, so a
graceful shutdown loses nothing. A crash loses at most one interval's bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from gateway.settings import Settings

logger = logging.getLogger("gateway.quotas")

# Sorted by project id so concurrent flushes of several instances lock rows in the same
# order (no deadlocks); projects deleted meanwhile — or living in another cell — are
# skipped by the join, and the ids returned are the ones this database took.
FLUSH_SQL = """
INSERT INTO gateway.quota_usage AS u (project_id, bandwidth_month, bandwidth_bytes)
SELECT b.project_id, date_trunc('month', now() AT TIME ZONE 'UTC')::date, b.bytes
  FROM unnest(%s::uuid[], %s::bigint[]) AS b(project_id, bytes)
  JOIN gateway.projects p ON p.id = b.project_id
 ORDER BY b.project_id
ON CONFLICT (project_id) DO UPDATE
   SET bandwidth_bytes = CASE WHEN u.bandwidth_month = excluded.bandwidth_month
                              THEN u.bandwidth_bytes + excluded.bandwidth_bytes
                              ELSE excluded.bandwidth_bytes END,
       bandwidth_month = excluded.bandwidth_month
RETURNING u.project_id::text
"""
STOP_TIMEOUT_S = 5.0
WARN_EVERY_S = 10.0


class BandwidthMeter:
    """This instance's unflushed bytes per project, and the task that writes them."""

    def __init__(self, settings: Settings, pool: AsyncConnectionPool | None = None) -> None:
        self.pool = pool
        # the pools of the instance's other cells (gateway/cells/runtime.py): a project's
        # bytes go to the one cell whose database holds it
        self.cell_pools: Callable[[], list[AsyncConnectionPool]] = list
        self.flush_interval_s = settings.bandwidth_flush_ms / 1000.0
        self._pending: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._lock = asyncio.Lock()
        # counters (metrics and tests)
        self.flushes = 0
        self.flush_errors = 0
        self.bytes_flushed = 0
        self.last_error: str | None = None
        self._last_warning = 0.0

    # --- the request path ---------------------------------------------------------------

    def add(self, project_id: str, nbytes: int) -> None:
        """Count ``nbytes`` sent for the project: O(1), never awaits, never raises."""
        if nbytes > 0 and project_id:
            self._pending[project_id] = self._pending.get(project_id, 0) + nbytes

    def pending(self, project_id: str | None = None) -> int:
        if project_id is not None:
            return self._pending.get(project_id, 0)
        return sum(self._pending.values())

    def stats(self) -> dict[str, Any]:
        return {
            "pending_projects": len(self._pending),
            "pending_bytes": self.pending(),
            "flushes": self.flushes,
            "flush_errors": self.flush_errors,
            "bytes_flushed": self.bytes_flushed,
            "last_error": self.last_error,
        }

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._stop.clear()
            self._task = asyncio.create_task(self._run(), name="bandwidth-meter")

    async def stop(self) -> None:
        """Stop the task and write what is left (bounded: a database that stays down
        costs at most ``STOP_TIMEOUT_S``)."""
        self._stop.set()
        if self._task is not None:
            # let a flush in flight finish: cancelled mid-statement, it can't know whether
            # the server committed, puts its bytes back, and they would be counted twice
            _done, pending = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT_S)
            if pending:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await self.flush()
        if self._pending:
            logger.error(
                "bandwidth: database unreachable at shutdown, %d bytes not counted",
                self.pending(),
            )

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout=self.flush_interval_s)
            if self._stop.is_set():
                break
            await self.flush()

    # --- the flush ------------------------------------------------------------------------

    async def flush(self) -> bool:
        """Write every pending byte in one statement. False (bytes kept) on failure."""
        async with self._lock:
            if not self._pending:
                return True
            batch, self._pending = self._pending, {}
            remaining = dict(batch)
            try:
                if self.pool is None:
                    raise RuntimeError("the bandwidth meter has no pool yet")
                # home first, then every other cell, each taking its own projects' bytes
                failed: Exception | None = None
                for pool in [self.pool, *self.cell_pools()]:
                    if not remaining:
                        break
                    try:
                        for taken in await self._write(pool, remaining):
                            remaining.pop(taken, None)
                    except Exception as exc:
                        failed = exc
                if failed is not None:
                    raise failed
            except asyncio.CancelledError:
                self._merge_back(remaining)
                raise
            except Exception as exc:
                # the bytes no database took yet (a cell that is down) wait for the next
                self._merge_back(remaining)
                self.flush_errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc).strip()[:200]}"
                now = time.monotonic()
                if now - self._last_warning >= WARN_EVERY_S:
                    self._last_warning = now
                    logger.warning("bandwidth: flush failed, retrying: %s", self.last_error)
                return False
            self.flushes += 1
            self.bytes_flushed += sum(batch.values())
            return True

    @staticmethod
    async def _write(pool: AsyncConnectionPool, batch: dict[str, int]) -> list[str]:
        ids = sorted(batch)
        async with pool.connection() as conn:
            cur = await conn.execute(FLUSH_SQL, (ids, [batch[i] for i in ids]))
            return [row[0] for row in await cur.fetchall()]

    def _merge_back(self, batch: dict[str, int]) -> None:
        for project_id, nbytes in batch.items():
            self._pending[project_id] = self._pending.get(project_id, 0) + nbytes
