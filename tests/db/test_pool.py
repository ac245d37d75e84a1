"""Connection budget, pool plan, overload and outage answers at the pool level (issue 6).

Plan arithmetic is pure; everything else runs against the real test PostgreSQL or as
one-shot ``gateway`` commands (PgBouncer: tests/cluster/test_pool_pgbouncer.py). Faults
are caused, never mocked: ``pg_terminate_backend`` for a connection the server ends, a
TCP proxy that cuts its sockets for a connection that just vanishes, ``pg_control.stop()``
for an outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from gateway.db.budget import NEON_MAX_CONNECTIONS, PlanError, neon_limits, plan_pool
from gateway.db.pool import acquire as acquire_conn
from gateway.db.pool import connection_is_dead, discover_limits, run_with_retry
from gateway.errors import GatewayError
from tests.support.polling import wait_until
from tests.support.pool import real_pool, settings_for


def run_gateway(*args: str, env: dict[str, str] | None = None, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# --- the plan (pure) ------------------------------------------------------------------


def test_plan_arithmetic_matches_the_issue_example() -> None:
    plan = plan_pool(settings_for(GATEWAY_INSTANCES="3"), 104, 7, source="Neon 0.25 CU")
    assert plan.pool_max == 30
    assert plan.arithmetic() == "pool_max = floor((104 − 7 − 3 − 3 × 1) / 3) = 30"
    assert plan.pool_min == 1
    assert plan.max_waiting == 240
    assert plan.timeout == 2.0
    assert plan.per_instance_connections == 31
    assert plan.planned_connections == 93
    assert plan.planned_connections + plan.reserved + plan.admin <= plan.max_connections


@pytest.mark.parametrize(("cu", "max_connections"), list(NEON_MAX_CONNECTIONS.items())[:11])
@pytest.mark.parametrize("instances", [1, 2, 3, 10])
def test_plan_fits_every_neon_size(cu: str, max_connections: int, instances: int) -> None:
    total, reserved = neon_limits(cu)
    assert (total, reserved) == (max_connections, 7)
    plan = plan_pool(settings_for(GATEWAY_INSTANCES=str(instances)), total, reserved)
    assert plan.pool_max == (total - reserved - 3 - instances) // instances
    assert plan.planned_connections + reserved + plan.admin <= total
    # one more pooled connection per instance would overflow the budget
    assert instances * (plan.pool_max + 2) + reserved + plan.admin > total


def test_neon_sizes_are_parsed_leniently_and_unknown_ones_refused() -> None:
    assert neon_limits("0.50") == (209, 7)
    assert neon_limits("1.0") == (419, 7)
    assert neon_limits("56") == (4000, 7)
    for bad in ("0.3", "57", "big", ""):
        with pytest.raises(PlanError):
            neon_limits(bad)


def test_explicit_cap_and_its_overflow() -> None:
    capped = plan_pool(settings_for(GATEWAY_INSTANCES="3", GATEWAY_POOL_MAX="10"), 104, 7)
    assert capped.pool_max == 10
    assert capped.max_waiting == 80
    assert capped.arithmetic() == (
        "pool_max = min(GATEWAY_POOL_MAX 10, floor((104 − 7 − 3 − 3 × 1) / 3) = 30) = 10"
    )
    with pytest.raises(PlanError) as excinfo:
        plan_pool(settings_for(GATEWAY_INSTANCES="3", GATEWAY_POOL_MAX="31"), 104, 7)
    message = str(excinfo.value)
    assert "GATEWAY_POOL_MAX=31 overflows" in message
    assert "floor((104 − 7 − 3 − 3 × 1) / 3) = 30" in message
    assert "\n" not in message


def test_too_small_a_budget_is_refused_with_the_arithmetic() -> None:
    # 12 − 3 − 3 − 3 × 1 = 3: one pooled connection per instance still fits
    assert plan_pool(settings_for(GATEWAY_INSTANCES="3"), 12, 3).pool_max == 1
    with pytest.raises(PlanError) as excinfo:
        plan_pool(settings_for(GATEWAY_INSTANCES="3"), 11, 3)
    message = str(excinfo.value)
    assert "pool_max = floor((11 − 3 − 3 − 3 × 1) / 3) = 0 < 1" in message
    assert "\n" not in message


def test_settings_shape_the_plan() -> None:
    settings = settings_for(
        GATEWAY_DB_ADMIN_CONNECTIONS="0",
        GATEWAY_POOL_MIN="5",
        GATEWAY_POOL_MAX_WAITING="3",
        GATEWAY_POOL_TIMEOUT_S="0.5",
    )
    plan = plan_pool(settings, 10, 2)
    assert plan.pool_max == 7  # 10 − 2 − 0 − 1
    assert (plan.pool_min, plan.max_waiting, plan.timeout) == (5, 3, 0.5)
    tiny = plan_pool(settings, 5, 2)
    assert (tiny.pool_max, tiny.pool_min) == (2, 2)  # min never above max


# --- discovery and the CLI ------------------------------------------------------------


def test_discover_limits_asks_the_database_unless_told(pg_url: str) -> None:
    asked = asyncio.run(discover_limits(settings_for(pg_url)))
    assert asked[:2] == (300, 3)  # the test server: max_connections=300, PostgreSQL defaults
    assert asked[2] == "database"
    told = settings_for(
        "postgresql://127.0.0.1:1/nowhere",
        GATEWAY_DB_MAX_CONNECTIONS="50",
        GATEWAY_DB_RESERVED_CONNECTIONS="4",
    )
    assert asyncio.run(discover_limits(told)) == (50, 4, "settings")
    half = settings_for(pg_url, GATEWAY_DB_MAX_CONNECTIONS="50")
    assert asyncio.run(discover_limits(half)) == (50, 3, "settings + database")
    # an unreachable DATABASE_DIRECT_URL (the listener's problem) doesn't stop start-up
    dead_direct = settings_for(
        pg_url, DATABASE_DIRECT_URL="postgresql://postgres@127.0.0.1:1/postgres"
    )
    assert asyncio.run(discover_limits(dead_direct, timeout=0))[:2] == (300, 3)


def test_pool_plan_cli_json_and_human(pg_url: str) -> None:
    result = run_gateway("pool-plan", "--neon-cu", "0.25", "--instances", "3", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    plan = json.loads(lines[0])
    assert plan["pool_max"] == 30
    assert plan["arithmetic"] == "pool_max = floor((104 − 7 − 3 − 3 × 1) / 3) = 30"
    assert plan["source"] == "Neon 0.25 CU"

    human = run_gateway("pool-plan", "--max-connections", "100", "--instances", "2")
    assert human.returncode == 0, human.stderr
    assert "pool_max = floor((100 − 3 − 3 − 2 × 1) / 2) = 46" in human.stdout

    asked = run_gateway(
        "pool-plan", "--json", env={"DATABASE_URL": pg_url, "GATEWAY_INSTANCES": "4"}
    )
    assert asked.returncode == 0, asked.stderr
    plan = json.loads(asked.stdout)
    assert plan["max_connections"] == 300
    assert plan["instances"] == 4
    assert plan["pool_max"] == (300 - 3 - 3 - 4) // 4


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--neon-cu", "0.3"], "unknown Neon compute size"),
        (["--instances", "0", "--max-connections", "50"], "--instances"),
        (["--max-connections", "many"], "--max-connections"),
        (["--max-connections", "10", "--instances", "3"], "= 0 < 1"),
        (["--max-connections", "10", "--neon-cu", "1"], "not both"),
    ],
)
def test_pool_plan_cli_refuses_bad_input(args: list[str], fragment: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "GATEWAY_"))}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "pool-plan", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert fragment in result.stderr


def test_serve_refuses_an_impossible_plan(pg_url: str) -> None:
    started = time.monotonic()
    result = run_gateway(
        "serve",
        "--port",
        "1",  # never reached
        env={"DATABASE_URL": pg_url, "GATEWAY_DB_MAX_CONNECTIONS": "7"},
    )
    elapsed = time.monotonic() - started
    print(f"refused in {elapsed:.2f} s: {result.stderr.strip()}")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "pool_max = floor((7 − 3 − 3 − 1 × 1) / 1) = 0 < 1" in result.stderr


# --- the pool: overload, dead connections, retries ------------------------------------


async def backend_pid(conn: psycopg.AsyncConnection[Any]) -> int:
    cur = await conn.execute("SELECT pg_backend_pid()")
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


def terminate(pg_url: str, pid: int) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


def test_pool_timeout_is_a_fast_503(pg_url: str) -> None:
    async def main() -> None:
        async with real_pool(pg_url, GATEWAY_POOL_MAX="1", GATEWAY_POOL_TIMEOUT_S="0.5") as pool:
            async with acquire_conn(pool):
                started = time.monotonic()
                with pytest.raises(GatewayError) as excinfo:
                    async with acquire_conn(pool):
                        pass
                waited = time.monotonic() - started
            print(f"PoolTimeout answered after {waited * 1000:.0f} ms (timeout 500 ms)")
            assert excinfo.value.status == 503
            assert excinfo.value.code == "SERVICE_UNAVAILABLE"
            assert excinfo.value.headers == {"Retry-After": "1"}
            assert 0.4 <= waited < 1.5
            # the pool still works afterwards
            async with acquire_conn(pool) as conn:
                await conn.execute("SELECT 1")

    asyncio.run(main())


def test_full_wait_queue_is_an_immediate_503(pg_url: str) -> None:
    async def main() -> None:
        async with real_pool(
            pg_url,
            GATEWAY_POOL_MAX="1",
            GATEWAY_POOL_TIMEOUT_S="5",
            GATEWAY_POOL_MAX_WAITING="1",
        ) as pool:
            async with acquire_conn(pool):
                waiter = asyncio.create_task(acquire_conn(pool).__aenter__())
                await asyncio.sleep(0.1)  # the queue now holds one waiter
                started = time.monotonic()
                with pytest.raises(GatewayError) as excinfo:
                    async with acquire_conn(pool):
                        pass
                refused = time.monotonic() - started
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, GatewayError):
                    await waiter
            print(f"TooManyRequests answered after {refused * 1000:.1f} ms")
            assert excinfo.value.status == 503
            assert "too many requests" in excinfo.value.message
            assert refused < 1.0

    asyncio.run(main())


def test_dead_idle_connection_is_replaced_at_checkout(pg_url: str) -> None:
    async def main() -> None:
        async with real_pool(pg_url, GATEWAY_POOL_MAX="1", GATEWAY_POOL_MIN="1") as pool:
            async with acquire_conn(pool) as conn:
                first = await backend_pid(conn)
            terminate(pg_url, first)
            await asyncio.sleep(0.1)
            async with acquire_conn(pool) as conn:
                second = await backend_pid(conn)
            assert second != first
            stats = pool.get_stats()
            print("pool stats after the replacement:", stats)
            assert stats.get("returns_bad", 0) + stats.get("connections_lost", 0) >= 1

    asyncio.run(main())


def test_the_connection_returned_last_is_handed_out_first(pg_url: str) -> None:
    """Most recently used first (``gateway.db.pool.MostRecentFirst``): psycopg_pool alone
    hands out the connection returned first, so this fails if its internals change."""

    async def main() -> None:
        async with real_pool(pg_url, GATEWAY_POOL_MAX="3", GATEWAY_POOL_MIN="3") as pool:
            conns = [await pool.getconn() for _ in range(3)]
            pids = [await backend_pid(conn) for conn in conns]
            for conn in conns:  # returned in order: the last one is the warmest
                await pool.putconn(conn)
            again = [await pool.getconn() for _ in range(3)]
            assert [await backend_pid(conn) for conn in again] == list(reversed(pids))
            for conn in again:
                await pool.putconn(conn)
            async with acquire_conn(pool) as conn:
                assert await backend_pid(conn) == pids[0]

    asyncio.run(main())


def test_checkout_check_costs_no_round_trip(pg_url: str) -> None:
    async def main() -> None:
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
            rounds = 2000
            started = time.perf_counter()
            for _ in range(rounds):
                assert not connection_is_dead(conn)
            check_us = (time.perf_counter() - started) / rounds * 1e6
            started = time.perf_counter()
            for _ in range(rounds // 4):
                await conn.execute("")
            trip_us = (time.perf_counter() - started) / (rounds // 4) * 1e6
            print(f"socket check {check_us:.1f} µs vs a round-trip check {trip_us:.1f} µs")

    asyncio.run(main())


def test_retry_once_when_the_server_ended_the_session(pg_url: str) -> None:
    """The connection dies between checkout and the first statement: run again, once."""

    async def main() -> None:
        async with real_pool(pg_url, GATEWAY_POOL_MAX="2", GATEWAY_POOL_MIN="2") as pool:
            pids: list[int] = []

            async def unit(conn: psycopg.AsyncConnection[Any]) -> int:
                pid = conn.info.backend_pid
                pids.append(pid)
                if len(pids) == 1:
                    await asyncio.to_thread(terminate, pg_url, pid)
                return await backend_pid(conn)

            result = await run_with_retry(pool, unit)
            assert len(pids) == 2
            assert result == pids[1] != pids[0]

            # a unit that loses its connection twice gets a 503, not a hang or a 500
            calls = 0

            async def always_dies(conn: psycopg.AsyncConnection[Any]) -> None:
                nonlocal calls
                calls += 1
                await asyncio.to_thread(terminate, pg_url, conn.info.backend_pid)
                await conn.execute("SELECT 1")

            with pytest.raises(GatewayError) as excinfo:
                await run_with_retry(pool, always_dies)
            assert calls == 2
            assert excinfo.value.status == 503

    asyncio.run(main())


class CuttableProxy:
    """A TCP proxy to PostgreSQL whose connections can be cut (EOF, no goodbye)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def cut(self) -> None:
        for writer in self.writers:
            transport = writer.transport
            with contextlib.suppress(OSError):
                transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


