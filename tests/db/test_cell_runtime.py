"""The per-cell runtimes of one instance (``gateway.cells.runtime``), on real databases:
a cell recorded in the directory gets a runtime with its own pool and listener, a removed
cell's runtime is stopped, and a cell whose database is unreachable neither stops the
start nor slows a request for it (503 at once)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from gateway.cells.directory import HOME, Cell
from gateway.cells.runtime import DISCOVERY_TIMEOUT_S, CellRuntime, Cells, open_cell
from gateway.errors import GatewayError
from gateway.settings import Settings
from tests.support.cells import register_cell, remove_cell, unique_cell_name
from tests.support.polling import wait_until_async

# An address nothing listens on: connecting is refused at once, like a stopped server.
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
            # a request for the down cell: 503 with Retry-After, without waiting
            started = time.monotonic()
            with pytest.raises(GatewayError) as refused:
                cells.runtime_named(down)
            assert time.monotonic() - started < 0.5
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
