"""The per-cell runtimes of one instance (``gateway.cells.runtime``), on real databases:
a cell recorded in the directory gets a runtime with its own pool and listener, a removed
cell's runtime is stopped, and a cell whose database is unreachable neither stops the
start nor slows a request for it (503 at once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import psycopg
import pytest
from starlette.testclient import TestClient

from gateway.cells.directory import HOME, Cell
from gateway.cells.runtime import DISCOVERY_TIMEOUT_S, CellRuntime, Cells, open_cell
from gateway.errors import GatewayError
from gateway.http.app import create_app
from gateway.settings import Settings
from tests.support.cells import make_cell_project, register_cell, remove_cell, unique_cell_name
from tests.support.hashing import count_sha256
from tests.support.polling import wait_until, wait_until_async

# An address nothing listens on: connecting is refused at once, like a stopped server.
QUERY = "/v1/inhouse/db/query"
UNREACHABLE_URL = "postgresql://gateway@127.0.0.1:9/nothing?connect_timeout=2"


def control_settings(pg_url: str) -> Settings:
    return Settings.from_env({"DATABASE_URL": pg_url})


async def start_cells(pg_url: str) -> Cells:
    """An instance's cells with home built like a remote cell (what the tests need of it:
    a pool on the control database and the hasher)."""
    settings = control_settings(pg_url)
    home = await open_cell(Cell(HOME, None, None, 300, "active"), settings)
    assert home.pool is not None
    await home.pool.wait(timeout=30)
    cells = Cells(settings)
    cells.attach_home(home, None)
    return cells


async def stop_cells(cells: Cells) -> None:
    await cells.close_remote()
    await cells.home.close()


async def current_database(runtime: CellRuntime) -> str:
    assert runtime.pool is not None
    async with runtime.pool.connection(timeout=10) as conn:
        cur = await conn.execute("SELECT current_database()")
        row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    await wait_until_async(predicate, timeout=timeout)


def test_remote_cells_follow_the_directory(
    pg_url: str, cell_databases: Callable[[int], list[str]]
) -> None:
    url_a, url_b = cell_databases(2)
    name_a, name_b = unique_cell_name(), unique_cell_name()
    register_cell(pg_url, name_a, url_a)

    async def scenario() -> None:
        cells = await start_cells(pg_url)
        try:
            await cells.open_remote()
            runtime_a = cells.runtimes[name_a]
            await wait_for(lambda: runtime_a.available)
            assert await current_database(runtime_a) == url_a.rsplit("/", 1)[1].split("?")[0]
            assert cells.runtime_named(name_a) is runtime_a
            assert cells.readiness()[name_a] == "up"

            # a new cell (NOTIFY 'cells'): its runtime starts; the existing one is kept
            register_cell(pg_url, name_b, url_b)
            cells.on_notify("cells")
            await wait_for(lambda: name_b in cells.runtimes)
            assert cells.runtimes[name_a] is runtime_a
            runtime_b = cells.runtimes[name_b]
            await wait_for(lambda: runtime_b.available)
            assert await current_database(runtime_b) == url_b.rsplit("/", 1)[1].split("?")[0]

            # two notifications at once never build a cell twice
            cells.on_notify("cells")
            cells.on_notify("cells")
            await cells.open_remote()
            assert cells.runtimes[name_b] is runtime_b

            # a removed cell: its runtime stops (pool closed), requests for it get 503
            remove_cell(pg_url, name_a)
            cells.on_notify("cells")
            await wait_for(lambda: name_a not in cells.runtimes)
            # the runtime leaves the map first (its requests get 503 at once), then closes
            await wait_for(lambda: runtime_a.pool is not None and runtime_a.pool.closed)
            assert runtime_a.pool is not None and runtime_a.pool.closed
            with pytest.raises(GatewayError) as refused:
                cells.runtime_named(name_a)
            assert refused.value.status == 503
            assert name_b in cells.runtimes
        finally:
            await stop_cells(cells)
        assert runtime_b.pool is not None and runtime_b.pool.closed

    try:
        asyncio.run(scenario())
    finally:
        remove_cell(pg_url, name_a)
        remove_cell(pg_url, name_b)


def test_a_cell_that_is_down_starts_and_fails_fast(pg_url: str) -> None:
    down, down_too = unique_cell_name("down"), unique_cell_name("down")
    register_cell(pg_url, down, UNREACHABLE_URL)
    register_cell(pg_url, down_too, UNREACHABLE_URL)

    async def scenario() -> None:
        cells = await start_cells(pg_url)
        try:
            started = time.monotonic()
            await cells.open_remote()
            took = time.monotonic() - started
            # Two down cells open concurrently: the start waits at most one budget
            # discovery (DISCOVERY_TIMEOUT_S), never a pool timeout or one per cell. The
            # bound has 2x margin for a loaded 2-core machine.
            assert took < 2 * DISCOVERY_TIMEOUT_S, took
            assert {down, down_too} <= set(cells.runtimes)
            assert not cells.runtimes[down].available
            assert cells.readiness()[down] == "down"
            assert cells.readiness()[HOME] == "up"
            # a request for the down cell: its pipeline refuses it at once (503 with
            # Retry-After, counted for that cell), without waiting for a pool connection
            pipeline = cells.runtime_named(down).pipeline
            assert pipeline is not None and not pipeline.reachable()
            # a cell this instance has no runtime for: 503 at once
            with pytest.raises(GatewayError) as refused:
                cells.runtime_named(unique_cell_name("nowhere"))
            assert refused.value.status == 503
            assert refused.value.code == "SERVICE_UNAVAILABLE"
            assert refused.value.headers.get("Retry-After") == "1"
            # home keeps serving
            assert await current_database(cells.home) == pg_url.rsplit("/", 1)[1].split("?")[0]
        finally:
            await stop_cells(cells)

    try:
        asyncio.run(scenario())
    finally:
        remove_cell(pg_url, down)
        remove_cell(pg_url, down_too)


def test_the_app_serves_reports_and_measures_each_cell(
    pg_url: str, cell_databases: Callable[[int], list[str]]
) -> None:
    """In one app: a project on a remote cell is served there, a project on a cell that
    is down gets 503 at once, /readyz stays ready and names the down cell, and /metrics
    counts requests and pools per cell."""
    (url_a,) = cell_databases(1)
    up, down = unique_cell_name("up"), unique_cell_name("down")
    register_cell(pg_url, up, url_a)
    register_cell(pg_url, down, UNREACHABLE_URL)
    served = make_cell_project(pg_url, up, url_a)
    # a project whose directory row points at the down cell (its rows were made on the
    # reachable database: only the routing matters here)
    stranded_key = make_cell_project(pg_url, down, url_a)["server_key"]
    body = {"query": {"operation": "select", "table": "todos", "limit": 1}}
    settings = Settings.from_env(
        {
            "DATABASE_URL": pg_url,
            "GATEWAY_MAINTENANCE_INTERVAL_S": "3600",
            "GATEWAY_LOG_FLUSH_MS": "50",
        }
    )
    try:
        app = create_app(settings)
        with TestClient(app) as client:
            cells = app.state.gw.cells
            wait_until(lambda: up in cells.runtimes and cells.runtimes[up].available, timeout=20)
            ok = client.post(QUERY, json=body, headers=bearer(served["server_key"]))
            assert ok.status_code == 200, ok.text
            started = time.monotonic()
            refused = client.post(QUERY, json=body, headers=bearer(stranded_key))
            # far below the pool timeout (GATEWAY_POOL_TIMEOUT_MS, 5 s by default); the
            # margin is for a loaded 2-core machine
            assert time.monotonic() - started < 1.0
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert refused.headers["Retry-After"] == "1"
            ready = client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["cells"][down] == "down"
            assert ready.json()["cells"][up] == "up"
            text = client.get("/metrics").text
            # the served request's log row is written in its project's cell, not in home
            wait_until(lambda: logged_rows(url_a, served["id"]) == 1, timeout=20)
            assert logged_rows(pg_url, served["id"]) == 0
    finally:
        remove_cell(pg_url, up)
        remove_cell(pg_url, down)
    assert f'gateway_cell_request_duration_seconds_count{{cell="{up}"}} 1.0' in text
    assert f'gateway_cell_errors_total{{cell="{down}"}} 1.0' in text
    assert f'gateway_cell_up{{cell="{down}"}} 0.0' in text
    assert f'gateway_cell_up{{cell="{up}"}} 1.0' in text
    assert 'gateway_cell_pool_size{cell="home"}' in text
    # instance-wide figures still count every request
    assert 'gateway_requests_total{route="/v1/inhouse/db/query",status="503"} 1.0' in text


def logged_rows(url: str, project_id: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM gateway.request_log WHERE project_id = %s", [project_id]
        ).fetchone()
    return int(row[0]) if row else 0


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_request_hashes_its_key_once_with_several_cells(
    pg_url: str, cell_databases: Callable[[int], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a second cell the key is hashed to route the request; the local deny, the
    admission and a ticket's row use that same hash (issue 23: hashed once per request)."""
    (url_a,) = cell_databases(1)
    name = unique_cell_name("once")
    register_cell(pg_url, name, url_a)
    served = make_cell_project(pg_url, name, url_a)
    key = served["public_key"]
    body = {"query": {"operation": "select", "table": "todos", "limit": 1}}
    settings = Settings.from_env({"DATABASE_URL": pg_url, "GATEWAY_MAINTENANCE_INTERVAL_S": "3600"})
    try:
        app = create_app(settings)
        with TestClient(app) as client:
            cells = app.state.gw.cells
            wait_until(
                lambda: name in cells.runtimes and cells.runtimes[name].available, timeout=20
            )
            warm = client.post(QUERY, json=body, headers=bearer(key))
            assert warm.status_code == 200, warm.text
            hashed = count_sha256(monkeypatch)
            for method, path, payload in (
                ("POST", QUERY, body),
                ("GET", "/v1/inhouse/db/schema", None),
                ("POST", "/v1/inhouse/db/realtime/ticket", {}),
            ):
                hashed.clear()
                answer = client.request(method, path, json=payload, headers=bearer(key))
                assert answer.status_code == 200, (path, answer.text)
                assert hashed.count(key.encode()) == 1, path
    finally:
        remove_cell(pg_url, name)