def test_vanished_connection_is_retried_only_for_idempotent_units(pg_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)

    async def main() -> None:
        proxy = CuttableProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        await proxy.start()
        url = f"postgresql://{parts.username or 'postgres'}@127.0.0.1:{proxy.port}{parts.path}"
        try:
            async with real_pool(url, GATEWAY_POOL_MAX="2", GATEWAY_POOL_MIN="2") as pool:
                for idempotent in (False, True):
                    calls = 0

                    async def unit(conn: psycopg.AsyncConnection[Any]) -> str:
                        nonlocal calls
                        calls += 1
                        if calls == 1:
                            proxy.cut()
                            await asyncio.sleep(0.05)
                        await conn.execute("SELECT 1")
                        return "ok"

                    if idempotent:
                        assert await run_with_retry(pool, unit, idempotent=True) == "ok"
                        assert calls == 2
                    else:
                        with pytest.raises(GatewayError) as excinfo:
                            await run_with_retry(pool, unit)
                        assert excinfo.value.status == 503
                        assert calls == 1  # ambiguous: a COMMIT might have landed
                    await asyncio.sleep(0.2)  # let the pool replace the cut connections
        finally:
            await proxy.close()

    asyncio.run(main())


def test_outage_is_a_503_within_the_timeout_and_heals(pg_url: str, pg_control: Any) -> None:
    async def main() -> None:
        async with real_pool(
            pg_url, GATEWAY_POOL_MAX="3", GATEWAY_POOL_MIN="2", GATEWAY_POOL_TIMEOUT_S="1"
        ) as pool:

            async def query() -> tuple[str, float]:
                started = time.monotonic()
                try:
                    await run_with_retry(pool, lambda c: c.execute("SELECT 1"), idempotent=True)
                    return "ok", time.monotonic() - started
                except GatewayError as exc:
                    assert exc.status == 503, exc
                    return "503", time.monotonic() - started

            assert (await query())[0] == "ok"
            await asyncio.to_thread(pg_control.stop)
            during = [await query() for _ in range(3)]
            print("during the outage:", [(r, round(t, 2)) for r, t in during])
            assert all(r == "503" for r, _ in during)
            assert all(t < 1.0 + 1.5 for _, t in during)
            await asyncio.to_thread(pg_control.start)
            back = time.monotonic()
            while True:
                result, _ = await query()
                if result == "ok":
                    break
                assert time.monotonic() - back < 5.0, "not healed 5 s after the restart"
                await asyncio.sleep(0.1)
            print(f"healed {time.monotonic() - back:.2f} s after the database was back")

    asyncio.run(main())


