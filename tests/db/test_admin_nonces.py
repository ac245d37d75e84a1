"""The nonce table: one insert decides, concurrently too; the maintenance leader cleans it;
and the synchronous bridge runs provisioning on a pooled connection."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any

import psycopg
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from gateway.control import nonces
from gateway.control.errors import ConflictError
from gateway.control.projects import create_project
from gateway.db.bridge import run_sync
from gateway.ops.maintenance import ConnectionSampler, Maintenance, install_default_jobs
from gateway.settings import Settings


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_nonce_is_claimed_once_even_by_concurrent_connections(pg_url: str) -> None:
    nonce = uuid.uuid4().hex

    async def scenario() -> list[bool]:
        conns = [await AsyncConnection.connect(pg_url, autocommit=True) for _ in range(8)]
        try:
            return await asyncio.gather(*(nonces.claim(c, nonce, int(time.time())) for c in conns))
        finally:
            for c in conns:
                await c.close()

    assert sorted(run(scenario())) == [False] * 7 + [True]


def test_the_maintenance_leader_deletes_expired_nonces(
    pg_url: str, db: psycopg.Connection[Any]
) -> None:
    old, fresh = uuid.uuid4().hex, uuid.uuid4().hex
    db.execute(
        "INSERT INTO gateway.admin_nonces VALUES (%s, now() - interval '1 second'), "
        "(%s, now() + interval '10 minutes')",
        [old, fresh],
    )
    settings = Settings(database_url=pg_url, instance_id=f"nonce-{uuid.uuid4().hex[:6]}")

    async def scenario() -> Maintenance:
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=3, open=False,
                                   kwargs={"autocommit": True})  # fmt: skip
        await pool.open(wait=True)
        m = Maintenance(settings, pool)
        install_default_jobs(m, ConnectionSampler())
        for _ in range(100):
            if await m.tick():
                break
            await asyncio.sleep(0.05)
        await pool.close()
        return m

    m = run(scenario())
    assert m.stats()["jobs"]["admin_nonce_cleanup"]["runs"] == 1
    left = {r["nonce"] for r in db.execute(
        "SELECT nonce FROM gateway.admin_nonces WHERE nonce IN (%s, %s)", [old, fresh]
    ).fetchall()}  # fmt: skip
    assert left == {fresh}
    # a claim's row lives past the timestamp window (10 minutes after the timestamp)
    nonce = uuid.uuid4().hex

    async def claim() -> bool:
        async with await AsyncConnection.connect(pg_url, autocommit=True) as conn:
            return await nonces.claim(conn, nonce, int(time.time()))

    assert run(claim())
    row = db.execute(
        "SELECT expires_at - now() AS ttl FROM gateway.admin_nonces WHERE nonce = %s", [nonce]
    ).fetchone()
    assert 590 <= row["ttl"].total_seconds() <= 610


def test_the_bridge_runs_provisioning_and_rolls_back_on_refusal(
    pg_url: str, db: psycopg.Connection[Any]
) -> None:
    name = f"bridge-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[Any, Any]:
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=2, open=False,
                                   kwargs={"autocommit": True})  # fmt: skip
        await pool.open(wait=True)
        try:
            made = await run_sync(pool, create_project, name)
            try:
                await run_sync(pool, create_project, name)
            except ConflictError as exc:
                refused = exc
            else:
                refused = None
            return made, refused
        finally:
            await pool.close()

    made, refused = run(scenario())
    assert made.name == name and isinstance(refused, ConflictError)
    rows = db.execute("SELECT count(*) AS n FROM gateway.projects WHERE name = %s", [name])
    assert rows.fetchone()["n"] == 1
    # the role and schema of the first exist; nothing of the refused one was left behind
    assert db.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [made.schema_name]).fetchone()


def test_a_cancelled_bridge_call_finishes_before_its_connection_is_reused(
    pg_url: str, db: psycopg.Connection[Any]
) -> None:
    nonce = uuid.uuid4().hex

    def slow_write(conn: Any) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_sleep(0.5)")
            conn.execute(
                "INSERT INTO gateway.admin_nonces VALUES (%s, now() + interval '1 minute')",
                [nonce],
            )

    async def scenario() -> dict[str, int]:
        pool = AsyncConnectionPool(pg_url, min_size=1, max_size=1, open=False,
                                   kwargs={"autocommit": True})  # fmt: skip
        await pool.open(wait=True)
        try:
            task = asyncio.create_task(run_sync(pool, slow_write))
            await asyncio.sleep(0.1)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # the one connection is back, idle, and works
            async with pool.connection() as conn:
                await conn.execute("SELECT 1")
            return pool.get_stats()
        finally:
            await pool.close()

    stats = run(scenario())
    assert stats["pool_available"] == 1
    found = db.execute("SELECT 1 FROM gateway.admin_nonces WHERE nonce = %s", [nonce]).fetchone()
    assert found is not None  # the thread's transaction completed and committed
