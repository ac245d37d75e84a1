"""``invalidation``: from COMMIT of a metadata change until every instance serves it.

3 instances. Each change flips the ``secret`` column's ``is_sensitive`` flag in
``gateway.column_registry`` with plain SQL (what an operator or the app builder does).
A public key must stop (or start) seeing the column. The clock starts just before
``COMMIT`` is sent; right after, one poller per instance calls ``GET /schema`` with the
public key back to back (no sleep) until the column's presence matches, and the change's
figure is the time the LAST instance got there. Every instance's cache is warm before each
change (each one has just served the old metadata). A poll costs one admitted request, so
the resolution is about one request's latency.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import psycopg

from bench import framework as fw
from bench.framework import BASE, Bench, ScenarioResult
from bench.report import Table

NAME = "invalidation"
KEYS = ["invalidation.p50_ms", "invalidation.p99_ms", "invalidation.max_ms"]
INSTANCES = 3
CHANGE_TIMEOUT_S = 10.0
PAUSE_S = 0.1


@dataclass(frozen=True)
class Size:
    changes: int


SIZES = fw.Sizes(full=Size(changes=50), quick=Size(changes=10), smoke=Size(changes=3))


def _has_secret(body: dict[str, Any]) -> bool:
    for table in body.get("tables", []):
        if table.get("name") == "items":
            return any(c.get("name") == "secret" for c in table.get("columns", []))
    raise RuntimeError(f"/schema has no items table: {str(body)[:300]}")


async def _measure(
    bench: Bench, urls: list[str], project: dict[str, Any], changes: int
) -> tuple[list[float], list[list[float]]]:
    import httpx

    headers = {"Authorization": f"Bearer {project['public_key']}"}
    clients = [httpx.AsyncClient(base_url=u, headers=headers, timeout=10.0) for u in urls]

    async def visible(client: httpx.AsyncClient) -> bool:
        response = await client.get(f"{BASE}/schema")
        if response.status_code != 200:
            raise RuntimeError(f"/schema answered {response.status_code}: {response.text[:300]}")
        return _has_secret(response.json())

    async def wait_for(client: httpx.AsyncClient, want: bool, t0: float) -> float:
        deadline = t0 + CHANGE_TIMEOUT_S
        while time.perf_counter() < deadline:
            if await visible(client) == want:
                return time.perf_counter() - t0
        raise TimeoutError

    totals: list[float] = []
    per_instance: list[list[float]] = [[] for _ in urls]
    try:
        async with await psycopg.AsyncConnection.connect(bench.url) as conn:
            column_id = (
                await (
                    await conn.execute(
                        """
                        SELECT c.id FROM gateway.column_registry c
                          JOIN gateway.table_registry t ON t.id = c.table_id
                         WHERE t.project_id = %s AND t.name = 'items' AND c.name = 'secret'
                        """,
                        [project["id"]],
                    )
                ).fetchone()
            )[0]
            await conn.commit()
            for i in range(changes):
                # every instance serves the current state (warm cache) before the change
                states = await asyncio.gather(*(visible(c) for c in clients))
                if len(set(states)) != 1:
                    raise RuntimeError(f"instances disagree before change {i}: {states}")
                await conn.execute(
                    "UPDATE gateway.column_registry SET is_sensitive = NOT is_sensitive"
                    " WHERE id = %s",
                    [column_id],
                )
                want = not states[0]
                t0 = time.perf_counter()
                await conn.commit()
                try:
                    times = await asyncio.gather(*(wait_for(c, want, t0) for c in clients))
                except TimeoutError:
                    raise RuntimeError(
                        f"change {i + 1}: not every instance served the new metadata within "
                        f"{CHANGE_TIMEOUT_S:g} s of COMMIT: metadata invalidation (LISTEN/NOTIFY "
                        "on registry changes) is broken"
                    ) from None
                totals.append(max(times))
                for j, t in enumerate(times):
                    per_instance[j].append(t)
                await asyncio.sleep(PAUSE_S)
    finally:
        for c in clients:
            await c.aclose()
    return totals, per_instance


def run(bench: Bench) -> ScenarioResult:
    changes = SIZES.current().changes
    project = bench.make_project(rows=10)
    cluster = bench.start_cluster(INSTANCES, name="inv")
    try:
        totals, per_instance = asyncio.run(_measure(bench, cluster.urls, project, changes))
    finally:
        bench.stop_cluster(cluster)
    s = fw.summarize_ms(totals)
    keys = {
        "invalidation.p50_ms": s["p50_ms"],
        "invalidation.p99_ms": s["p99_ms"],
        "invalidation.max_ms": s["max_ms"],
    }
    rows = [["all instances (the figure)", s["p50_ms"], s["p99_ms"], s["max_ms"], s["n"]]]
    for j, samples in enumerate(per_instance):
        si = fw.summarize_ms(samples)
        rows.append([f"instance {j + 1}", si["p50_ms"], si["p99_ms"], si["max_ms"], si["n"]])
    table = Table(["COMMIT -> served", "p50 ms", "p99 ms", "max ms", "changes"], rows)
    p99 = keys["invalidation.p99_ms"]
    targets = [fw.target("invalidation p99 <= 100 ms", "<= 100", p99, p99 <= 100)]
    notes = [
        f"{INSTANCES} instances, {changes} changes (column_registry.is_sensitive flips by "
        "plain SQL), polled with GET /schema and a public key, back to back."
    ]
    return ScenarioResult(NAME, keys, [table], targets, {}, notes)
