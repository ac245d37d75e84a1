"""The original gateway's select, replayed statement by statement (the reference for 8).

The original (TypeScript/Fastify, node-postgres) awaited these database round trips, in
order, for one admitted select (``original-contract.md``, last section):

1. key lookup (``api_keys`` joined with ``projects``)
2. quota reset ``UPDATE`` (a new day zeroes the counter)
3. quota ``SELECT``
4. ``BEGIN``
5. ``SET LOCAL statement_timeout``
6. the query
7. ``COMMIT``
8. quota increment ``UPDATE``

Its rate limit was an in-process map (no round trip); its ``last_used_at`` update and
request-log ``INSERT`` were fire-and-forget, so they are not on the request's path and
are left out here. The quota lives in a bench-local table (``bench_original.quotas``,
created by ``setup``) because the gateway's own schema has no such table. Each statement
is awaited on its own, as the original did; connections come from a pool in autocommit
so that ``BEGIN``/``COMMIT`` are real statements.

Run it on its own against any database prepared by ``setup``:

    python -m bench.original_flow URL KEY PROJECT_ID [--n 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from gateway.auth.keys import hash_key

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS bench_original;
CREATE TABLE IF NOT EXISTS bench_original.quotas (
    project_id uuid PRIMARY KEY,
    requests_used bigint NOT NULL DEFAULT 0,
    requests_limit bigint NOT NULL DEFAULT 10000000,
    reset_at timestamptz NOT NULL DEFAULT date_trunc('day', now()) + interval '1 day'
);
"""

KEY_LOOKUP = """
SELECT k.id, k.project_id, k.key_type, k.scopes, k.status, k.expires_at,
       p.schema_name, p.status AS project_status, p.rate_limit_per_minute
  FROM gateway.api_keys k JOIN gateway.projects p ON p.id = k.project_id
 WHERE k.key_hash = %s
"""
QUOTA_RESET = """
UPDATE bench_original.quotas
   SET requests_used = 0, reset_at = date_trunc('day', now()) + interval '1 day'
 WHERE project_id = %s AND reset_at <= now()
"""
QUOTA_SELECT = (
    "SELECT requests_used, requests_limit FROM bench_original.quotas WHERE project_id = %s"
)
QUOTA_INCREMENT = (
    "UPDATE bench_original.quotas SET requests_used = requests_used + 1 WHERE project_id = %s"
)

ROUND_TRIPS = 8


def setup(url: str, project_id: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
        conn.execute(
            "INSERT INTO bench_original.quotas (project_id) VALUES (%s) ON CONFLICT DO NOTHING",
            [project_id],
        )


class OriginalFlow:
    def __init__(self, url: str, key: str, table: str = "items", pool_size: int = 4) -> None:
        self.url = url
        self.key_hash = hash_key(key)
        self.table = table
        self.pool = AsyncConnectionPool(
            url, min_size=1, max_size=pool_size, kwargs={"autocommit": True}, open=False
        )
        self.rate: dict[tuple[str, int], int] = {}

    async def open(self) -> None:
        await self.pool.open(wait=True, timeout=30)

    async def close(self) -> None:
        await self.pool.close()

    async def select(self, row_id: int) -> list[Any]:
        async with self.pool.connection() as conn:
            key = await (await conn.execute(KEY_LOOKUP, [self.key_hash])).fetchone()  # 1
            if key is None or key[4] != "active":
                raise RuntimeError("invalid key")
            project_id, schema = key[1], key[6]
            window = (str(project_id), int(time.time()) // 60)  # in-memory rate limit
            self.rate[window] = self.rate.get(window, 0) + 1
            await conn.execute(QUOTA_RESET, [project_id])  # 2
            quota = await (await conn.execute(QUOTA_SELECT, [project_id])).fetchone()  # 3
            if quota is not None and quota[0] >= quota[1]:
                raise RuntimeError("quota exceeded")
            await conn.execute("BEGIN")  # 4
            await conn.execute("SET LOCAL statement_timeout = '10s'")  # 5
            query = sql.SQL("SELECT id, title FROM {}.{} WHERE id = %s LIMIT 100").format(
                sql.Identifier(schema), sql.Identifier(self.table)
            )
            rows = await (await conn.execute(query, [row_id])).fetchall()  # 6
            await conn.execute("COMMIT")  # 7
            await conn.execute(QUOTA_INCREMENT, [project_id])  # 8
        return rows


async def _main(url: str, key: str, n: int, max_id: int) -> None:
    flow = OriginalFlow(url, key)
    await flow.open()
    try:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await flow.select(random.randint(1, max_id))
            samples.append(time.perf_counter() - t0)
    finally:
        await flow.close()
    samples.sort()
    print(f"p50 {samples[len(samples) // 2] * 1000:.3f} ms over {n} selects")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.original_flow", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("project_id")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--max-id", type=int, default=1000)
    args = parser.parse_args(argv)
    setup(args.url, args.project_id)
    asyncio.run(_main(args.url, args.key, args.n, args.max_id))


if __name__ == "__main__":
    main()
