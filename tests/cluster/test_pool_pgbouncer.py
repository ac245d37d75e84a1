"""The gateway behind a real PgBouncer in transaction mode (issue 6).

``DATABASE_URL`` points at PgBouncer with ``GATEWAY_DB_POOLER=transaction``;
``DATABASE_DIRECT_URL`` points at PostgreSQL itself (start-up discovery, and later the
metadata listener and migrations). Without the ``pgbouncer`` binary these tests are
skipped with a message saying so. The pool alone (no gateway process) goes through
PgBouncer here too: limits discovery, and prepared-looking statements in transaction mode.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import psycopg

from gateway.control.keys import revoke_key
from gateway.control.projects import connect, set_limits
from gateway.db.pool import acquire as acquire_conn
from gateway.db.pool import discover_limits
from tests.support.harness import GatewayCluster
from tests.support.pgbouncer import PgBouncer
from tests.support.pool import real_pool, settings_for

BASE = "/v1/inhouse/db"


def post(url: str, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{url}{BASE}/{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def query(url: str, key: str, **q: Any) -> httpx.Response:
    return post(url, key, "query", {"query": q})


def ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_query_api_admission_and_metadata_through_pgbouncer(
    pgbouncer: PgBouncer,
    pg_url: str,
    db: psycopg.Connection[Any],
    make_project: Callable[..., dict[str, Any]],
    gateway_cluster: Callable[..., GatewayCluster],
) -> None:
    cluster = gateway_cluster(
        2,
        env={
            "DATABASE_URL": pgbouncer.url,
            "GATEWAY_DB_POOLER": "transaction",
            "GATEWAY_POOL_MIN": "2",
        },
        direct_url=pg_url,
    )
    a, b = cluster.urls
    project = make_project()
    server, public = project["server_key"], project["public_key"]

    # the query API: writes on one instance, reads on the other, every operation
    rows = ok(
        query(
            a,
            server,
            operation="insert",
            table="todos",
            data=[{"title": f"t{i}", "tags": ["x"], "meta": {"i": i}} for i in range(5)],
            returning=["id", "title"],
        )
    )
    assert [r["title"] for r in rows] == [f"t{i}" for i in range(5)]
    seen = ok(query(b, public, operation="select", table="todos", sorts=[{"column": "id"}]))
    assert [r["title"] for r in seen] == [f"t{i}" for i in range(5)]
    ok(
        query(
            b,
            server,
            operation="update",
            table="todos",
            set={"done": True},
            filters=[{"column": "title", "op": "in", "value": ["t0", "t1"]}],
        )
    )
    ok(
        query(
            a,
            server,
            operation="delete",
            table="todos",
            filters=[{"column": "title", "op": "eq", "value": "t4"}],
        )
    )
    done = ok(
        query(
            a,
            public,
            operation="select",
            table="todos",
            columns=["title"],
            filters=[{"column": "done", "op": "eq", "value": True}],
            sorts=[{"column": "title"}],
        )
    )
    assert [r["title"] for r in done] == ["t0", "t1"]

    # a batch is all or nothing through the transaction pooler too
    failed = post(
        b,
        server,
        "batch",
        {
            "queries": [
                {"operation": "insert", "table": "todos", "data": {"title": "kept?"}},
                {"operation": "insert", "table": "todos", "data": {"title": None}},
            ]
        },
    )
    assert failed.status_code == 400, failed.text
    assert failed.json()["error"]["details"]["index"] == 1
    titles = ok(query(a, server, operation="select", table="todos", columns=["title"]))
    assert "kept?" not in {r["title"] for r in titles}

    # repeated identical statements: psycopg would prepare them server-side after 5
    # uses, which a transaction pooler can't keep; prepare_threshold=None avoids that
    started = time.monotonic()
    for i in range(60):
        ok(query(cluster.urls[i % 2], public, operation="select", table="todos", limit=1))
    print(f"\n60 sequential requests through PgBouncer in {time.monotonic() - started:.2f} s")

    async def burst() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:

            async def one(i: int) -> int:
                response = await client.post(
                    f"{cluster.urls[i % 2]}{BASE}/query",
                    json={"query": {"operation": "select", "table": "todos", "limit": 2}},
                    headers={"Authorization": f"Bearer {public}"},
                )
                return response.status_code

            return await asyncio.gather(*(one(i) for i in range(40)))

    assert set(asyncio.run(burst())) == {200}

    # the traffic really went through PgBouncer, from both instances
    clients = pgbouncer.show("CLIENTS")
    names = {c["application_name"] for c in clients if c["database"] != "pgbouncer"}
    print("PgBouncer clients:", sorted(names))
    assert {f"gateway:{i.instance_id}" for i in cluster.instances} <= names
    stats = {s["database"]: s for s in pgbouncer.show("STATS")}
    assert int(stats[pgbouncer.dbname]["total_xact_count"]) > 100

    # metadata: a column added with plain SQL is served by every instance within 1 s
    schema = project["schema_name"]
    db.execute(f'ALTER TABLE "{schema}".todos ADD COLUMN priority integer')
    db.execute(
        """
        INSERT INTO gateway.column_registry (table_id, name, ordinal, data_type)
        SELECT id, 'priority', 100, 'integer' FROM gateway.table_registry
         WHERE project_id = %s AND name = 'todos'
        """,
        [project["id"]],
    )
    changed = time.monotonic()
    for url in cluster.urls:
        while True:
            response = query(url, server, operation="select", table="todos", columns=["priority"])
            if response.status_code == 200:
                break
            assert time.monotonic() - changed < 1.0, response.text
            time.sleep(0.02)
    print(
        f"new column served by both instances {time.monotonic() - changed:.3f} s after the change"
    )

    # …and a change sent THROUGH PgBouncer (NOTIFY works through a transaction pooler; only
    # LISTEN doesn't, which is why the listener uses DATABASE_DIRECT_URL)
    with psycopg.connect(pgbouncer.url, autocommit=True, prepare_threshold=None) as via:
        via.execute(
            """
            UPDATE gateway.column_registry c SET is_sensitive = true
              FROM gateway.table_registry t
             WHERE c.table_id = t.id AND t.project_id = %s AND c.name = 'priority'
            """,
            [project["id"]],
        )
    changed = time.monotonic()
    for url in cluster.urls:
        while True:
            row = ok(query(url, public, operation="select", table="todos", limit=1))[0]
            if "priority" not in row:
                break
            assert time.monotonic() - changed < 1.0, row
            time.sleep(0.02)
    print(f"sensitive column hidden on both instances after {time.monotonic() - changed:.3f} s")

    # the metadata listener runs on the direct URL, and is up on every instance
    for url in cluster.urls:
        ready = httpx.get(url + "/readyz", timeout=5).json()
        assert ready["checks"].get("listener", "up") == "up", ready

    # admission: the rate limit counts exactly across both instances through PgBouncer
    # (answers grouped by their window, in case the burst straddles a minute boundary)
    limited = make_project(rate_limit_per_minute=6)
    statuses = [
        query(cluster.urls[i % 2], limited["server_key"], operation="select", table="todos")
        for i in range(9)
    ]
    print("rate limit 6/minute through PgBouncer:", [r.status_code for r in statuses])
    refused = [r for r in statuses if r.status_code == 429]
    assert refused, "no request was refused"
    assert refused[0].json()["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert "retry-after" in refused[0].headers
    window = refused[0].headers["x-ratelimit-reset"]
    same_window = [r for r in statuses if r.headers.get("x-ratelimit-reset") == window]
    assert sum(r.status_code == 200 for r in same_window) == 6
    assert {r.status_code for r in statuses} == {200, 429}

    # admission: a revoked key is refused on the very next request on every instance
    with connect(pg_url) as conn:
        revoke_key(conn, project["public_key_id"])
    for url in cluster.urls:
        refused = query(url, public, operation="select", table="todos")
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["code"] == "REVOKED_API_KEY"
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], status="suspended")
    for url in cluster.urls:
        refused = query(url, server, operation="select", table="todos")
        assert refused.status_code == 403, refused.text
    with connect(pg_url) as conn:
        set_limits(conn, project["id"], status="active")


# --- the pool alone through PgBouncer ----------------------------------------------------


def test_discover_limits_through_pgbouncer(pgbouncer_url: str) -> None:
    settings = settings_for(pgbouncer_url, GATEWAY_DB_POOLER="transaction")
    assert asyncio.run(discover_limits(settings, timeout=0))[:2] == (300, 3)


def test_pool_through_pgbouncer_transaction_mode(pgbouncer_url: str) -> None:
    """Many identical statements (psycopg would prepare them) through a transaction pooler."""

    async def main() -> None:
        async with real_pool(
            pgbouncer_url, GATEWAY_POOL_MAX="4", GATEWAY_DB_POOLER="transaction"
        ) as pool:
            gate = asyncio.Semaphore(12)  # more than the pool, within its wait queue

            async def work(i: int) -> int:
                async with gate, acquire_conn(pool) as conn:
                    async with conn.transaction():
                        await conn.execute(
                            "SELECT set_config('gateway.probe', %s, true)", (str(i),)
                        )
                        cur = await conn.execute(
                            "SELECT current_setting('gateway.probe')::int + %s", (i,)
                        )
                        row = await cur.fetchone()
                    assert row is not None
                    return int(row[0])

            results = await asyncio.gather(*(work(i) for i in range(200)))
            assert results == [2 * i for i in range(200)]

    asyncio.run(main())
