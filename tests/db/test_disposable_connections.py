"""Connections that don't hoard catalog caches (gateway/db/disposable.py).

A backend keeps the catalog entries of every table it touched for as long as it lives.
Sweeps over many projects (the database-size sampler, provisioning through the admin
API) run on a pooled connection that is closed afterwards, and every pooled connection
has a maximum lifetime (``GATEWAY_POOL_MAX_LIFETIME_S``). These tests measure the cache
with ``pg_backend_memory_contexts`` and check which backend the pool hands out next.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from gateway.db.bridge import run_sync
from gateway.db.disposable import disposable
from gateway.db.pool import create_pool
from gateway.quotas import dbsize
from gateway.settings import Settings
from tests.support.admission import run

TABLES = 150
CACHE_SQL = "SELECT total_bytes FROM pg_backend_memory_contexts WHERE name = 'CacheMemoryContext'"


@pytest.fixture
def many_tables(db: Any) -> Iterator[str]:
    """A schema with ``TABLES`` small tables (what a sweep over many projects touches)."""
    schema = f"sweep_{uuid.uuid4().hex[:10]}"
    db.execute(f'CREATE SCHEMA "{schema}"')
    for i in range(TABLES):
        db.execute(f'CREATE TABLE "{schema}".t{i} (id int PRIMARY KEY, a text, b int, c jsonb)')
    yield schema
    db.execute(f'DROP SCHEMA "{schema}" CASCADE')


async def _one_connection_pool(pg_url: str, **kwargs: Any) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(
        pg_url, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False, **kwargs
    )
    await pool.open(wait=True)
    return pool


async def _pid_and_cache(conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
    cur = await conn.execute(f"SELECT pg_backend_pid(), ({CACHE_SQL})")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _touch(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    for i in range(TABLES):
        await conn.execute(f'SELECT count(*) FROM "{schema}".t{i}')


def test_a_sweep_leaves_no_catalog_cache_in_the_pool(pg_url: str, many_tables: str) -> None:
    async def scenario() -> tuple[int, int, int, int, int]:
        pool = await _one_connection_pool(pg_url)
        try:
            async with disposable(pool) as conn:
                swept_pid, before = await _pid_and_cache(conn)
                await _touch(conn, many_tables)
                _, after = await _pid_and_cache(conn)
            async with pool.connection() as conn:
                next_pid, fresh = await _pid_and_cache(conn)
            return swept_pid, before, after, next_pid, fresh
        finally:
            await pool.close()

    swept_pid, before, after, next_pid, fresh = run(scenario())
    # the sweep grew its backend's cache by kilobytes per table...
    assert after - before > TABLES * 4096, (before, after)
    # ...and the pool's next connection is another backend without that cache
    assert next_pid != swept_pid
    assert fresh < after - TABLES * 4096, (fresh, after)


def test_a_pooled_connection_keeps_its_cache_without_a_sweep(pg_url: str, many_tables: str) -> None:
    """The contrast: an ordinary checkout returns its backend, cache and all."""

    async def scenario() -> tuple[int, int, int, int]:
        pool = await _one_connection_pool(pg_url)
        try:
            async with pool.connection() as conn:
                pid, _ = await _pid_and_cache(conn)
                await _touch(conn, many_tables)
                _, after = await _pid_and_cache(conn)
            async with pool.connection() as conn:
                next_pid, kept = await _pid_and_cache(conn)
            return pid, after, next_pid, kept
        finally:
            await pool.close()

    pid, after, next_pid, kept = run(scenario())
    assert next_pid == pid
    assert kept >= after


def test_the_db_size_sampler_runs_on_a_disposable_connection(
    pg_url: str, make_project: Any
) -> None:
    make_project()
    jobs: dict[str, Callable[[Any], Awaitable[int]]] = {}

    class Leader:
        """The maintenance leader's registration interface (gateway/ops/maintenance.py)."""

        pool: AsyncConnectionPool

        def register(self, name: str, fn: Callable[[Any], Awaitable[int]]) -> None:
            jobs[name] = fn

    async def scenario() -> tuple[int, int, int]:
        leader = Leader()
        leader.pool = await _one_connection_pool(pg_url)
        try:
            dbsize.install(leader, sample_s=0.001)
            async with leader.pool.connection() as conn:
                before, _ = await _pid_and_cache(conn)
            measured = await jobs["quota_db_size"](None)
            async with leader.pool.connection() as conn:
                after, _ = await _pid_and_cache(conn)
            return before, after, measured
        finally:
            await leader.pool.close()

    before, after, measured = run(scenario())
    assert measured >= 1
    assert after != before


@pytest.mark.parametrize("discard", [True, False])
def test_admin_provisioning_discards_its_connection(pg_url: str, discard: bool) -> None:
    """``run_sync(..., discard=True)`` (the admin API's calls that change things)."""

    def backend_pid(conn: Any) -> int:
        return int(conn.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"])

    async def scenario() -> tuple[int, int]:
        pool = await _one_connection_pool(pg_url)
        try:
            first = await run_sync(pool, backend_pid, discard=discard)
            second = await run_sync(pool, backend_pid)
            return first, second
        finally:
            await pool.close()

    first, second = run(scenario())
    assert (first != second) is discard


def test_pooled_connections_have_a_maximum_lifetime(pg_url: str) -> None:
    settings = Settings.from_env(
        {"DATABASE_URL": pg_url, "GATEWAY_POOL_MAX_LIFETIME_S": "1"}, development=True
    )

    async def scenario() -> tuple[int, int]:
        pool = create_pool(settings, max_size=1)
        await pool.open(wait=True)
        try:
            async with pool.connection() as conn:
                first, _ = await _pid_and_cache(conn)
            pid, deadline = first, time.monotonic() + 15
            # psycopg_pool checks a connection's age when it comes back (the lifetime
            # has a jitter of a few percent): use it until it is replaced
            while pid == first and time.monotonic() < deadline:
                async with pool.connection() as conn:
                    pid, _ = await _pid_and_cache(conn)
                await asyncio.sleep(0.1)
            return first, pid
        finally:
            await pool.close()

    first, last = run(scenario())
    assert last != first