# --- the app: the plan at start-up, 503 through HTTP ----------------------------------


def test_app_plans_its_pool_and_answers_503_when_it_is_exhausted(
    pg_url: str, make_project: Any
) -> None:
    from starlette.testclient import TestClient

    from gateway.http.app import create_app

    project = make_project()
    settings = settings_for(
        pg_url,
        GATEWAY_INSTANCES="2",
        GATEWAY_POOL_MAX="1",
        GATEWAY_POOL_TIMEOUT_S="0.5",
        # the maintenance leader ticks once at start-up and then not again in this test
        # (a tick holds a pool connection, and its retention jobs want a second one)
        GATEWAY_MAINTENANCE_INTERVAL_S="3600",
    )
    app = create_app(settings)
    body = {"query": {"operation": "select", "table": "todos"}}
    headers = {"Authorization": f"Bearer {project['server_key']}"}
    with TestClient(app) as client:
        state = app.state.gw
        plan = state.pool_plan
        assert plan is not None and state.pool is not None
        assert (plan.instances, plan.pool_max, plan.max_connections) == (2, 1, 300)
        assert plan.budget_per_instance == (300 - 3 - 3 - 2) // 2
        assert state.pool.max_size == 1
        wait_until(  # until the start-up maintenance tick is done
            lambda: (
                client.post("/v1/inhouse/db/query", json=body, headers=headers).status_code == 200
            ),
            timeout=10,
            interval=0.1,
            message="a 200 from a pool of 1",
        )

        held = client.portal.call(state.pool.getconn)  # the only pooled connection
        try:
            started = time.monotonic()
            busy = client.post("/v1/inhouse/db/query", json=body, headers=headers)
            waited = time.monotonic() - started
            ready = client.get("/readyz")
        finally:
            client.portal.call(state.pool.putconn, held)
        print(f"503 after {waited * 1000:.0f} ms: {busy.text}")
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        assert busy.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert busy.json()["status"] == 503
        assert waited < 0.5 + 1.0
        assert ready.status_code == 503
        assert client.post("/v1/inhouse/db/query", json=body, headers=headers).status_code == 200
    assert state.pool.closed


