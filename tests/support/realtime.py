"""The realtime tests' pieces without HTTP: a hub on its own pool, a reader of one
subscription, writes from other connections, and what the capture trigger recorded.

Each test runs its own event loop (``run``) with its own pool; writes go through
separate psycopg connections, exactly like tenant traffic or plain SQL would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import sql

from gateway.db.pool import create_pool
from gateway.realtime.events import Event
from gateway.realtime.hub import RealtimeHub
from gateway.realtime.subscription import Subscription
from gateway.settings import Settings
from tests.support.polling import wait_until_async

TIMEOUT_S = 30.0


def settings_for(pg_url: str, **changes: Any) -> Settings:
    base = Settings(database_url=pg_url, instance_id="rt-test", realtime_poll_max_ms=50)
    return base.with_changes(**changes)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro_fn())


class Hub:
    """A hub with its own pool, closed at the end of the block."""

    def __init__(self, pg_url: str, **kwargs: Any) -> None:
        hub_kwargs = {
            k: kwargs.pop(k)
            for k in ("page_size", "catchup_page_size", "page_max_bytes")
            if k in kwargs
        }
        self.settings = settings_for(pg_url, **kwargs)
        self.pool = create_pool(self.settings, max_size=4)
        self.hub = RealtimeHub(self.settings, self.pool, **hub_kwargs)

    async def __aenter__(self) -> RealtimeHub:
        await self.pool.open(wait=True, timeout=30)
        self.hub.start()
        return self.hub

    async def __aexit__(self, *exc: object) -> None:
        await self.hub.stop()
        await self.pool.close()


class Reader:
    """Consumes a subscription in a task, collecting events."""

    def __init__(self, sub: Subscription, heartbeat_s: float = 15.0) -> None:
        self.sub = sub
        self.events: list[Event] = []
        self.done = asyncio.Event()
        self.task = asyncio.create_task(self._run(heartbeat_s))

    async def _run(self, heartbeat_s: float) -> None:
        try:
            async for event in self.sub.events(heartbeat_s):
                if event.kind != "ping":
                    self.events.append(event)
        finally:
            self.done.set()

    @property
    def changes(self) -> list[Event]:
        return [e for e in self.events if e.kind in ("insert", "update", "delete")]

    async def wait_for(self, n: int, timeout: float = TIMEOUT_S) -> list[Event]:
        await wait_until_async(
            lambda: len(self.changes) >= n or self.done.is_set(),
            timeout=timeout,
            message=lambda: f"got {len(self.changes)} of {n} changes: {self.events}",
        )
        if len(self.changes) < n:
            raise AssertionError(f"stream ended after {len(self.changes)}: {self.events}")
        return self.changes

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


async def awrite(pg_url: str, statement: sql.Composable, params: Any = None) -> None:
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        await conn.execute(statement, params)


def changes(db: psycopg.Connection[Any], project_id: str) -> list[dict[str, Any]]:
    """What the capture trigger recorded for the project, in commit order (the commit
    number ``seq`` of migration 0017, with the writing transaction's ``xid``)."""
    return db.execute(
        """
        SELECT k.seq, c.xid::text::bigint AS xid, c.id, c.table_name, c.op, c.pk, c.row
          FROM gateway.changes c JOIN gateway.commits k ON k.xid = c.xid
         WHERE c.project_id = %s ORDER BY k.seq, c.id
        """,
        [project_id],
    ).fetchall()


def trigger_count(db: psycopg.Connection[Any], schema: str, table: str) -> int:
    """How many capture triggers the table has: 1 when realtime is on, else 0."""
    row = db.execute(
        """
        SELECT count(*) AS n FROM pg_trigger t
          JOIN pg_class c ON c.oid = t.tgrelid
          JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = %s AND t.tgname = 'gateway_realtime_capture'
        """,
        [schema, table],
    ).fetchone()
    assert row is not None
    return int(row["n"])
