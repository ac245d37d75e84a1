"""Pooled connections that are closed after one sweep instead of going back to the pool.

A PostgreSQL backend caches the catalog entries of every relation it has touched (about
13 KB per table) in its ``CacheMemoryContext`` and frees none of them while it lives. A
pooled connection that serves requests touches the tables of the projects that are
active, which is what a pool is for. A sweep over MANY projects — the database-size
sampler measuring every schema, provisioning that creates schemas, tables, triggers and
policies — would leave every table it touched cached on a long-lived connection, and a
pool full of such connections holds the whole catalog in every backend (docs/scaling.md,
"connections that don't hoard catalog caches").

``disposable(pool)`` hands out a pooled connection (counted in the pool's budget like any
other, so no connection is added beyond the plan) and closes it when the sweep is done:
the pool replaces it with a fresh backend whose caches hold nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool


@contextlib.asynccontextmanager
async def disposable(
    pool: AsyncConnectionPool, timeout: float | None = None
) -> AsyncIterator[AsyncConnection[Any]]:
    """A connection of ``pool`` for one sweep; closed (not returned) afterwards."""
    async with pool.connection(timeout=timeout) as conn:
        try:
            yield conn
        finally:
            expire(conn)


def expire(conn: AsyncConnection[Any]) -> None:
    """Make the pool replace ``conn`` when it comes back: psycopg_pool closes a connection
    past its lifetime on return and opens a new one (closing it ourselves would do the
    same, with a warning in the log each time). tests/db/test_disposable_connections.py
    checks that the next checkout is another backend."""
    conn._expire_at = 0.0