def test_app_refuses_an_impossible_plan_in_process(pg_url: str) -> None:
    from starlette.testclient import TestClient

    from gateway.http.app import create_app

    app = create_app(settings_for(pg_url, GATEWAY_DB_MAX_CONNECTIONS="7"))
    with pytest.raises(PlanError) as excinfo, TestClient(app):
        pass
    assert "pool_max = floor((7 − 3 − 3 − 1 × 1) / 1) = 0 < 1" in str(excinfo.value)
    assert app.state.gw.pool is None


def test_request_whose_session_the_server_ends_before_admission_is_retried_once(
    pg_url: str, make_project: Any
) -> None:
    """A real ``pg_terminate_backend`` between checkout and the admission statement."""
    from starlette.testclient import TestClient

    from gateway.http.app import create_app

    project = make_project()
    app = create_app(settings_for(pg_url, GATEWAY_POOL_MAX="4", GATEWAY_POOL_MIN="2"))
    body = {"query": {"operation": "select", "table": "todos"}}
    headers = {"Authorization": f"Bearer {project['server_key']}"}
    with TestClient(app) as client:
        admitter = app.state.gw.pipeline.admitter
        original = admitter.admit
        pids: list[int] = []

        async def admit_after_a_fault(conn: Any, *args: Any, **kwargs: Any) -> Any:
            pids.append(conn.info.backend_pid)
            if len(pids) == 1:  # the server ends this session before admission runs
                await asyncio.to_thread(terminate, pg_url, conn.info.backend_pid)
            return await original(conn, *args, **kwargs)

        admitter.admit = admit_after_a_fault
        try:
            response = client.post("/v1/inhouse/db/query", json=body, headers=headers)
        finally:
            admitter.admit = original
        print(f"admission ran on backends {pids}: {response.status_code}")
        assert response.status_code == 200, response.text
        assert len(pids) == 2 and pids[0] != pids[1]


def test_a_503_raised_for_a_lost_connection_is_retried_like_the_loss(pg_url: str) -> None:
    async def main() -> None:
        async with real_pool(pg_url, GATEWAY_POOL_MAX="2", GATEWAY_POOL_MIN="2") as pool:
            calls = 0

            async def unit(conn: psycopg.AsyncConnection[Any]) -> str:
                nonlocal calls
                calls += 1
                if calls == 1:
                    await asyncio.to_thread(terminate, pg_url, conn.info.backend_pid)
                try:
                    await conn.execute("SELECT 1")
                except psycopg.OperationalError as exc:
                    raise GatewayError("SERVICE_UNAVAILABLE", "lost", status=503) from exc
                return "ok"

            assert await run_with_retry(pool, unit) == "ok"
            assert calls == 2

    asyncio.run(main())
