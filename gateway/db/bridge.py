"""Running the synchronous provisioning code on a connection of the instance's pool.

The code in ``gateway/control/`` is written against psycopg's synchronous
``Connection`` because the CLI is synchronous. The admin API must run exactly that code
(one implementation, two faces) but reach the database through the pool like every
other package. ``run_sync(pool, fn, *args)`` checks out a pooled ``AsyncConnection``,
wraps it in ``SyncConnection`` — the small part of the synchronous interface that
provisioning uses: ``execute(...).fetchone()/fetchall()/rowcount``, ``transaction()``,
``cursor().executemany()`` — and runs ``fn`` in a worker thread; every statement is
handed back to the event loop with ``run_coroutine_threadsafe``. Admin calls are rare,
so a thread per call and a hop per statement cost nothing that matters, and the event
loop keeps serving other requests meanwhile.

Each outermost transaction sets ``lock_timeout`` (5 s) and ``statement_timeout`` (60 s)
locally: a CLI user can wait, an HTTP call holding a pooled connection must not.

Rows come back as dicts (``dict_row``), as with ``projects.connect``. Exceptions
(``psycopg.errors.*``) are raised in the worker thread unchanged, so provisioning's own
``except`` clauses work the same under both faces.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from gateway.db.disposable import expire
from gateway.db.pool import acquire

T = TypeVar("T")

LOCK_TIMEOUT_MS = 5_000
STATEMENT_TIMEOUT_MS = 60_000
BOUNDS = (
    f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}; "
    f"SET LOCAL statement_timeout = {STATEMENT_TIMEOUT_MS}"
)


class SyncResult:
    """A finished statement: the rows (already fetched) and the row count."""

    def __init__(self, rows: list[dict[str, Any]], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> dict[str, Any] | None:
        return self._rows.pop(0) if self._rows else None

    def fetchall(self) -> list[dict[str, Any]]:
        rows, self._rows = self._rows, []
        return rows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """``for row in conn.execute(...)`` as on a psycopg cursor (provisioning does it)."""
        return iter(self.fetchall())


class SyncCursor:
    def __init__(self, conn: SyncConnection) -> None:
        self._conn = conn

    def __enter__(self) -> SyncCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def executemany(self, query: Any, params_seq: Iterable[Sequence[Any]]) -> None:
        rows = list(params_seq)

        async def run() -> None:
            async with self._conn.aconn.cursor() as cur:
                await cur.executemany(query, rows)

        self._conn.call(run())


class SyncConnection:
    """The synchronous face of a pooled ``AsyncConnection``, for use from a worker thread."""

    def __init__(self, aconn: AsyncConnection[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.aconn = aconn
        self._loop = loop

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def execute(self, query: Any, params: Sequence[Any] | None = None) -> SyncResult:
        async def run() -> SyncResult:
            async with self.aconn.cursor(row_factory=dict_row) as cur:
                await cur.execute(query, params)
                rows = await cur.fetchall() if cur.description is not None else []
                return SyncResult(list(rows), cur.rowcount)

        result: SyncResult = self.call(run())
        return result

    def cursor(self) -> SyncCursor:
        return SyncCursor(self)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """A transaction (or a savepoint inside one), committed unless the block raises."""
        outermost = self.aconn.info.transaction_status == TransactionStatus.IDLE
        tx = self.aconn.transaction()
        self.call(tx.__aenter__())
        if outermost:
            # DDL waits for locks held by tenant queries: bounded, so an admin call can't
            # hold a pool connection (and queue every query behind its lock) for long
            self.execute(BOUNDS)
        try:
            yield
        except BaseException as exc:
            if not self.call(tx.__aexit__(type(exc), exc, exc.__traceback__)):
                raise
        else:
            self.call(tx.__aexit__(None, None, None))


async def run_sync(
    pool: AsyncConnectionPool | None,
    fn: Callable[..., T],
    *args: Any,
    timeout: float | None = None,
    discard: bool = False,
) -> T:
    """``fn(SyncConnection, *args)`` in a worker thread on one pooled connection.

    ``discard``: close the connection afterwards instead of returning it (provisioning
    fills a backend's catalog cache with the tables it creates: gateway/db/disposable.py).
    """
    loop = asyncio.get_running_loop()
    async with acquire(pool, timeout) as aconn:
        work = asyncio.ensure_future(asyncio.to_thread(fn, SyncConnection(aconn, loop), *args))
        try:
            return await asyncio.shield(work)
        except asyncio.CancelledError:
            # a thread can't be cancelled: the connection goes back to the pool only once
            # the thread is done with it (its transaction then commits or rolls back)
            with contextlib.suppress(BaseException):
                await work
            raise
        finally:
            if discard and work.done():
                expire(aconn)
