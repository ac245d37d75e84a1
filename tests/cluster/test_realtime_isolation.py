"""Issue 20, realtime: one tenant's stream or transaction can't hurt another tenant.

Real gateway processes. The attacker holds only a public key (its filters) or writes its
own table (its transactions); the victim is another project on the same instance(s).
Bounds here are behaviour the issue states, with margins for the shared 2-core machine
these tests run on (load from other suites): each says which.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import httpx
import psycopg
from psycopg import sql

from tests.support.harness import GatewayCluster
from tests.support.polling import wait_until_async
from tests.support.sse import REALTIME_ENV, TIMEOUT_S, Stream
from tests.support.tables import todos

BASE = "/v1/inhouse/db"
# a replay of the whole change log (the oldest cursor there is)
FROM_THE_START = "0-0"
# The victim's select takes ~30 ms here; a frozen loop made it 2.5-3.3 s (a 110-character
# row) or never (5,000). 1.5 s is far above noise on this loaded machine and far below
# what a held loop does.
VICTIM_P95_BOUND_S = 1.5


async def victim_selects(url: str, key: str, stop: asyncio.Event, min_samples: int) -> list[float]:
    """Another tenant's selects, one after the other, until ``stop`` (and at least
    ``min_samples``): their latencies."""
    latencies: list[float] = []
    body = {"query": {"operation": "select", "table": "todos", "limit": 5}}
    async with httpx.AsyncClient(timeout=30) as client:
        while not stop.is_set() or len(latencies) < min_samples:
            started = time.monotonic()
            r = await client.post(
                url + BASE + "/query", json=body, headers={"Authorization": f"Bearer {key}"}
            )
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200, r.text
    return latencies


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 2 else values[0]


def loop_lag_counts(url: str) -> tuple[float, float]:
    """(samples, samples at most 1 s late) of ``gateway_event_loop_lag_seconds``."""
    text = httpx.get(url + "/metrics", timeout=10).text
    total = under = None
    for line in text.splitlines():
        if line.startswith("gateway_event_loop_lag_seconds_count"):
            total = float(line.split()[-1])
        if line.startswith('gateway_event_loop_lag_seconds_bucket{le="1.0"}'):
            under = float(line.split()[-1])
    assert total is not None and under is not None, "no loop-lag histogram in /metrics"
    return total, under


def attack_then_sigterm(
    cluster: GatewayCluster,
    attacker: dict[str, Any],
    victim: dict[str, Any],
    filters: list[dict[str, Any]],
    seed: Any,
    expect_match: Any,
) -> list[Any]:
    """Seed the attacker's table (``seed(conn)``), open its replaying streams while the
    victim selects; the victim's p95 stays bounded, the loop never stalls a second, and
    SIGTERM still ends the instance at once. Returns the attacker's events."""
    url = cluster.urls[0]

    async def main() -> list[Any]:
        async with await psycopg.AsyncConnection.connect(
            cluster.database_url, autocommit=True
        ) as conn:
            await seed(conn)
        done = asyncio.Event()
        done.set()  # calm: just the minimum number of selects
        calm = await victim_selects(url, victim["public_key"], done, 10)
        stop = asyncio.Event()
        victim_task = asyncio.create_task(victim_selects(url, victim["public_key"], stop, 40))
        streams = [
            Stream(url, key=attacker["public_key"], filters=filters, since=FROM_THE_START)
            for _ in range(3)
        ]
        for s in streams:
            # opened (a stream whose filter runs out of budget may end before its first id)
            await asyncio.wait_for(s.opened.wait(), TIMEOUT_S)
            assert s.status == 200, s.body
        async with await psycopg.AsyncConnection.connect(
            cluster.database_url, autocommit=True
        ) as conn:
            await expect_match(conn)
        # every stream got through the whole replay to the row written after it (or was
        # ended with an error event): the attack ran to its end while the victim selected
        await wait_until_async(
            lambda: all(s.changes or s.ended.is_set() for s in streams),
            timeout=TIMEOUT_S,
            message=lambda: f"attacker streams: {[s.events[-2:] for s in streams]}",
        )
        stop.set()
        under_attack = await victim_task
        print(
            f"victim select p95: calm {p95(calm) * 1000:.0f} ms, under attack "
            f"{p95(under_attack) * 1000:.0f} ms ({len(under_attack)} selects)"
        )
        assert p95(under_attack) < VICTIM_P95_BOUND_S
        samples, on_time = loop_lag_counts(url)
        assert samples > 0 and on_time == samples, (samples, on_time)
        events = [e for s in streams for e in s.events]
        started = time.monotonic()
        code = await asyncio.to_thread(cluster.instances[0].terminate)
        stopped = time.monotonic() - started
        print(f"SIGTERM after the attack: exited in {stopped:.2f}s (code {code})")
        assert stopped < 5.0  # not frozen past SIGTERM, nor the 10 s graceful timeout
        for s in streams:
            await s.close()
        return events

    return asyncio.run(main())


def test_like_filter_replayed_over_long_rows_does_not_hold_the_instance(
    gateway_cluster: Any, make_project: Any
) -> None:
    cluster = gateway_cluster(1, env=REALTIME_ENV)
    attacker, victim = make_project(), make_project()
    insert = sql.SQL("INSERT INTO {} (title) SELECT %s FROM generate_series(1, %s)").format(
        todos(attacker)
    )

    async def seed(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(insert, ["a" * 110, 200])
        await conn.execute(insert, ["a" * 5000, 20])

    async def expect_match(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(insert, ["xaxaxaxaxab", 1])

    events = attack_then_sigterm(
        cluster,
        attacker,
        victim,
        [{"column": "title", "op": "like", "value": "%a%a%a%a%a%b"}],
        seed,
        expect_match,
    )
    # the filter is still exact: only the matching row, once per stream
    assert [e.data["row"]["title"] for e in events if e.event == "insert"] == ["xaxaxaxaxab"] * 3


def test_large_jsonb_contains_filter_does_not_hold_the_instance(
    gateway_cluster: Any, make_project: Any
) -> None:
    cluster = gateway_cluster(1, env=REALTIME_ENV)
    attacker, victim = make_project(), make_project()
    insert = sql.SQL(
        "INSERT INTO {} (title, meta) SELECT 'big', jsonb_agg(jsonb_build_object('k', i, 'v', 'x'))"
        " FROM generate_series(1, %s) AS i, generate_series(1, %s) AS r GROUP BY r"
    ).format(todos(attacker))
    small = sql.SQL("INSERT INTO {} (title, meta) VALUES ('small', %s)").format(todos(attacker))
    # 50 objects at the end of the big rows: the Python evaluation before issue 20
    # compared each with every element before it, on the loop (~1 s per row)
    wanted = [{"k": 12_000 - i} for i in range(50)]

    async def seed(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(insert, [12_000, 20])  # ~230 KB of jsonb per row

    async def expect_match(conn: psycopg.AsyncConnection[Any]) -> None:
        await conn.execute(small, [psycopg.types.json.Jsonb(wanted)])

    events = attack_then_sigterm(
        cluster, attacker, victim, [{"column": "meta", "op": "contains", "value": wanted}],
        seed, expect_match,
    )  # fmt: skip
    # every stream's filter exceeded the per-row work budget on the first big row: each
    # was ended, saying so, and none delivered anything
    errors = [e.data["code"] for e in events if e.event == "error"]
    assert errors == ["FILTER_TOO_EXPENSIVE"] * 3, events
    assert not [e for e in events if e.event == "insert"]


def test_filter_values_of_the_wrong_json_type_are_invalid_filter(
    gateway_cluster: Any, make_project: Any
) -> None:
    """Issue 21: a number or an object for a uuid column was a 500."""
    cluster = gateway_cluster(1, env=REALTIME_ENV)
    table = {
        "name": "todos",
        "client_read": True,
        "client_write": True,
        "columns": [
            {"name": "id", "type": "bigint", "primary_key": True, "identity": True},
            {"name": "ref", "type": "uuid"},
            {"name": "at", "type": "timestamptz"},
            {"name": "n", "type": "numeric"},
        ],
    }
    project = make_project(table=table)

    async def main() -> None:
        for column, op, value in [
            ("ref", "eq", 5), ("ref", "eq", {"a": 1}), ("ref", "in", [7]), ("at", "gt", 5),
            ("at", "eq", [1]), ("n", "eq", {"x": 1}), ("n", "in", [True]), ("id", "eq", {}),
        ]:  # fmt: skip
            s = Stream(
                cluster.urls[0],
                key=project["public_key"],
                filters=[{"column": column, "op": op, "value": value}],
            )
            assert await s.wait_open() == 400, (column, value, s.body)
            error = s.error_body()
            assert error["code"] == "INVALID_FILTER", error
            assert "Traceback" not in s.body.decode()
            await s.close()

    asyncio.run(main())
